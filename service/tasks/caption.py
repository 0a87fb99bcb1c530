"""Captioning: uploaded images -> decoded, preprocessed, batched through the captioner -> captions.

Serves POST /caption and /caption_batch, and the caption that /caption_overlay draws.
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

from models.inference import caption_features, opening_with_a_word
from models.search import Hypothesis, SearchOptions
from models.vocabulary import Vocabulary
from service.artifacts import ServedModel, in_store
from service.errors import RequestError
from service.images import ImageLimits, decode_image
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

    image: Tensor  # (3, S, S), preprocessed
    options: SearchOptions
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
        self.families = {
            name: BatchFamily("caption", name, settings.max_batch_images, run_batch)
            for name in self.names.values()
        }
        Image.MAX_IMAGE_PIXELS = settings.max_image_pixels  # Pillow's own bomb check, as a backstop
        self.image_limits = ImageLimits(settings.max_image_pixels, settings.max_aspect_ratio)
        # at most one decode per core: bounds memory as well as CPU
        self._decoding = threading.BoundedSemaphore(max(1, torch.get_num_threads()))

    def model_names(self) -> list[str]:
        """The English captioner, and the German one when it is in the store (optional)."""
        german = self.names["de"]
        return [self.names["en"], *([german] if german and in_store(german) else [])]

    def golden_output(self, served: ServedModel) -> str:
        """The caption of the model's golden image, decoded and queued like an upload."""
        golden = served.golden
        image = self.image_tensor(served, (served.path / golden["input"]).read_bytes(), "golden")
        job = CaptionJob(image, SearchOptions(**golden.get("options", {})))
        family = self.families[served.configured]
        (found,) = self.runtime.results([self.runtime.batcher.submit(family, job)])
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
            tensors = [
                self.image_tensor(
                    served, data if isinstance(data, bytes) else data.read_bytes(), field
                )
                for data, field in zip(images, fields, strict=True)
            ]
            futures = [batcher.submit(family, CaptionJob(t, search)) for t in tensors]
        found = self.runtime.results(futures)
        return [caption_of(h, served.target, options.return_attention) for h in found], served.tag

    def image_tensor(self, served: ServedModel, data: bytes, field: str) -> Tensor:
        """Uploaded bytes -> the (3, S, S) tensor the captioner's encoder expects."""
        with self._decoding:
            image = decode_image(data, self.image_limits, field)
            try:
                return served.model.encoder.preprocess(image)
            except Exception:
                raise RequestError(
                    f"image mode {image.mode} could not be converted to RGB",
                    field,
                    code="invalid_image",
                ) from None
            finally:
                image.close()


def run_batch(served: ServedModel, jobs: Sequence[CaptionJob]) -> list[CaptionResult]:
    """In the batch worker: one encoder forward for every image, then one batched search per
    distinct options; each job's hypotheses (best first) with their confidence."""
    model = served.model
    device = next(model.parameters()).device
    images = torch.stack([job.image for job in jobs]).to(device)  # (B, 3, S, S)
    pooled, grid = model.encoder(images)  # (B, D), (B, H*W, D)
    found: list[Any] = [None] * len(jobs)
    for options, rows in by_options(jobs):
        index = torch.tensor(rows, device=device)
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
