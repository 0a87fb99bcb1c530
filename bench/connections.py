"""How keep-alive connections spread over the service's workers, with a maximum connection age
(SEQSERVE_MAX_CONNECTION_AGE_S, service/connections.py) and without.

BentoML's workers share one listening socket and a connection stays with the worker that accepted
it, so clients that connect together can all land on one worker. This starts a server per run
(a fresh start is where the split is decided) for each age in turn, `--repeats` rounds, runs
closed-loop clients against it and records the answers per second and how many established
connections each worker held (`ss -tnp`) 3 s and `--duration` s into the run. `--server noop` is
bench/serving_noop.py (our HTTP stack and middleware, no model work); `service` is the service
with the shipped models.

Usage: python -m bench.connections [--server noop|service] [--endpoint translate|caption]
       [--clients 32] [--repeats 5] [--ages 5 0] [--out bench/results/connections.json]
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.serving_load import requests_for
from harness.load import closed_loop
from harness.server import Server

SPLIT_AFTER_S = 3.0  # into a run: every client connected, ages not yet reached
TARGETS = {"noop": "bench.serving_noop:NoopServe", "service": "service.service:SeqServe"}


def connections_per_worker(port: int) -> list[int]:
    """Established connections on `port`, counted per owning process, fewest first."""
    listing = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(collections.Counter(re.findall(r"pid=(\d+)", listing)).values())


def run_once(server: Server, endpoint: str, clients: int, warmup: float, duration: float) -> dict:
    """One closed-loop run: answers per second in the measured window, p50, and the split."""
    port = int(server.url.rsplit(":", 1)[1])
    splits: list[list[int]] = []

    def sample() -> None:
        time.sleep(SPLIT_AFTER_S)
        splits.append(connections_per_worker(port))
        time.sleep(warmup + duration - SPLIT_AFTER_S - 0.5)
        splits.append(connections_per_worker(port))

    sampler = threading.Thread(target=sample)
    sampler.start()
    answers = asyncio.run(
        closed_loop(server.url, requests_for(endpoint, 512), clients, warmup + duration)
    )
    sampler.join()
    start = answers.started + warmup
    result = answers.between(start, start + duration).summary(duration)
    return {
        "throughput": round(result["throughput"], 1),
        "p50_ms": round(result["latency_ms"]["p50"], 1),
        "connections_per_worker": splits,
        "errors": result["errors"],
        "load_average": common.load_average()[0],
    }


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--server", choices=tuple(TARGETS), default="noop")
    parser.add_argument("--endpoint", choices=("translate", "caption"), default="translate")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds a run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--ages", type=float, nargs="+", default=[5.0, 0.0], help="MAX_CONNECTION_AGE_S values"
    )
    common.add_out_argument(parser, "connections.json")
    args = parser.parse_args()
    report = common.environment(command_args={**vars(args), "out": str(args.out)})
    runs: dict[float, list[dict[str, Any]]] = {age: [] for age in args.ages}
    with tempfile.TemporaryDirectory(prefix="seqserve-connections-") as workdir:
        home = Path(workdir) / "bentoml"
        if args.server == "service":
            common.make_store(common.model_dirs("pretrained", Path(workdir)), home)
        else:
            (home / "models").mkdir(parents=True)
        for round_ in range(args.repeats):
            for age in args.ages:
                env = {"SEQSERVE_DEVICE": "cpu", "SEQSERVE_GPUS": "0"}
                env["SEQSERVE_MAX_CONNECTION_AGE_S"] = str(age)
                log = Path(workdir) / f"{args.server}_{age}.log"
                with contextlib.ExitStack() as stack:
                    server = Server.bentoml(home, log, env, target=TARGETS[args.server])
                    stack.enter_context(server).wait_ready()
                    found = run_once(
                        server, args.endpoint, args.clients, args.warmup, args.duration
                    )
                runs[age].append(found)
                print(f"[{round_}] age {age} s: {found}", flush=True)
    rows, summary = [], {}
    for age, found in runs.items():
        rates = [r["throughput"] for r in found]
        summary[str(age)] = {
            "median": statistics.median(rates),
            "min": min(rates),
            "max": max(rates),
        }
        splits = ", ".join(
            " -> ".join("/".join(map(str, split)) for split in r["connections_per_worker"])
            for r in found
        )
        rate_range = f"{min(rates):.0f}-{max(rates):.0f}"
        rows.append([age or "off", f"{statistics.median(rates):.0f}", rate_range, splits])
    common.print_table(
        ["max age s", "answers/s median", "range", "connections per worker (3 s -> end)"], rows
    )
    report.update(runs={str(age): found for age, found in runs.items()}, summary=summary)
    common.write_report(report, args.out)


if __name__ == "__main__":
    main()
