"""Opt-in load run (`make test-load`): capacity, a steady run at capacity, then twice capacity.

    python -m tests.reliability.load [--duration 150] [--overload-duration 30] [--home DIR]

Starts its own `bentoml serve` (tiny random-weight models in a temporary BentoML home, or the
store in --home) and drives it from this process with httpx.AsyncClient:

1. warm-up (--warmup s, not counted), then capacity: closed loop, --clients concurrent clients
   for --measure seconds -> requests/s;
2. steady: the same closed loop for --duration seconds: no error allowed, worker memory drift
   (last samples against the first after warm-up) under 5%;
3. overload: open loop at twice the capacity for --overload-duration seconds: only 200, 429 or
   503 (each error with the JSON error body), never 500; /livez and /readyz keep answering;
4. recovery: the closed loop again; seconds until a one-second window reaches 80% of capacity.

Prints a JSON report (and writes it to --report); exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

import httpx

from tests.reliability.media import encoded, photo_like
from tests.serving import ServeProcess, rss_mb

SENTENCES = ["the cat sits on the mat .", "where is the station ?"]
OPTIONS = {"max_length": 12}
# below the server's keep-alive timeout (uvicorn: 5 s): a connection the server may be closing
# is never reused, so a POST cannot race the close (httpx's default is also 5 s)
KEEPALIVE_S = 2.0


@dataclass
class Tally:
    """Answers of one phase."""

    statuses: Counter = field(default_factory=Counter)
    bad_bodies: int = 0  # errors without the JSON error shape
    finished: list[float] = field(default_factory=list)  # monotonic end time of each 200
    answered: list[float] = field(default_factory=list)  # monotonic end time of every answer

    def record(self, response: httpx.Response | Exception) -> None:
        if isinstance(response, Exception):
            self.statuses[f"{type(response).__name__}: {response}"[:120]] += 1
            return
        self.statuses[response.status_code] += 1
        self.answered.append(time.monotonic())
        if response.status_code == 200:
            self.finished.append(time.monotonic())
            return
        try:
            error = response.json()["error"]
            assert isinstance(error["code"], str) and isinstance(error["message"], str)
        except Exception:
            self.bad_bodies += 1


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=150, help="steady phase s (default 150)")
    parser.add_argument("--overload-duration", type=float, default=30, help="s (default 30)")
    parser.add_argument("--warmup", type=float, default=45, help="warm-up s (default 45)")
    parser.add_argument("--measure", type=float, default=20, help="capacity phase s (default 20)")
    parser.add_argument("--clients", type=int, default=16, help="closed-loop clients (default 16)")
    parser.add_argument("--home", type=Path, help="BentoML home to serve (default: tiny models)")
    parser.add_argument("--max-in-flight", type=int, default=32, help="server cap (default 32)")
    parser.add_argument(
        "--connections", type=int, default=256, help="open-loop connections (default 256)"
    )
    parser.add_argument("--report", type=Path, help="also write the JSON report here")
    return parser


async def one_request(
    client: httpx.AsyncClient, turn: int, image: bytes
) -> httpx.Response | Exception:
    """Alternately a caption and a translation of two sentences."""
    try:
        if turn % 2:
            return await client.post(
                "/translate", json={"sentences": SENTENCES, "options": OPTIONS}
            )
        files = {"image": ("a.png", image)}
        return await client.post("/caption", files=files, data={"options": json.dumps(OPTIONS)})
    except httpx.HTTPError as error:  # counted by its type: a failure unless a status
        return error


async def closed_loop(url: str, clients: int, seconds: float, tally: Tally) -> None:
    """`clients` clients, each sending its next request when the previous one answered."""
    image = encoded(photo_like())
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, keepalive_expiry=KEEPALIVE_S)
    async with httpx.AsyncClient(base_url=url, timeout=90, limits=limits) as client:

        async def user(index: int) -> None:
            turn = index
            while time.monotonic() < deadline:
                tally.record(await one_request(client, turn, image))
                turn += 1

        await asyncio.gather(*(user(i) for i in range(clients)))


async def open_loop(url: str, rate: float, seconds: float, tally: Tally, connections: int) -> None:
    """Requests started at `rate` per second whatever the answers (an arrival process).

    The connections are spread over 8 clients: one httpx pool with hundreds of waiting requests
    spends more CPU managing its queue than sending (measured: 429s then took 20 s to arrive).
    """
    image = encoded(photo_like())
    shards = 8
    limits = httpx.Limits(
        max_connections=max(1, connections // shards), keepalive_expiry=KEEPALIVE_S
    )
    clients = [httpx.AsyncClient(base_url=url, timeout=90, limits=limits) for _ in range(shards)]
    started, pending, turn = time.monotonic(), set(), 0
    try:
        while (now := time.monotonic()) - started < seconds:
            while turn < (now - started) * rate:
                task = asyncio.create_task(one_request(clients[turn % shards], turn, image))
                task.add_done_callback(lambda t: tally.record(t.result()))
                pending.add(task)
                task.add_done_callback(pending.discard)
                turn += 1
            await asyncio.sleep(0.005)
        if pending:
            await asyncio.wait(pending)
    finally:
        for client in clients:
            await client.aclose()


def probe_health(url: str, stop: Event, results: Queue) -> None:
    """In a process of its own, so that the load's busy event loop cannot delay it: GET /livez
    and /readyz every half second; each must answer 200 within 2 s."""
    counts: Counter = Counter()
    with httpx.Client(base_url=url, timeout=2) as client:
        results.put("probing")
        while not stop.is_set():
            for path in ("/livez", "/readyz"):
                try:
                    counts[f"{path} {client.get(path).status_code}"] += 1
                except httpx.HTTPError as error:
                    counts[f"{path} {type(error).__name__}"] += 1
            stop.wait(0.5)
    results.put(dict(counts))


async def sample_memory(server: ServeProcess, stop: asyncio.Event, samples: list[float]) -> None:
    while not stop.is_set():
        worker = server.worker()
        if worker is not None:
            samples.append(rss_mb(worker))
        await asyncio.sleep(2)


def per_second(finished: list[float], start: float) -> list[int]:
    """Completed requests in each whole second after `start`."""
    counts = Counter(int(t - start) for t in finished if t >= start)
    return [counts.get(second, 0) for second in range(max(counts, default=-1) + 1)]


async def run_phases(server: ServeProcess, args: argparse.Namespace) -> dict:
    url = server.url
    worker = server.worker()
    cold_mb = rss_mb(worker)
    warm = Tally()  # not counted: the worker's threads and allocator caches grow to their size
    await closed_loop(url, args.clients, args.warmup, warm)
    warm_mb = rss_mb(worker)
    measured = Tally()
    await closed_loop(url, args.clients, args.measure, measured)
    capacity = len(measured.finished) / args.measure

    steady, memory, stop = Tally(), [], asyncio.Event()
    sampler = asyncio.create_task(sample_memory(server, stop, memory))
    await closed_loop(url, args.clients, args.duration, steady)
    stop.set()
    await sampler

    spawn = multiprocessing.get_context("spawn")
    overload, stop, results = Tally(), spawn.Event(), spawn.Queue()
    prober = spawn.Process(target=probe_health, args=(url, stop, results))
    prober.start()
    assert results.get(timeout=60) == "probing"
    overload_started = time.monotonic()
    await open_loop(url, 2 * capacity, args.overload_duration, overload, args.connections)
    overload_s = time.monotonic() - overload_started
    stop.set()
    probes = results.get(timeout=30)
    prober.join(10)

    recovery, after = Tally(), time.monotonic()
    await closed_loop(url, args.clients, 15, recovery)
    seconds = per_second(recovery.finished, after)
    recovered = next((i + 1 for i, n in enumerate(seconds) if n >= 0.8 * capacity), None)

    window = max(1, len(memory) // 5)
    first, last = statistics.median(memory[:window]), statistics.median(memory[-window:])
    return {
        "capacity_rps": round(capacity, 1),
        "clients": args.clients,
        "warmup": {
            "seconds": args.warmup,
            "statuses": dict(warm.statuses),
            "worker_rss_mb_before_after": [round(cold_mb, 1), round(warm_mb, 1)],
        },
        "steady": {
            "seconds": args.duration,
            "requests": sum(steady.statuses.values()),
            "statuses": dict(steady.statuses),
            "throughput_rps": round(len(steady.finished) / args.duration, 1),
            "worker_rss_mb_first_last": [round(first, 1), round(last, 1)],
            "memory_drift_percent": round(100 * (last - first) / first, 2),
            "worker_rss_mb_samples": [round(m) for m in memory[:: max(1, len(memory) // 20)]],
        },
        "overload": {
            "offered_rps": round(2 * capacity, 1),
            "seconds": round(overload_s, 1),
            "requests": sum(overload.statuses.values()),
            "statuses": {str(k): v for k, v in overload.statuses.items()},
            "errors_without_json_body": overload.bad_bodies,
            "served_rps": round(len(overload.finished) / overload_s, 1),
            "answered_rps": round(len(overload.answered) / overload_s, 1),
            "health_probes": dict(probes),
        },
        "recovery": {"per_second": seconds, "seconds_to_80_percent": recovered},
    }


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
    if any(not key.endswith(" 200") for key in overload["health_probes"]):
        found.append(f"health probes failed: {overload['health_probes']}")
    recovered = report["recovery"]["seconds_to_80_percent"]
    if recovered is None or recovered > 10:
        found.append(f"throughput did not recover within 10 s: {report['recovery']}")
    return found


def main(args: argparse.Namespace) -> int:
    scratch = Path(tempfile.mkdtemp(prefix="seqserve-load-"))
    home = args.home
    if home is None:
        from tests.conftest import BENTOML_HOME, build_tiny_models  # a throw-away store

        build_tiny_models()
        home = BENTOML_HOME
    env = {"SEQSERVE_MAX_IN_FLIGHT": str(args.max_in_flight), "SEQSERVE_TORCH_THREADS": "0"}
    server = ServeProcess.start(home, scratch / "serve.log", env)
    try:
        server.wait_ready()
        report = asyncio.run(run_phases(server, args))
        report["server_log_500s"] = server.log_text().count("status=500")
    finally:
        server.stop()
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
