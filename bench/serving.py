"""Serving throughput and latency over real HTTP: our BentoML service vs the in-process limit vs
a plain FastAPI server, for captions and translations at several concurrencies.

Usage: python -m bench.serving [--models pretrained] [--concurrency 1 8 32 64] [--duration 8]
       [--repeats 2] [--out bench/results/serving.json]

Both servers run as their own processes; the load comes from this process (an aiohttp client,
one greedy request per call: a 640x480 JPEG, or one English test sentence). The limit is the same
models called in this process on pre-batched inputs (decoding and preprocessing included, no HTTP,
best of several batch sizes). Sides alternate within each repeat; medians are reported. Prints a
markdown table, writes JSON and a PNG plot of throughput against concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from bench import common
from models.checkpoint import LoadedModel, load_model
from models.inference import caption_images, precision, translate
from models.search import SearchOptions

ENDPOINTS = ("caption", "translate")
SIDES = ("bentoml", "simple")
MODEL_OF = {"caption": "captioner", "translate": "translator"}
OPTIONS = SearchOptions()  # what a request without options gets: greedy, max_length 50
BOUNDARY = "benchboundary7d93"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_models_argument(parser)
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 8, 32, 64],
        help="concurrent clients (default: 1 8 32 64)",
    )
    parser.add_argument(
        "--endpoints", nargs="+", choices=ENDPOINTS, default=list(ENDPOINTS), help="(default: both)"
    )
    parser.add_argument(
        "--duration", type=float, default=8.0, help="measured seconds per cell (default: 8)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="unmeasured seconds before each cell (default: 2)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="repeats of every cell (default: 2)")
    parser.add_argument(
        "--batches",
        type=int,
        nargs="+",
        default=[1, 8, 16, 32, 64],
        help="batch sizes tried for the in-process limit (default: 1 8 16 32 64)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument(
        "--autocast",
        default="none",
        choices=("none", "bf16", "fp16"),
        help="autocast of the limit and the simple server; the service picks its own (default: none)",
    )
    parser.add_argument(
        "--simple-threads",
        type=int,
        default=0,
        help="torch threads of the plain FastAPI server; 0 leaves torch's default, as people do (default: 0)",
    )
    parser.add_argument(
        "--service-env",
        nargs="*",
        default=[],
        help="extra NAME=VALUE settings for the BentoML service, e.g. SEQSERVE_TORCH_THREADS=1",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=common.RESULTS / "serving.json",
        help="JSON output; the plot goes beside it as .png (default: bench/results/serving.json)",
    )
    return parser


# -- the in-process limit -------------------------------------------------------------------


def inprocess_work(
    endpoint: str, loaded: LoadedModel, device: torch.device, autocast: str
) -> Callable[[list[Any]], list[str]]:
    """Inputs (JPEG bytes or sentences) -> output texts, the whole list as one batch."""
    import io

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


def measure_limit(
    work: Callable[[list[Any]], list[str]],
    inputs: list[Any],
    batches: list[int],
    device: torch.device,
    seconds: float,
) -> dict[str, Any]:
    """Items/s at each batch size and single-input latency, each the best of four placements:
    the main thread or one helper thread (where the service runs its batches), with all cores'
    torch threads or one. On a shared 2-core machine either thread can be far slower than the
    other (PLATFORM.md, docs/service.md), so the limit takes whichever is faster."""
    cores = len(os.sched_getaffinity(0))
    service_threads = max(1, cores - 1)  # the service's default (service/runtime.py)
    placements = [("helper", service_threads)]
    placements += [(t, n) for t in ("helper", "main") for n in sorted({cores, 1})]
    placements = list(dict.fromkeys(placements))
    with ThreadPoolExecutor(1) as helper:

        def call(placement: tuple[str, int], fn: Callable[[], Any]) -> Any:
            def run() -> Any:
                torch.set_num_threads(placement[1])
                return fn()

            return run() if placement[0] == "main" else helper.submit(run).result()

        def rate(placement: tuple[str, int], batch: int) -> float:
            def loop() -> float:
                work(inputs[:batch])  # warm-up, on the placement's thread
                return items_per_second(work, inputs, batch, seconds, device)

            return call(placement, loop)

        def single(placement: tuple[str, int]) -> list[float]:
            def loop() -> list[float]:
                work(inputs[:1])
                times, started = [], time.perf_counter()
                while len(times) < 200 and (
                    len(times) < 30 or time.perf_counter() - started < seconds
                ):
                    t0 = time.perf_counter()
                    work([inputs[len(times) % len(inputs)]])
                    common.synchronize(device)
                    times.append((time.perf_counter() - t0) * 1000)
                return times

            return call(placement, loop)

        # sweep batch sizes where the service runs (a helper thread, all cores but one), then
        # try the other placements at the best batch size
        per_batch = {batch: rate(placements[0], batch) for batch in batches}
        best = max(per_batch, key=per_batch.get)
        per_placement = {f"{t}/{n}": rate((t, n), best) for t, n in placements[1:]}
        per_placement[f"{placements[0][0]}/{placements[0][1]}"] = per_batch[best]
        singles = {f"{t}/{n}": percentiles(single((t, n))) for t, n in placements}
    torch.set_num_threads(cores)
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
    import multiprocessing

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
    device = torch.device("cpu")
    work = inprocess_work(endpoint, load_model(Path(model_dir), device), device, autocast)
    work(inputs[:batch])  # warm-up
    start.wait()
    rates.put(items_per_second(work, inputs, batch, seconds, device))


def items_per_second(
    work: Callable[[list[Any]], list[str]],
    inputs: list[Any],
    batch: int,
    seconds: float,
    device: torch.device,
) -> float:
    """Run `work` on consecutive batches of `inputs` for `seconds` (at least two batches)."""
    done, started = 0, time.perf_counter()
    while done < 2 * batch or time.perf_counter() - started < seconds:
        work([inputs[(done + i) % len(inputs)] for i in range(batch)])
        common.synchronize(device)
        done += batch
    return done / (time.perf_counter() - started)


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"p50": at(0.5), "p95": at(0.95), "p99": at(0.99), "n": len(ordered)}


# -- HTTP load ------------------------------------------------------------------------------


def request_bodies(endpoint: str, count: int) -> list[tuple[bytes, str]]:
    """Pre-encoded request bodies and content types, so the client does little work per call."""
    if endpoint == "caption":
        image = common.image_bytes()
        body = (
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="house.jpg"\r\n'
                "Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + image
            + f"\r\n--{BOUNDARY}--\r\n".encode()
        )
        return [(body, f"multipart/form-data; boundary={BOUNDARY}")]
    import json

    return [
        (json.dumps({"sentences": [s]}).encode(), "application/json")
        for s in common.sentences(count)
    ]


async def http_load(
    url: str, bodies: list[tuple[bytes, str]], concurrency: int, warmup: float, duration: float
) -> dict[str, Any]:
    """`concurrency` clients in a closed loop for warmup + duration seconds. Throughput counts
    the answers that arrive inside the measured window; latencies are theirs."""
    import aiohttp

    done: list[tuple[float, float, int | str]] = []  # (sent, answered, status)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        measure_from, end = start + warmup, start + warmup + duration

        async def client(i: int) -> None:
            n = i
            while (t0 := time.perf_counter()) < end:
                body, kind = bodies[n % len(bodies)]
                n += concurrency
                try:
                    async with session.post(url, data=body, headers={"Content-Type": kind}) as r:
                        await r.read()
                        status: int | str = r.status
                except aiohttp.ClientError as error:
                    status = type(error).__name__
                done.append((t0, time.perf_counter(), status))

        await asyncio.gather(*(client(i) for i in range(concurrency)))
    window = [(t0, t1, status) for t0, t1, status in done if measure_from <= t1 < end]
    errors: dict[str, int] = {}
    for _, _, status in window:
        if status != 200:
            errors[str(status)] = errors.get(str(status), 0) + 1
    latencies = [(t1 - t0) * 1000 for t0, t1, status in window if status == 200]
    return {
        "throughput": len(latencies) / duration,
        "latency_ms": percentiles(latencies) if latencies else {},
        "errors": errors,
    }


def batch_rows(url: str) -> tuple[float, float]:
    """Sum and count of the service's seqserve_batch_rows histogram (all labels)."""
    import httpx

    total = count = 0.0
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("seqserve_batch_rows_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("seqserve_batch_rows_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def run_cell(server: common.Server, endpoint: str, c: int, args: argparse.Namespace) -> dict:
    before = batch_rows(server.url) if server.name == "bentoml" else None
    bodies = request_bodies(endpoint, 512)
    result = asyncio.run(
        http_load(f"{server.url}/{endpoint}", bodies, c, args.warmup, args.duration)
    )
    if before is not None:
        after = batch_rows(server.url)
        batches = after[1] - before[1]
        result["mean_batch"] = (after[0] - before[0]) / batches if batches else None
    result["load_average"] = common.load_average()[0]
    return result


# -- the run --------------------------------------------------------------------------------


def median_cells(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats of throughput and latency percentiles; errors summed."""
    merged: dict[str, Any] = {
        "throughput": statistics.median(c["throughput"] for c in cells),
        "repeats": [round(c["throughput"], 2) for c in cells],
        "load_average": [c["load_average"] for c in cells],
        "errors": sum(sum(c["errors"].values()) for c in cells),
    }
    keys = cells[0].get("latency_ms", {})
    merged["latency_ms"] = {
        k: statistics.median(c["latency_ms"][k] for c in cells if c.get("latency_ms"))
        for k in keys
        if k != "n"
    }
    if "mean_batch" in cells[0]:
        means = [c["mean_batch"] for c in cells if c["mean_batch"]]
        merged["mean_batch"] = statistics.median(means) if means else None
    return merged


def start_servers(
    args: argparse.Namespace, dirs: dict[str, Path], workdir: Path
) -> dict[str, common.Server]:
    home = workdir / "bentoml"
    common.make_store(dirs, home)
    service_env = dict(kv.split("=", 1) for kv in args.service_env)
    service_env.update(BENTOML_HOME=str(home), SEQSERVE_DEVICE=args.device)
    if args.device == "cpu":
        service_env.setdefault("SEQSERVE_GPUS", "0")
    servers = {}
    port = common.free_port()
    servers["bentoml"] = common.start_server(
        "bentoml",
        common.bentoml_command(port),
        service_env,
        port,
        workdir / "bentoml.log",
        ready_lines=common.bentoml_ready_lines(service_env),
    )
    port = common.free_port()
    servers["simple"] = common.start_server(
        "simple",
        common.simple_command(dirs, port, args.device, args.autocast, args.simple_threads),
        {},
        port,
        workdir / "simple.log",
        ready_path="/healthz",
    )
    return servers


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    device = torch.device(args.device)
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # what the service uses by default
    dirs = common.model_dirs(args.models, workdir)
    report = common.environment(
        models={k: str(v) for k, v in dirs.items()},
        settings={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        torch_threads=torch.get_num_threads(),
    )
    loaded = {
        "caption": load_model(dirs["captioner"], device),
        "translate": load_model(dirs["translator"], device),
    }
    inputs = {
        "caption": [common.image_bytes()] * max(args.batches),
        "translate": common.sentences(512),
    }
    servers = start_servers(args, dirs, workdir)
    report["start_s"] = {name: round(s.start_s, 2) for name, s in servers.items()}
    limits: dict[str, list[dict]] = {e: [] for e in args.endpoints}
    cells: dict[str, dict[str, dict[int, list[dict]]]] = {
        e: {s: {c: [] for c in args.concurrency} for s in SIDES} for e in args.endpoints
    }
    try:
        for repeat in range(args.repeats):
            for endpoint in args.endpoints:
                work = inprocess_work(endpoint, loaded[endpoint], device, args.autocast)
                limit = measure_limit(work, inputs[endpoint], args.batches, device, 1.5)
                limit["one_process"] = limit["throughput"]
                cores = len(os.sched_getaffinity(0))
                if device.type == "cpu" and cores > 1:
                    limit["processes"] = cores
                    limit["parallel"] = measure_parallel_limit(
                        endpoint,
                        dirs[MODEL_OF[endpoint]],
                        inputs[endpoint],
                        limit["best_batch"],
                        cores,
                        3.0,
                        args.autocast,
                    )
                    limit["throughput"] = max(limit["one_process"], limit["parallel"])
                limit["load_average"] = common.load_average()[0]
                limits[endpoint].append(limit)
                print(
                    f"[{repeat}] {endpoint} limit {limit['one_process']:.1f}/s at batch "
                    f"{limit['best_batch']} ({limit['placement']}), "
                    f"{limit.get('parallel', float('nan')):.1f}/s in {limit.get('processes')} "
                    "processes, single "
                    f"{limit['single_ms']['p50']:.1f} ms ({limit['single_placement']}) "
                    f"(load {limit['load_average']})",
                    flush=True,
                )
                for c in args.concurrency:
                    sides = SIDES if repeat % 2 == 0 else SIDES[::-1]  # alternate who goes first
                    for side in sides:
                        cell = run_cell(servers[side], endpoint, c, args)
                        cells[endpoint][side][c].append(cell)
                        print(
                            f"[{repeat}] {endpoint} c={c} {side}: {cell['throughput']:.1f}/s "
                            f"p99 {cell['latency_ms'].get('p99', float('nan')):.0f} ms "
                            f"errors {cell['errors']} batch {cell.get('mean_batch')} "
                            f"(load {cell['load_average']})",
                            flush=True,
                        )
        report["memory_after"] = {name: s.rss_mb() for name, s in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    report["limit"] = {e: summarize_limit(v) for e, v in limits.items()}
    report["http"] = {
        e: {s: {c: median_cells(v) for c, v in by_c.items()} for s, by_c in by_side.items()}
        for e, by_side in cells.items()
    }
    report["ratios"] = ratios(report)
    return report


def summarize_limit(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats of the best throughput and the quickest single-input latency."""
    batches = runs[0]["per_batch"]
    best = statistics.median_high(r["best_batch"] for r in runs)
    return {
        "per_batch": {b: statistics.median(r["per_batch"][b] for r in runs) for b in batches},
        "best_batch": best,
        "throughput": statistics.median(r["throughput"] for r in runs),
        "one_process": statistics.median(r["one_process"] for r in runs),
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


def ratios(report: dict[str, Any]) -> dict[str, Any]:
    """Ours as a fraction of the limit and as a multiple of the simple server; p99 at c=1 over
    the in-process single-request latency."""
    out: dict[str, Any] = {}
    for endpoint, by_side in report["http"].items():
        limit = report["limit"][endpoint]
        ours, simple = by_side["bentoml"], by_side["simple"]
        out[endpoint] = {
            c: {
                "fraction_of_limit": ours[c]["throughput"] / limit["throughput"],
                "fraction_of_one_process_limit": ours[c]["throughput"] / limit["one_process"],
                "multiple_of_simple": ours[c]["throughput"] / max(simple[c]["throughput"], 1e-9),
            }
            for c in ours
        }
        if 1 in ours and ours[1]["latency_ms"]:
            # the inputs vary in cost (sentence lengths), so the like-for-like comparison is
            # percentile to percentile; p99 over the in-process median is kept as well
            out[endpoint]["p99_c1_over_single"] = (
                ours[1]["latency_ms"]["p99"] / limit["single_ms"]["p50"]
            )
            out[endpoint]["p99_c1_over_single_p99"] = (
                ours[1]["latency_ms"]["p99"] / limit["single_ms"]["p99"]
            )
            out[endpoint]["p50_c1_over_single_p50"] = (
                ours[1]["latency_ms"]["p50"] / limit["single_ms"]["p50"]
            )
    return out


def print_table(report: dict[str, Any]) -> None:
    print(
        "| endpoint | clients | side | req/s | p50 ms | p95 ms | p99 ms | of limit | x simple "
        "| mean batch | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for endpoint, by_side in report["http"].items():
        limit = report["limit"][endpoint]
        single = limit["single_ms"]
        print(
            f"| {endpoint} | - | limit: one process, batch {limit['best_batch']} "
            f"| {limit['one_process']:.1f} | {single['p50']:.1f} (batch 1) | {single['p95']:.1f} "
            f"| {single['p99']:.1f} | {limit['one_process'] / limit['throughput']:.2f} | | "
            f"| {max(limit['load_average']):.2f} |"
        )
        if limit.get("parallel"):
            print(
                f"| {endpoint} | - | limit: {limit['processes']} processes x 1 thread, batch "
                f"{limit['best_batch']} | {limit['parallel']:.1f} | | | "
                f"| {limit['parallel'] / limit['throughput']:.2f} | | | |"
            )
        for c in by_side["bentoml"]:
            for side in SIDES:
                cell = by_side[side][c]
                lat = cell["latency_ms"]
                r = report["ratios"][endpoint][c]
                fraction = cell["throughput"] / limit["throughput"]
                multiple = f"{r['multiple_of_simple']:.2f}" if side == "bentoml" else "1.00"
                batch = cell.get("mean_batch")
                print(
                    f"| {endpoint} | {c} | {side} | {cell['throughput']:.1f} "
                    f"| {lat.get('p50', 0):.1f} | {lat.get('p95', 0):.1f} | {lat.get('p99', 0):.1f} "
                    f"| {fraction:.2f} | {multiple} | {f'{batch:.1f}' if batch else ''} "
                    f"| {max(cell['load_average']):.2f} |"
                )
        r = report["ratios"][endpoint]
        if "p99_c1_over_single" in r:
            print(
                f"| {endpoint} | 1 | latency at 1 client over in-process single: p50/p50 "
                f"{r['p50_c1_over_single_p50']:.2f}x, p99/p99 {r['p99_c1_over_single_p99']:.2f}x, "
                f"p99/p50 {r['p99_c1_over_single']:.2f}x | | | | | | | |"
            )


def plot(report: dict[str, Any], path: Path) -> None:
    """Throughput against concurrency, one panel per endpoint, the limit as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    endpoints = list(report["http"])
    fig, axes = plt.subplots(1, len(endpoints), figsize=(5.5 * len(endpoints), 4), squeeze=False)
    for ax, endpoint in zip(axes[0], endpoints, strict=True):
        for side, label in (("bentoml", "BentoML service (ours)"), ("simple", "plain FastAPI")):
            cells = report["http"][endpoint][side]
            xs = [int(c) for c in cells]
            ax.plot(xs, [cells[c]["throughput"] for c in cells], marker="o", label=label)
        limit = report["limit"][endpoint]
        ax.axhline(
            limit["one_process"],
            linestyle="--",
            color="grey",
            label=f"limit: one process (batch {limit['best_batch']})",
        )
        if limit.get("parallel"):
            ax.axhline(
                limit["parallel"],
                linestyle=":",
                color="black",
                label=f"limit: {limit['processes']} processes x 1 thread",
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("captions/s" if endpoint == "caption" else "translations/s")
        ax.set_title(f"/{endpoint}, greedy")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    load = report["load_average_start"][0], report.get("load_average_end", ["?"])[0]
    fig.suptitle(f"{report['date']}  {report['machine']}  load {load[0]}-{load[1]}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="seqserve-bench-") as tmp:
        report = run(args, Path(tmp))
    common.write_report(report, args.out)
    print_table(report)
    plot(report, args.out.with_suffix(".png"))
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
