"""The models at serving time: device and threads, loading with a golden check, batched decoding."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Hashable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from prometheus_client import Histogram
from torch import Tensor

from models.inference import caption_features, source_ids, translate_ids
from models.search import Hypothesis, SearchOptions
from service import language
from service.artifacts import ArtifactError, ServedModel, load_served_model
from service.batching import BatchAbandoned, Batcher
from service.errors import RequestError, is_out_of_memory, not_ready, overloaded
from service.images import ImageLimits, decode_image
from service.settings import Settings

logger = logging.getLogger("bentoml.seqserve")
# shown on /metrics; imported only in the serving worker, after BentoML set up multiprocess mode
BATCH_ROWS = Histogram(
    "seqserve_batch_rows",
    "Inputs (images or sentences) run together in one batch",
    ["task", "model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)


def choose_device(setting: str) -> torch.device:
    """The torch device for a DEVICE setting; "auto" is the first CUDA device, else the CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def default_torch_threads(workers: int) -> int:
    """Torch threads when TORCH_THREADS is 0: this worker's share of the cores, less one that is
    left to request handling (HTTP parsing, image decoding, responses); at least one.
    On 2 cores, two OpenMP threads beside the request threads made batches up to 10x slower
    (bench/README.md)."""
    return max(1, len(os.sched_getaffinity(0)) // workers - 1)


@dataclass(frozen=True)
class _TranslateJob:
    sources: list[list[int]]
    options: SearchOptions


@dataclass(frozen=True)
class _CaptionJob:
    image: Tensor  # (3, S, S)
    options: SearchOptions


class Runtime:
    """Owns the models and the batch worker; ready once every model passed its golden check."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = choose_device(settings.device)
        torch.set_num_threads(
            settings.torch_threads or default_torch_threads(settings.worker_count())
        )
        Image.MAX_IMAGE_PIXELS = settings.max_image_pixels  # Pillow's own bomb check, as a backstop
        self.image_limits = ImageLimits(settings.max_image_pixels, settings.max_aspect_ratio)
        self.models: dict[str, ServedModel] = {}
        self.state, self.problem = "loading", ""
        self._decoding = threading.BoundedSemaphore(max(1, torch.get_num_threads()))
        self.batcher = Batcher(
            self._run_batch,
            lambda family: (
                settings.max_batch_images
                if family[0] == "caption"
                else 1
                if family[0] in language.TASKS  # one text per search
                else settings.max_batch_sentences
            ),
            settings.batch_wait_ms / 1000,
            settings.max_queue_rows,
        )

    def start(self) -> None:
        """Load and check the models in the background; `ready` turns true when all pass."""
        self.batcher.start()
        threading.Thread(target=self._load_all, name="seqserve-loader", daemon=True).start()

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.batcher.alive

    def _load_all(self) -> None:
        wanted = [(self.settings.captioner, "captioner")]
        wanted += [(name, "translator") for name in self.settings.translator_names]
        wanted += language.wanted(self.settings)  # optional: only when it is in the store
        for name, kind in wanted:
            try:
                served = load_served_model(name, kind, self.device)
                self._stop_when_abandoned(served)
                self.models[name] = served
                self._check_golden(served)
            except Exception as error:  # ChecksumError, ArtifactError, a broken file...
                # the public reason names no file paths; the log line has the details
                problem = f"model {name!r} failed to load ({type(error).__name__})"
                logger.error("%s, the service stays NOT READY: %s", problem, error)
                self.problem, self.state = problem, "failed"
                return
            logger.info("%s loaded on %s and passed its golden check", served.tag, self.device)
        # Libraries and models (about 220k objects) live as long as the process: a full garbage
        # collection walked them all in 180 ms, a latency spike for whichever request triggered it
        gc.freeze()
        self.state = "ready"
        logger.info("all models ready: %s", ", ".join(m.tag for m in self.models.values()))

    def _stop_when_abandoned(self, served: ServedModel) -> None:
        """Every decoding step starts with the decoder's embedding: check there whether anybody
        still waits for the batch, so that a timed-out batch frees the model at once. (One hook
        per step: on each of the decoder's parts, the hooks cost 3% of a one-sentence translation.)"""
        served.model.decoder.embedding.register_forward_pre_hook(
            lambda *_: self.batcher.raise_if_abandoned()
        )

    def _check_golden(self, served: ServedModel) -> None:
        """Decode the golden input through the serving path; its text must match exactly."""
        golden = served.golden
        options = SearchOptions(**golden.get("options", {}))
        while True:
            if served.kind == "captioner":
                data = (served.path / golden["input"]).read_bytes()
                hypotheses = self.caption([self.image_tensor(data, "golden")], options, served)
            elif served.kind == language.KIND:
                hypotheses = [language.hypotheses(self, served, golden["input"], options)]
            else:
                hypotheses = self.translate(served, [golden["input"]], options)
            output = served.target.decode(hypotheses[0][0].tokens)
            if output == golden["output"]:
                return
            if not served.autocast:
                raise ArtifactError(
                    f"{served.tag}: golden check failed: expected {golden['output']!r}, "
                    f"got {output!r}"
                )
            logger.warning(
                "%s: bf16 autocast changes the golden output; serving it in fp32", served.tag
            )
            served.autocast = False

    # -- what the endpoints call ------------------------------------------------------------

    def captioner(self) -> ServedModel:
        self._require_ready()
        return self.models[self.settings.captioner]

    def language_model(self) -> ServedModel:
        self._require_ready()
        return language.served_language_model(self.models, self.settings)

    def translator(self, name: str | None) -> ServedModel:
        """The translator called `name` (a store name or full tag), or the default one."""
        self._require_ready()
        names = self.settings.translator_names
        wanted = name or names[0]
        for candidate in names:
            served = self.models[candidate]
            if wanted in (served.name, served.tag):
                return served
        raise RequestError(
            f"unknown model {wanted!r}; available: {', '.join(names)}",
            "model",
            code="unknown_model",
        )

    def _require_ready(self) -> None:
        if self.state == "failed":
            raise not_ready(f"the service is not ready: {self.problem}")
        if not self.ready:
            raise not_ready("the models are still loading; retry shortly")

    def image_tensor(self, data: bytes, field: str) -> Tensor:
        """Uploaded bytes -> the (3, S, S) tensor the captioner's encoder expects."""
        encoder = self.models[self.settings.captioner].model.encoder
        with self._decoding:  # at most one decode per core: bounds memory as well as CPU
            image = decode_image(data, self.image_limits, field)
            try:
                return encoder.preprocess(image)
            except Exception:
                raise RequestError(
                    f"image mode {image.mode} could not be converted to RGB",
                    field,
                    code="invalid_image",
                ) from None
            finally:
                image.close()

    def submit_captions(
        self, images: Sequence[Tensor], options: SearchOptions, served: ServedModel
    ) -> list[Future]:
        """Queue preprocessed images (3, S, S); each future gets that image's hypotheses."""
        family = ("caption", served.name)
        return [self.batcher.submit(family, _CaptionJob(image, options)) for image in images]

    def caption(
        self, images: Sequence[Tensor], options: SearchOptions, served: ServedModel
    ) -> list[list[Hypothesis]]:
        """Preprocessed images -> hypotheses per image, batched with concurrent requests."""
        return self.results(self.submit_captions(images, options, served))

    def source_tokens(self, served: ServedModel, sentences: Sequence[str]) -> list[list[int]]:
        """Sentences -> source ids; a sentence over the token limit is refused by index."""
        limit = self.settings.max_source_tokens
        ids = []
        for i, sentence in enumerate(sentences):
            encoded = source_ids(served.source, sentence)
            if len(encoded) - 1 > limit:
                raise RequestError(
                    f"sentence has {len(encoded) - 1} tokens; at most {limit} are allowed",
                    f"sentences[{i}]",
                )
            ids.append(encoded)
        return ids

    def translate(
        self, served: ServedModel, sentences: Sequence[str], options: SearchOptions
    ) -> list[list[Hypothesis]]:
        """Sentences -> hypotheses per sentence, batched with concurrent requests."""
        sources = self.source_tokens(served, sentences)
        job = _TranslateJob(sources, options)
        return self.results([self.batcher.submit(("translate", served.name), job, len(sources))])[0]

    def results(self, futures: Sequence[Future]) -> list[Any]:
        """The submitted jobs' results, or 504 once the request time limit passed; the request's
        queued jobs are then dropped, and a running batch nobody else waits for is stopped."""
        deadline = time.monotonic() + self.settings.request_timeout_s
        try:
            return [f.result(timeout=max(0.0, deadline - time.monotonic())) for f in futures]
        except FutureTimeout:
            self.batcher.give_up(futures)
            raise RequestError(
                f"no answer within {self.settings.request_timeout_s:g} s; retry later",
                code="timeout",
                status=504,
            ) from None

    # -- the batch worker -------------------------------------------------------------------

    def _run_batch(self, family: Hashable, jobs: Sequence[Any]) -> list[Any]:
        kind, name = family  # type: ignore[misc]
        served = self.models[name]
        BATCH_ROWS.labels(kind, name).observe(sum(_rows(job) for job in jobs))
        try:
            with torch.inference_mode(), self._precision(served):
                if kind == "caption":
                    return self._caption_batch(served, jobs)
                if kind in language.TASKS:
                    return language.run_batch(served, kind, jobs)
                return self._translate_batch(served, jobs)
        except BatchAbandoned:
            logger.warning(
                "stopped a batch of %d %s requests: all of them timed out", len(jobs), kind
            )
            failure = RequestError("the request timed out", code="timeout", status=504)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            logger.warning("out of memory on a batch of %d %s requests", len(jobs), kind)
            failure = overloaded("out of memory; retry with fewer inputs")
        # Outside the except blocks: the caught error's traceback, which holds the failed
        # forward's frames and their tensors, is gone, so empty_cache can release that memory.
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        raise failure

    def _precision(self, served: ServedModel) -> contextlib.AbstractContextManager:
        if served.autocast:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _caption_batch(self, served: ServedModel, jobs: Sequence[_CaptionJob]) -> list[Any]:
        """One encoder forward for every image, then one batched search per distinct options."""
        images = torch.stack([job.image for job in jobs]).to(self.device)  # (B, 3, S, S)
        pooled, grid = served.model.encoder(images)  # (B, D), (B, 49, D)
        results: list[Any] = [None] * len(jobs)
        for options, rows in _by_options(jobs):
            index = torch.tensor(rows, device=self.device)
            found = caption_features(served.model, pooled[index], grid[index], options)
            for row, hypotheses in zip(rows, found, strict=True):
                results[row] = hypotheses
        return results

    def _translate_batch(self, served: ServedModel, jobs: Sequence[_TranslateJob]) -> list[Any]:
        """One batched search per distinct options over every queued sentence."""
        results: list[Any] = [None] * len(jobs)
        for options, rows in _by_options(jobs):
            sources = [source for row in rows for source in jobs[row].sources]
            found = translate_ids(served.model, sources, options)
            start = 0
            for row in rows:
                count = len(jobs[row].sources)
                results[row] = found[start : start + count]
                start += count
        return results

    def info(self) -> dict[str, Any]:
        """What GET /models reports."""
        return {
            "ready": self.ready,
            "state": self.state,
            "problem": self.problem or None,
            "device": str(self.device),
            "torch_threads": torch.get_num_threads(),
            "models": [served.info() for served in self.models.values()],
            "default_translator": self.settings.translator_names[0],
        }


def _rows(job: _CaptionJob | _TranslateJob) -> int:
    return len(job.sources) if isinstance(job, _TranslateJob) else 1


def _by_options(jobs: Sequence[Any]) -> Iterator[tuple[SearchOptions, list[int]]]:
    """Job indices grouped by identical decoding options, in first-seen order."""
    groups: dict[SearchOptions, list[int]] = defaultdict(list)
    for row, job in enumerate(jobs):
        groups[job.options].append(row)
    yield from groups.items()
