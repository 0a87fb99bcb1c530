"""The HTTP side of `bench.serving`: the servers started (ours and the plain one, each beside its
framework ceiling: the same stack with no model work), and one cell of closed-loop load."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
from pathlib import Path
from typing import Any

import httpx

from bench import common
from harness.load import Request, caption_request, closed_loop, translate_request
from harness.server import Server, free_port

SIDES = ("bentoml", "simple", "bentoml_noop", "bentoml_noop_bare", "simple_noop")
# the servers with models, and the framework ceiling each one's throughput is combined with
CEILING_OF = {"bentoml": "bentoml_noop", "simple": "simple_noop"}
NOOP_TARGETS = {  # bench/serving_noop.py: our middleware on, and off
    "bentoml_noop": "bench.serving_noop:NoopServe",
    "bentoml_noop_bare": "bench.serving_noop:BareNoopServe",
}


def start_servers(
    args: argparse.Namespace, dirs: dict[str, Path], workdir: Path, stack: contextlib.ExitStack
) -> dict[str, Server]:
    """Every side's server, in SIDES order, each ready (every worker) and stopped with `stack`."""
    home = workdir / "bentoml"
    common.make_store(dirs, home)
    service_env = dict(kv.split("=", 1) for kv in args.service_env)
    service_env.update(BENTOML_HOME=str(home), SEQSERVE_DEVICE=args.device)
    if args.device == "cpu":
        service_env.setdefault("SEQSERVE_GPUS", "0")

    def ready(server: Server) -> Server:  # one at a time: each start is timed alone
        stack.enter_context(server).wait_ready()
        return server

    servers = {"bentoml": ready(Server.bentoml(home, workdir / "bentoml.log", service_env))}
    servers["simple"] = ready(
        common.simple_server(
            dirs, workdir / "simple.log", args.device, args.autocast, args.simple_threads
        )
    )
    for side, target in NOOP_TARGETS.items():
        log = workdir / f"{side}.log"
        servers[side] = ready(Server.bentoml(home, log, service_env, target=target, name=side))
    servers["simple_noop"] = ready(simple_noop_server(dirs, workdir / "simple_noop.log"))
    return servers


def simple_noop_server(dirs: dict[str, Path], log: Path) -> Server:
    """bench/simple_server.py --noop: the plain server's framework ceiling."""
    port = free_port()
    command = [
        sys.executable, "-m", "bench.simple_server", "--noop", "--port", str(port),
        "--captioner", str(dirs["captioner"]), "--translator", str(dirs["translator"]),
    ]  # fmt: skip
    return Server.start("simple_noop", command, port, log, ready_path="/healthz")


def requests_for(endpoint: str, count: int) -> list[Request]:
    """Greedy requests with the service's defaults: the 640x480 JPEG, or one test sentence each."""
    if endpoint == "caption":
        return [caption_request(common.image_bytes(), filename="house.jpg")]
    return [translate_request([sentence]) for sentence in common.sentences(count)]


def batch_rows(url: str) -> tuple[float, float]:
    """Sum and count of the service's seqserve_batch_rows histogram (all labels)."""
    return histogram_totals(url, "seqserve_batch_rows")


def histogram_totals(url: str, name: str) -> tuple[float, float]:
    """Sum and count of one of the service's histograms, over all its labels."""
    total = count = 0.0
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(f"{name}_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def run_cell(server: Server, endpoint: str, clients: int, args: argparse.Namespace) -> dict:
    """`clients` closed-loop clients for --warmup + --duration s; throughput counts the answers
    that arrive in the measured window, latencies are theirs; with our service, the mean batch."""
    before = batch_rows(server.url) if server.name == "bentoml" else None
    requests = requests_for(endpoint, 512)
    answers = asyncio.run(closed_loop(server.url, requests, clients, args.warmup + args.duration))
    measured_from = answers.started + args.warmup
    result = answers.between(measured_from, measured_from + args.duration).summary(args.duration)
    if before is not None:
        after = batch_rows(server.url)
        batches = after[1] - before[1]
        result["mean_batch"] = (after[0] - before[0]) / batches if batches else None
    result["load_average"] = common.load_average()[0]
    return result


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
