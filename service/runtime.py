"""What every task shares at serving time: device and threads, the loaded models, the batch worker."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from models.inference import precision
from service.artifacts import ServedModel, load_served_model
from service.batching import BatchAbandoned, Batcher
from service.errors import RequestError, is_out_of_memory, not_ready, overloaded
from service.metrics import metrics
from service.settings import Settings

logger = logging.getLogger("bentoml.seqserve")


def choose_device(setting: str) -> torch.device:
    """The torch device for a DEVICE setting; "auto" is the first CUDA device, else the CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def default_torch_threads(workers: int) -> int:
    """Torch threads when TORCH_THREADS is 0: this worker's share of the cores, less one that is
    left to request handling (HTTP parsing, image decoding, responses); at least one.
    OpenMP threads competing with the request threads for the same cores made batches several
    times slower (bench/README.md)."""
    return max(1, len(os.sched_getaffinity(0)) // workers - 1)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # larger blocks get a mapping of their own (glibc's most)
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES  # free heap kept mapped for the next forward


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory a forward frees for the next one: blocks up to 32 MiB
    come from the heap, and up to 64 MiB of free heap stays mapped. With its defaults the batch
    worker gave a lone caption's activations back to the system after every forward and faulted
    them in again on the next: about 5,000 page faults (20 MiB) and 12-16 ms of system time a
    request (bench/README.md). Larger blocks (big batches) are mapped and unmapped as before.
    False where the C library has no mallopt (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mapped = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    return bool(mapped and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


class Job(Protocol):
    """One request's share of a batch, as the tasks submit it to the batcher; `rows` counts its
    inputs (images, sentences, texts) for the batch size limit and the metrics."""

    @property
    def rows(self) -> int: ...


@dataclass(frozen=True)
class BatchFamily:
    """Jobs that may share a batch: one task on one model. The batch worker hands a batch of
    them to `run` (the task's own function), as an executor runs what it is given."""

    task: str  # "caption", "translate", "generate", "inspect": the metrics' label
    model: str  # the model as configured (its key in Runtime.models)
    max_rows: int
    run: Callable[[ServedModel, Sequence[Any]], list[Any]]


class Runtime:
    """Owns the models and the batch worker; ready once every task's models passed their check."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = choose_device(settings.device)
        keep_freed_memory()
        torch.set_num_threads(
            settings.torch_threads or default_torch_threads(settings.worker_count())
        )
        self.models: dict[str, ServedModel] = {}
        self.state, self.problem = "loading", ""
        self.batcher = Batcher(
            self._run_batch,
            lambda family: family.max_rows,
            settings.batch_wait_ms / 1000,
            settings.max_queue_rows,
            observe=_queue_metrics,
        )

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.batcher.alive

    # -- loading (driven by service.tasks.load_models) ---------------------------------------

    def load(self, name: str, kind: str, with_source: bool) -> ServedModel:
        """Load store model `name` onto the device and serve it; its task checks its golden."""
        served = load_served_model(name, kind, with_source, self.device)
        self._hook_between_steps(served)
        self.models[name] = served
        return served

    def _hook_between_steps(self, served: ServedModel) -> None:
        """Every decoding step starts with the decoder's embedding; there the batch worker stops
        a batch nobody waits for any more, so that a timed-out batch frees the model at once, and
        gives up the GIL and its core for a moment (`os.sched_yield`), so that the event loop
        gets a turn between two steps. Without it, on one core at twice the capacity, refusals
        waited up to 10 s and health probes went unanswered; a shorter switch interval did not
        help (docs/service.md, Overload). One hook per step rather than one per decoder part:
        each hook call costs time on every step."""
        batcher = self.batcher

        def between_steps(*_: object) -> None:
            batcher.raise_if_abandoned()
            os.sched_yield()

        served.model.decoder.embedding.register_forward_pre_hook(between_steps)

    def mark_ready(self) -> None:
        # The libraries and models live as long as the process: freezing them keeps every full
        # garbage collection from walking them again, a latency spike for some request
        gc.freeze()
        self.state = "ready"
        logger.info("all models ready: %s", ", ".join(m.tag for m in self.models.values()))

    def mark_failed(self, problem: str) -> None:
        self.problem, self.state = problem, "failed"

    # -- what the tasks call ----------------------------------------------------------------

    def ready_models(self) -> dict[str, ServedModel]:
        """The loaded models, or 503 not_ready while loading or after a failed load."""
        if self.state == "failed":
            raise not_ready(f"the service is not ready: {self.problem}")
        if not self.ready:
            raise not_ready("the models are still loading; retry shortly")
        return self.models

    def results(self, futures: Sequence[Future]) -> list[Any]:
        """The submitted jobs' results, or 504 once the request time limit passed; the request's
        queued jobs are then dropped, and a running batch nobody else waits for is stopped."""
        deadline = time.monotonic() + self.settings.request_timeout_s
        try:
            return [f.result(timeout=max(0.0, deadline - time.monotonic())) for f in futures]
        except FutureTimeout:
            self.batcher.give_up(futures)
            raise self.timed_out() from None

    async def results_async(self, futures: Sequence[Future]) -> list[Any]:
        """`results` for an async API: awaited on the event loop, no thread blocked. A request
        cancelled while it waits (BentoML's own timeout, a shutdown) gives its jobs up as a
        timeout does. A client that only disconnects cancels nothing: uvicorn lets the handler run."""
        waiting = [asyncio.wrap_future(future) for future in futures]
        try:  # asyncio.wait, unlike wait_for, cancels nothing itself: the batcher is told first
            _, pending = await asyncio.wait(waiting, timeout=self.settings.request_timeout_s)
        except asyncio.CancelledError:
            self._give_up(futures, waiting)
            raise
        if pending:
            self._give_up(futures, waiting)
            raise self.timed_out()
        return [found.result() for found in waiting]

    def _give_up(self, futures: Sequence[Future], waiting: Sequence[asyncio.Future]) -> None:
        """Drop the jobs from the batcher, then stop listening for what they may still end
        with (a failed batch's error would otherwise be logged as never retrieved)."""
        self.batcher.give_up(futures)
        for found in waiting:
            found.cancel()

    def timed_out(self) -> RequestError:
        """504: the request time limit passed."""
        return RequestError(
            f"no answer within {self.settings.request_timeout_s:g} s; retry later",
            code="timeout",
            status=504,
        )

    def info(self) -> dict[str, Any]:
        """What GET /models reports."""
        return {
            "ready": self.ready,
            "state": self.state,
            "problem": self.problem,
            "device": str(self.device),
            "torch_threads": torch.get_num_threads(),
            "models": [served.info() for served in self.models.values()],
            "default_translator": self.settings.translator_names[0],
        }

    # -- the batch worker -------------------------------------------------------------------

    def _run_batch(self, family: BatchFamily, jobs: Sequence[Job]) -> list[Any]:
        """In the batch worker: the family's run under inference mode and the model's precision;
        a batch nobody waits for or one out of memory fails every request in it."""
        served = self.models[family.model]
        found = metrics()
        found.batch_rows.labels(family.task, family.model).observe(sum(job.rows for job in jobs))
        autocast = "bf16" if served.autocast else "none"
        started = time.perf_counter()
        try:
            with torch.inference_mode(), precision(self.device, autocast):
                return family.run(served, jobs)
        except BatchAbandoned:
            logger.warning(
                "stopped a batch of %d %s requests: all of them timed out or went away",
                len(jobs),
                family.task,
            )
            failure = RequestError("the request timed out", code="timeout", status=504)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            logger.warning("out of memory on a batch of %d %s requests", len(jobs), family.task)
            failure = overloaded("out of memory; retry with fewer inputs")
        finally:
            found.batch_seconds.labels(family.task, family.model).observe(
                time.perf_counter() - started
            )
        # Outside the except blocks: the caught error's traceback, which holds the failed
        # forward's frames and their tensors, is gone, so empty_cache can release that memory.
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        raise failure


def _queue_metrics(family: BatchFamily, rows: int, requests: int) -> None:
    """What the batcher reports whenever its queue changes, as gauges per task and model."""
    found = metrics()
    found.queue_rows.labels(family.task, family.model).set(rows)
    found.queue_requests.labels(family.task, family.model).set(requests)
