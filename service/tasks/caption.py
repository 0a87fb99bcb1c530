"""Captioning: uploaded images -> decoded, preprocessed, batched through the captioner -> captions.

Serves POST /caption and /caption_batch, and the caption that /caption_overlay draws. Images are
decoded by Pillow in the request thread; when JPEGs are decoded on the device (IMAGE_DECODE), a
JPEG is only checked there and the batch worker decodes all of a batch's JPEGs at once.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import Tensor

from models.images import decode_jpegs, pixels_to_tensor
from models.inference import caption_features, opening_with_a_word
from models.search import Hypothesis, SearchOptions
from models.vocabulary import Vocabulary
from service.artifacts import ServedModel, in_store
from service.errors import RequestError
from service.images import EncodedJpeg, ImageLimits, decode_image, decode_or_defer
from service.responses import (
    Caption,
    CaptionAlternative,
    CaptionBatchResponse,
    CaptionResponse,
    CaptionToken,
)
from service.runtime import BatchFamily, Runtime
from service.schemas import DecodingOptions
from service.tasks.decoding import (
    attention_weights,
    by_options,
    ms_since,
    scored_tokens,
    search_options,
    summary,
)


@dataclass(frozen=True)
class CaptionJob:
    """One image of a request."""

    image: Tensor | EncodedJpeg  # (3, S, S) preprocessed, or a JPEG for the batch worker
    options: SearchOptions
    field: str = "image"  # the upload's name in an error about it
    rows: ClassVar[int] = 1


@dataclass(frozen=True)
class CaptionResult:
    """One image's hypotheses (best first), their confidences, and whether the image is unlike
    the training images (always False for a captioner without a fitted Uncertainty)."""

    hypotheses: list[Hypothesis]
    confidences: list[float]
    out_of_domain: bool


LANGUAGE_NAMES = {"en": "English", "de": "German"}


class CaptionTask:
    """Captions uploaded images with the configured captioner; RequestError for bad input."""

    kind = "captioner"
    with_source = False

    def __init__(self, runtime: Runtime) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.names = {"en": settings.captioner, "de": settings.captioner_de}
        batch = settings.image_batch(runtime.device.type)
        self.families = {
            name: BatchFamily("caption", name, batch, run_batch) for name in self.names.values()
        }
        Image.MAX_IMAGE_PIXELS = settings.max_image_pixels  # Pillow's own bomb check, as a backstop
        self.image_limits = ImageLimits(settings.max_image_pixels, settings.max_aspect_ratio)
        self.jpegs_on_device = settings.jpegs_on_device(runtime.device.type)
        # at most one decode per core: bounds memory as well as CPU
        self._decoding = threading.BoundedSemaphore(max(1, torch.get_num_threads()))

    def model_names(self) -> list[str]:
        """The English captioner, and the German one when it is in the store (optional)."""
        german = self.names["de"]
        return [self.names["en"], *([german] if german and in_store(german) else [])]

    def golden_output(self, served: ServedModel) -> str:
        """The caption of the model's golden image, decoded and queued like an upload."""
        golden = served.golden
        image = self.image_input(served, (served.path / golden["input"]).read_bytes(), "golden")
        job = CaptionJob(image, SearchOptions(**golden.get("options", {})), "golden")
        family = self.families[served.configured]
        (found,) = answered(self.runtime.results([self.runtime.batcher.submit(family, job)]))
        return served.target.decode(found.hypotheses[0].tokens)

    def caption(
        self, image: Path, options: DecodingOptions, language: str = "en"
    ) -> CaptionResponse:
        """POST /caption: one uploaded image."""
        started = time.perf_counter()
        (found,), tag = self.captions([image], ["image"], options, language)
        return CaptionResponse(
            **dict(found), language=language, model=tag, time_ms=ms_since(started)
        )

    def caption_batch(
        self, images: Sequence[Path], options: DecodingOptions, language: str = "en"
    ) -> CaptionBatchResponse:
        """POST /caption_batch: several uploaded images, captioned in order."""
        started = time.perf_counter()
        fields = [f"images[{i}]" for i in range(len(images))]
        found, tag = self.captions(images, fields, options, language)
        return CaptionBatchResponse(
            captions=found, language=language, model=tag, time_ms=ms_since(started)
        )

    def model(self, language: str) -> ServedModel:
        """The loaded captioner for `language`, or 404 model_not_installed naming what to do."""
        name = self.names[language]
        served = self.runtime.ready_models().get(name)
        if served is None:
            raise RequestError(
                f"no {LANGUAGE_NAMES[language]} captioner is installed: import one into the "
                f"BentoML store as {name or 'captioner_' + language!r} (make import-models) "
                "and restart, or ask for language 'en'",
                "language",
                code="model_not_installed",
                status=404,
            )
        return served

    def captions(
        self,
        images: Sequence[Path | bytes],
        fields: Sequence[str],
        options: DecodingOptions,
        language: str = "en",
    ) -> tuple[list[Caption], str]:
        """Uploaded images (files or bytes; `fields` name them in errors) -> one caption each,
        and the captioner's tag."""
        served = self.model(language)
        search = opening_with_a_word(search_options(options), served.target)
        family = self.families[served.configured]
        batcher = self.runtime.batcher
        with batcher.arriving():  # a batch forming now may wait for these images
            inputs = [
                self.image_input(
                    served, data if isinstance(data, bytes) else data.read_bytes(), field
                )
                for data, field in zip(images, fields, strict=True)
            ]
            futures = [
                batcher.submit(family, CaptionJob(image, search, field))
                for image, field in zip(inputs, fields, strict=True)
            ]
        found = answered(self.runtime.results(futures))
        return [caption_of(h, served.target, options.return_attention) for h in found], served.tag

    def image_input(self, served: ServedModel, data: bytes, field: str) -> Tensor | EncodedJpeg:
        """Uploaded bytes -> the (3, S, S) tensor the captioner's encoder expects, or, when JPEGs
        are decoded on the device, a JPEG checked from its header and left encoded."""
        with self._decoding:
            if self.jpegs_on_device:
                image = decode_or_defer(data, self.image_limits, field)
            else:
                image = decode_image(data, self.image_limits, field)
            if isinstance(image, EncodedJpeg):
                return image
            return preprocessed(served.model.encoder, image, field)


def preprocessed(encoder: Any, image: Image.Image, field: str) -> Tensor:
    """A decoded upload (closed here) -> the (3, S, S) tensor the image encoder expects."""
    try:
        return encoder.preprocess(image)
    except Exception:
        raise RequestError(
            f"image mode {image.mode} could not be converted to RGB", field, code="invalid_image"
        ) from None
    finally:
        image.close()


def answered(found: list[CaptionResult | RequestError]) -> list[CaptionResult]:
    """A request's results, or the error of its first image that the batch worker refused."""
    refused = [result for result in found if isinstance(result, RequestError)]
    if refused:
        raise refused[0]
    return [result for result in found if isinstance(result, CaptionResult)]


def run_batch(
    served: ServedModel, jobs: Sequence[CaptionJob]
) -> list[CaptionResult | RequestError]:
    """In the batch worker: the images decoded and preprocessed where the request thread left
    them encoded, one encoder forward for every image, then one batched search per distinct
    options; each job's hypotheses (best first) with their confidence, or for an image that
    could not be decoded, its RequestError."""
    model = served.model
    device = next(model.parameters()).device
    found: list[Any] = encoder_inputs(model.encoder, jobs, device)  # errors stay, images: results
    rows = [row for row, image in enumerate(found) if isinstance(image, Tensor)]
    if rows:
        images = torch.stack([found[row].to(device) for row in rows])  # (B, 3, S, S)
        captioned = _captioned(model, images, [jobs[row] for row in rows])
        for row, result in zip(rows, captioned, strict=True):
            found[row] = result
    return found


def encoder_inputs(
    encoder: Any, jobs: Sequence[CaptionJob], device: torch.device
) -> list[Tensor | RequestError]:
    """Each job's (3, S, S) input to the image `encoder`: as the request thread made it, or for
    the JPEGs it left encoded, decoded all at once on `device` and preprocessed there. A JPEG
    the device cannot decode goes through Pillow on the CPU, as on the CPU path; if that fails
    too, its RequestError (invalid_image, naming the job's field) takes its input's place."""
    inputs: list[Tensor | RequestError] = []
    jpegs = [job.image for job in jobs if isinstance(job.image, EncodedJpeg)]
    decoded = iter(decode_jpegs([jpeg.data for jpeg in jpegs], device))
    size = encoder.config.image_size
    for job in jobs:
        if not isinstance(job.image, EncodedJpeg):
            inputs.append(job.image)
            continue
        jpeg, pixels = job.image, next(decoded)
        if pixels is not None:
            inputs.append(pixels_to_tensor(jpeg.cropped(pixels), size, jpeg.orientation))
            continue
        try:
            image = decode_image(jpeg.data, jpeg.limits, job.field)
            inputs.append(preprocessed(encoder, image, job.field))
        except RequestError as error:
            inputs.append(error)
    return inputs


def _captioned(model: Any, images: Tensor, jobs: Sequence[CaptionJob]) -> list[CaptionResult]:
    """images (B, 3, S, S) of `jobs`: one encoder forward, one batched search per options."""
    pooled, grid = model.encoder(images)  # (B, D), (B, H*W, D)
    found: list[Any] = [None] * len(jobs)
    for options, rows in by_options(jobs):
        index = torch.tensor(rows, device=images.device)
        for row, hypotheses in zip(
            rows, caption_features(model, pooled[index], grid[index], options), strict=True
        ):
            found[row] = hypotheses
    return _assessed(model, pooled, found)


def _assessed(model: Any, pooled: Tensor, found: list[list[Hypothesis]]) -> list[CaptionResult]:
    """Every hypothesis's confidence and every image's out-of-domain flag, in one call over the
    batch: pooled (B, D), found[b] the hypotheses of image b."""
    owner = torch.tensor([b for b, hs in enumerate(found) for _ in hs], device=pooled.device)
    mean_log_probs = torch.tensor(
        [h.log_prob / max(len(h.token_log_probs), 1) for hs in found for h in hs],
        device=pooled.device,
    )  # (N,) over all hypotheses
    confidence, flags = model.assess(pooled.float()[owner], mean_log_probs)  # (N,), (N,)
    confidences, flagged = confidence.tolist(), flags.tolist() if flags is not None else None
    results, start = [], 0
    for hypotheses in found:
        end = start + len(hypotheses)
        out_of_domain = bool(flagged[start]) if flagged is not None else False
        results.append(CaptionResult(hypotheses, confidences[start:end], out_of_domain))
        start = end
    return results


def caption_of(result: CaptionResult, vocabulary: Vocabulary, attention: bool) -> Caption:
    """One image's result -> its caption; attention as an H x W grid per token."""
    found = []
    for h, confidence in zip(result.hypotheses, result.confidences, strict=True):
        weights = attention_weights(h, None) if attention else None
        grids = grid_rows(weights) if weights is not None else None
        tokens = [
            CaptionToken(token=name, log_prob=lp, attention=grids[t] if grids else [])
            for t, (name, lp) in enumerate(scored_tokens(h, vocabulary))
        ]
        found.append(
            CaptionAlternative(
                **summary(h, vocabulary), confidence=round(confidence, 4), tokens=tokens
            )
        )
    best = found[0]
    return Caption(
        caption=best.text,
        truncated=best.truncated,
        confidence=best.confidence,
        out_of_domain=result.out_of_domain,
        alternatives=found,
    )


def grid_rows(weights: Tensor) -> list[list[list[float]]]:
    """(T, S) -> T grids of H x W: H = W = sqrt(S) for a square feature map, else 1 x S."""
    steps, positions = weights.shape
    side = math.isqrt(positions)
    height = side if side * side == positions else 1
    return weights.reshape(steps, height, positions // height).tolist()
