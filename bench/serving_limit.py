"""The limit `bench.serving` compares the servers with: the served work run in-process on
pre-batched inputs (no HTTP, no queue), in one process and in one process per core, with the
service's malloc settings (`keep_freed_memory`: without them a lone forward's page faults would
depend on whether a large batch ran before it, bench/README.md)."""

from __future__ import annotations

import io
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from bench import common
from harness.load import percentiles
from models.checkpoint import LoadedModel, load_model
from models.inference import caption_images, precision, translate
from models.search import SearchOptions
from service.runtime import keep_freed_memory

OPTIONS = SearchOptions()  # what a request without options gets: greedy, max_length 50
Work = Callable[[list[Any]], list[str]]
Placement = tuple[str, int]  # the thread ("main" or "helper") and its torch thread count


def inprocess_work(endpoint: str, loaded: LoadedModel, device: torch.device, autocast: str) -> Work:
    """Inputs (JPEG bytes or sentences) -> output texts, the whole list as one batch, with the
    per-input work the servers do (decoding and preprocessing, or tokenisation)."""
    from PIL import Image

    model = loaded.model
    if endpoint == "caption":
        words = common.target_vocabulary(loaded)

        def captions(images: list[Any]) -> list[str]:
            pixels = [model.encoder.preprocess(Image.open(io.BytesIO(data))) for data in images]
            with precision(device, autocast):
                found = caption_images(model, torch.stack(pixels).to(device), OPTIONS)
            return [words.decode(h[0].tokens) for h in found]

        return captions
    source, target = loaded.vocabularies["source"], loaded.vocabularies["target"]

    def translations(sentences: list[Any]) -> list[str]:
        with torch.inference_mode(), precision(device, autocast):
            found = translate(model, source, sentences, OPTIONS)
        return [target.decode(h[0].tokens) for h in found]

    return translations


def items_per_second(
    work: Work, inputs: list[Any], batch: int, seconds: float, device: torch.device
) -> float:
    """Run `work` on consecutive batches of `inputs` for `seconds` (at least two batches)."""
    done, started = 0, time.perf_counter()
    while done < 2 * batch or time.perf_counter() - started < seconds:
        work([inputs[(done + i) % len(inputs)] for i in range(batch)])
        common.synchronize(device)
        done += batch
    return done / (time.perf_counter() - started)


def single_latencies(
    work: Work, inputs: list[Any], seconds: float, device: torch.device
) -> list[float]:
    """Milliseconds of one input at a time: at least 30 runs, at most 200 or `seconds`."""
    work(inputs[:1])  # warm-up
    times, started = [], time.perf_counter()
    while len(times) < 200 and (len(times) < 30 or time.perf_counter() - started < seconds):
        t0 = time.perf_counter()
        work([inputs[len(times) % len(inputs)]])
        common.synchronize(device)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def placements() -> list[Placement]:
    """Where the service runs its batches (a helper thread, all cores but one) first, then the
    main thread and a helper thread with all cores' torch threads or one."""
    cores = len(os.sched_getaffinity(0))
    found = [("helper", max(1, cores - 1))]  # the service's default (service/runtime.py)
    found += [(thread, n) for thread in ("helper", "main") for n in sorted({cores, 1})]
    return list(dict.fromkeys(found))


def run_on(helper: ThreadPoolExecutor, placement: Placement, fn: Callable[[], Any]) -> Any:
    """`fn()` on the placement's thread with its torch thread count."""

    def run() -> Any:
        torch.set_num_threads(placement[1])
        return fn()

    return run() if placement[0] == "main" else helper.submit(run).result()


def measure_limit(
    work: Work, inputs: list[Any], batches: list[int], device: torch.device, seconds: float
) -> dict[str, Any]:
    """Items/s at each batch size and single-input latency, each the best of the placements. On
    a shared 2-core machine either thread can be far slower than the other (PLATFORM.md,
    docs/service.md), so the limit takes whichever is faster."""
    where = placements()
    name = {p: f"{p[0]}/{p[1]}" for p in where}

    def rate(batch: int) -> Callable[[], float]:
        def loop() -> float:
            work(inputs[:batch])  # warm-up, on the placement's thread
            return items_per_second(work, inputs, batch, seconds, device)

        return loop

    with ThreadPoolExecutor(1) as helper:
        # sweep batch sizes where the service runs, then the other placements at the best one
        per_batch = {batch: run_on(helper, where[0], rate(batch)) for batch in batches}
        best = max(per_batch, key=per_batch.get)
        per_placement = {name[p]: run_on(helper, p, rate(best)) for p in where[1:]}
        per_placement[name[where[0]]] = per_batch[best]
        singles = {
            name[p]: percentiles(
                run_on(helper, p, lambda: single_latencies(work, inputs, seconds, device))
            )
            for p in where
        }
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    fastest = max(per_placement, key=per_placement.get)
    quickest = min(singles, key=lambda k: singles[k]["p50"])
    return {
        "per_batch": per_batch,
        "best_batch": best,
        "per_placement": per_placement,
        "placement": fastest,
        "throughput": per_placement[fastest],
        "single_per_placement": singles,
        "single_placement": quickest,
        "single_ms": singles[quickest],
    }


def measure_parallel_limit(
    endpoint: str,
    model_dir: Path,
    inputs: list[Any],
    batch: int,
    processes: int,
    seconds: float,
    autocast: str,
) -> float:
    """Items/s of `processes` processes with one torch thread each, each running the in-process
    work on its own copy of the model at `batch`, all at once: what data parallelism over the
    cores gets without HTTP. One process is held to about one core by the GIL, so with several
    service workers this, not the one-process figure, is the limit."""
    context = multiprocessing.get_context("spawn")
    start, rates = context.Barrier(processes), context.Queue()
    args = (endpoint, str(model_dir), inputs, batch, seconds, autocast, start, rates)
    workers = [context.Process(target=_parallel_worker, args=args) for _ in range(processes)]
    for worker in workers:
        worker.start()
    try:
        return sum(rates.get(timeout=300) for _ in workers)
    finally:
        for worker in workers:
            worker.join(timeout=30)


def _parallel_worker(
    endpoint: str,
    model_dir: str,
    inputs: list[Any],
    batch: int,
    seconds: float,
    autocast: str,
    start: Any,
    rates: Any,
) -> None:
    torch.set_num_threads(1)
    keep_freed_memory()
    device = torch.device("cpu")
    work = inprocess_work(endpoint, load_model(Path(model_dir), device), device, autocast)
    work(inputs[:batch])  # warm-up
    start.wait()
    rates.put(items_per_second(work, inputs, batch, seconds, device))


def endpoint_limit(
    endpoint: str,
    loaded: LoadedModel,
    model_dir: Path,
    inputs: list[Any],
    batches: list[int],
    device: torch.device,
    autocast: str,
) -> dict[str, Any]:
    """One repeat's limit of `endpoint` on `loaded` (from `model_dir`, on `device`): the
    one-process limit and, on a multi-core CPU, the all-cores limit; `throughput` is the higher."""
    keep_freed_memory()  # as in the service's workers
    work = inprocess_work(endpoint, loaded, device, autocast)
    limit = measure_limit(work, inputs, batches, device, 1.5)
    limit["one_process"] = limit["throughput"]
    cores = len(os.sched_getaffinity(0))
    if device.type == "cpu" and cores > 1:
        limit["processes"] = cores
        limit["parallel"] = measure_parallel_limit(
            endpoint, model_dir, inputs, limit["best_batch"], cores, 3.0, autocast
        )
        limit["throughput"] = max(limit["one_process"], limit["parallel"])
    limit["load_average"] = common.load_average()[0]
    return limit


def summarize_limit(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats of the best throughput and the quickest single-input latency."""
    batches = runs[0]["per_batch"]
    return {
        "per_batch": {b: statistics.median(r["per_batch"][b] for r in runs) for b in batches},
        "best_batch": statistics.median_high(r["best_batch"] for r in runs),
        **common.medians(runs, ("throughput", "one_process")),
        "parallel": (
            statistics.median(r["parallel"] for r in runs) if "parallel" in runs[0] else None
        ),
        "processes": runs[0].get("processes"),
        "single_ms": {
            k: statistics.median(r["single_ms"][k] for r in runs) for k in ("p50", "p95", "p99")
        },
        "runs": runs,
        "load_average": [r["load_average"] for r in runs],
    }
