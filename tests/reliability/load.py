"""Opt-in load run (`make test-load`): a steady run at capacity, then twice capacity.

    python -m tests.reliability.load [--duration 150] [--rounds 3] [--overload-duration 10] [--home DIR]

Starts its own `bentoml serve` (one worker; tiny random-weight models in a temporary BentoML home,
or the store in --home) and drives it from this process with the harness's load client
(harness/load.py, aiohttp), captions and translations alternating; both on every CPU, or with
`--pin` the server on the first and this client on the others; the report names the CPUs:

1. warm-up (--warmup s, not counted);
2. steady: closed loop, --clients concurrent clients for --duration seconds: no error allowed,
   worker memory drift (last samples against the first after warm-up) under 5%;
3. overload, --rounds times: capacity (the same closed loop for --measure s -> requests/s), then
   an open loop at twice that capacity for --overload-duration s. Only 200, 429 or 503 (each error
   with the JSON error body), never 500; /livez and /readyz keep answering within 2 s throughout;
   the goodput, 200s per second while twice the capacity is offered, over the capacity measured
   just before, at least 0.8 in the median round (the excess is refused at the door,
   service/admission.py, which must cost little). Each overload is measured beside its own
   capacity because a shared host's speed drifts by more than the check's margin between phases
   minutes apart;
4. recovery: the closed loop again; seconds until a one-second window reaches 80% of the median
   capacity.

Prints a JSON report (and writes it to --report); exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

import psutil

from harness.load import (
    Request,
    Tally,
    caption_request,
    closed_loop,
    open_loop,
    percentiles,
    translate_request,
)
from harness.server import Server, cpu_seconds, http_status
from tests.reliability.media import encoded, photo_like
from tests.serving import rss_mb, start_server

SENTENCES = ["the cat sits on the mat .", "where is the station ?"]
OPTIONS = {"max_length": 12}
RECOVERY_S = 15
MIN_GOODPUT = 0.8  # of capacity, at twice the capacity offered


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=150, help="steady phase s (default 150)")
    parser.add_argument(
        "--overload-duration", type=float, default=10, help="s a round (default 10)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="overload rounds (default 3)")
    parser.add_argument("--warmup", type=float, default=45, help="warm-up s (default 45)")
    parser.add_argument(
        "--measure", type=float, default=10, help="capacity s before each overload (default 10)"
    )
    parser.add_argument("--clients", type=int, default=16, help="closed-loop clients (default 16)")
    parser.add_argument("--home", type=Path, help="BentoML home to serve (default: tiny models)")
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=0,
        help="SEQSERVE_MAX_IN_FLIGHT of the server; 0: the service's default (default 0)",
    )
    parser.add_argument(
        "--connections", type=int, default=256, help="open-loop connections (default 256)"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="with 2+ CPUs, the server on the first and this load client on the others, as if "
        "the clients were other machines (default: both on every CPU)",
    )
    parser.add_argument("--report", type=Path, help="also write the JSON report here")
    return parser


def load_requests() -> list[Request]:
    """A caption of a small photo-like PNG, then a translation of two sentences."""
    image = encoded(photo_like())
    return [
        caption_request(image, OPTIONS, "a.png", "image/png"),
        translate_request(SENTENCES, OPTIONS),
    ]


def probe_health(url: str, stop: Event, results: Queue) -> None:
    """In a process of its own, so that the load's busy event loop cannot delay it: GET /livez
    and /readyz every half second; each must answer 200 within 2 s."""
    counts: Counter = Counter()
    results.put("probing")
    while not stop.is_set():
        for path in ("/livez", "/readyz"):
            status = http_status(url + path, timeout=2.0)
            counts[f"{path} {status if status is not None else 'no answer in 2 s'}"] += 1
        stop.wait(0.5)
    results.put(dict(counts))


async def sample_memory(server: Server, stop: asyncio.Event, samples: list[float]) -> None:
    while not stop.is_set():
        worker = server.worker()
        if worker is not None:
            samples.append(rss_mb(worker))
        await asyncio.sleep(2)


class CoresUsed:
    """CPU time over wall time while the block runs, of the serving worker and of this load
    client's process (its prober excluded): how much of the machine each took."""

    def __init__(self, worker: psutil.Process) -> None:
        self.processes = {"worker": worker, "load_client": psutil.Process()}
        self.used: dict[str, float] = {}

    def __enter__(self) -> CoresUsed:
        self.started = time.perf_counter()
        self.cpu = {name: cpu_seconds(p) for name, p in self.processes.items()}
        return self

    def __exit__(self, *_: object) -> None:
        wall = time.perf_counter() - self.started
        self.used = {
            name: round((cpu_seconds(p) - self.cpu[name]) / wall, 2)
            for name, p in self.processes.items()
        }


def per_second(answers: Tally) -> list[int]:
    """Requests answered 200 in each whole second after the run started."""
    counts = Counter(int(a.answered - answers.started) for a in answers.ok())
    return [counts.get(second, 0) for second in range(max(counts, default=-1) + 1)]


async def steady_phase(server: Server, args: argparse.Namespace) -> tuple[Tally, list[float]]:
    """The closed loop for --duration s, sampling the worker's memory every 2 s."""
    memory: list[float] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_memory(server, stop, memory))
    steady = await closed_loop(server.url, load_requests(), args.clients, args.duration)
    stop.set()
    await sampler
    return steady, memory


async def overload_rounds(
    url: str, worker: psutil.Process, args: argparse.Namespace
) -> tuple[list[dict], list[Tally], dict]:
    """--rounds times the capacity, then twice it, while another process probes /livez and
    /readyz: each round's figures, its open loop's answers, and the probes' statuses."""
    spawn = multiprocessing.get_context("spawn")
    stop, results = spawn.Event(), spawn.Queue()
    prober = spawn.Process(target=probe_health, args=(url, stop, results))
    prober.start()
    assert results.get(timeout=60) == "probing"
    requests, rounds, overloads = load_requests(), [], []
    for _ in range(args.rounds):
        with CoresUsed(worker) as closed_cores:
            measured = await closed_loop(url, requests, args.clients, args.measure)
        capacity = len(measured.ok()) / args.measure
        with CoresUsed(worker) as open_cores:
            overload = await open_loop(
                url, requests, 2 * capacity, args.overload_duration, args.connections
            )
        offered = overload.between(overload.started, overload.started + args.overload_duration)
        served = len(offered.ok()) / args.overload_duration
        rounds.append(
            {
                "capacity_rps": round(capacity, 1),
                "offered_rps": round(2 * capacity, 1),
                "goodput_rps": round(served, 1),
                "goodput_of_capacity": round(served / capacity, 3) if capacity else 0.0,
                "statuses": {str(k): v for k, v in overload.statuses().items()},
                "cores_used": {"capacity": closed_cores.used, "twice": open_cores.used},
            }
        )
        overloads.append(overload)
    stop.set()
    probes = results.get(timeout=30)
    prober.join(10)
    return rounds, overloads, probes


async def run_phases(server: Server, args: argparse.Namespace) -> dict:
    url, requests, worker = server.url, load_requests(), server.worker()
    cold_mb = rss_mb(worker)
    # not counted: the worker's threads and allocator caches grow to their size
    warm = await closed_loop(url, requests, args.clients, args.warmup)
    warm_mb = rss_mb(worker)
    steady, memory = await steady_phase(server, args)
    rounds, overloads, probes = await overload_rounds(url, worker, args)
    capacity = statistics.median(r["capacity_rps"] for r in rounds)
    recovery = await closed_loop(url, requests, args.clients, RECOVERY_S)
    seconds = per_second(recovery)
    recovered = next((i + 1 for i, n in enumerate(seconds) if n >= 0.8 * capacity), None)

    window = max(1, len(memory) // 5)
    first, last = statistics.median(memory[:window]), statistics.median(memory[-window:])
    answers = [a for overload in overloads for a in overload.answers]
    return {
        "capacity_rps": capacity,
        "clients": args.clients,
        "warmup": {
            "seconds": args.warmup,
            "statuses": dict(warm.statuses()),
            "worker_rss_mb_before_after": [round(cold_mb, 1), round(warm_mb, 1)],
        },
        "steady": {
            "seconds": args.duration,
            "requests": len(steady.answers),
            "statuses": dict(steady.statuses()),
            "throughput_rps": round(len(steady.ok()) / args.duration, 1),
            "worker_rss_mb_first_last": [round(first, 1), round(last, 1)],
            "memory_drift_percent": round(100 * (last - first) / first, 2),
            "worker_rss_mb_samples": [round(m) for m in memory[:: max(1, len(memory) // 20)]],
        },
        "overload": {
            "seconds_a_round": args.overload_duration,
            "rounds": rounds,
            "goodput_of_capacity": statistics.median(r["goodput_of_capacity"] for r in rounds),
            "requests": len(answers),
            "statuses": dict(sum((Counter(r["statuses"]) for r in rounds), Counter())),
            "errors_without_json_body": sum(o.errors_without_shape() for o in overloads),
            "latency_ms_200": latency([a.latency_ms for a in answers if a.status == 200]),
            "latency_ms_refused": latency(
                [a.latency_ms for a in answers if a.status in (429, 503)]
            ),
            "health_probes": dict(probes),
        },
        "recovery": {"per_second": seconds, "seconds_to_80_percent": recovered},
    }


def latency(values: list[float]) -> dict[str, float]:
    """p50, p95, p99 (ms, rounded) and the count; empty for no values."""
    return {k: round(v, 1) for k, v in percentiles(values).items()} if values else {}


def failures(report: dict) -> list[str]:
    """The checks of the load run that failed, in words."""
    found = []
    steady, overload = report["steady"], report["overload"]
    if set(steady["statuses"]) != {200} or set(report["warmup"]["statuses"]) != {200}:
        found.append(f"steady phase had errors: {steady['statuses']}")
    if abs(steady["memory_drift_percent"]) >= 5:
        found.append(f"memory drift {steady['memory_drift_percent']}% (limit 5%)")
    if set(overload["statuses"]) - {"200", "429", "503"}:
        found.append(f"overload answered other statuses: {overload['statuses']}")
    if overload["errors_without_json_body"]:
        found.append(f"{overload['errors_without_json_body']} errors without the JSON body")
    if overload["goodput_of_capacity"] < MIN_GOODPUT:
        found.append(
            f"goodput at twice capacity {overload['goodput_of_capacity']} of capacity in the "
            f"median round (at least {MIN_GOODPUT})"
        )
    if any(not key.endswith(" 200") for key in overload["health_probes"]):
        found.append(f"health probes failed: {overload['health_probes']}")
    recovered = report["recovery"]["seconds_to_80_percent"]
    if recovered is None or recovered > 10:
        found.append(f"throughput did not recover within 10 s: {report['recovery']}")
    return found


def split_cpus(cpus: list[int]) -> tuple[list[int], list[int]]:
    """The server's CPU and the load client's (`--pin`); with one CPU, both share it. Pinned on
    2 cores, the goodput held but the health probes went unanswered at times: the worker's event
    loop then waits for the core its batch worker holds (docs/service.md, Overload)."""
    return (cpus[:1], cpus[1:]) if len(cpus) > 1 else (cpus, cpus)


def main(args: argparse.Namespace) -> int:
    scratch = Path(tempfile.mkdtemp(prefix="seqserve-load-"))
    home = args.home
    if home is None:
        from tests.conftest import BENTOML_HOME, build_tiny_models  # a throw-away store

        build_tiny_models()
        home = BENTOML_HOME
    env = {"SEQSERVE_TORCH_THREADS": "0"}
    if args.max_in_flight:
        env["SEQSERVE_MAX_IN_FLIGHT"] = str(args.max_in_flight)
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus, client_cpus = split_cpus(cpus) if args.pin else (cpus, cpus)
    try:
        os.sched_setaffinity(0, server_cpus)  # the server's processes inherit it
        with start_server(home, scratch / "serve.log", env) as server:
            os.sched_setaffinity(0, client_cpus)
            server.wait_ready()
            report = {"cpus": {"server": server_cpus, "load_client": client_cpus}}
            report.update(asyncio.run(run_phases(server, args)))
            report["server_log_500s"] = server.log_text().count("status=500")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if args.home is None:
            shutil.rmtree(home, ignore_errors=True)
    report["failures"] = failures(report) + (
        ["the server logged 500s"] if report["server_log_500s"] else []
    )
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        args.report.write_text(text + "\n")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
