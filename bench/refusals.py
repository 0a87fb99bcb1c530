"""What a refusal at the door costs the worker, over real HTTP.

One worker with SEQSERVE_MAX_IN_FLIGHT=1 whose one slot is held by a translation whose body never
comes, so that every API call is refused with 429 at the door (service/admission.py); closed-loop
clients send captions (`bench.serving`'s 640x480 JPEG upload) or translations, and, beside
them, GET /livez, which passes through BentoML's whole middleware stack and answers at once: the
cheapest answer the same server gives. Per cell: answers/s, the statuses, and the worker's CPU time
an answer (psutil, all its threads), the cells alternating over rounds. Tiny models (no model work
happens). The load client shares the machine with the server.

Usage: python -m bench.refusals [--rounds 2] [--seconds 8] [--clients 8]
       [--out bench/results/refusals.json]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench import common
from harness.load import Request, caption_request, closed_loop, translate_request
from harness.server import Server, cpu_seconds

# the headers of a translation and the start of its body: the door admits it, and it holds the
# worker's one slot while BentoML waits for the rest
HOLD = (
    b"POST /translate HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    b"Content-Length: 1000\r\n\r\n" + b'{"sentences"'
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=2, help="rounds (default: 2)")
    parser.add_argument("--seconds", type=float, default=8, help="s a cell (default: 8)")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients (default: 8)")
    common.add_out_argument(parser, "refusals.json")
    return parser


def cells() -> dict[str, Request]:
    options = {"max_length": 12}
    return {
        "caption, refused": caption_request(common.image_bytes(), options),
        "translate, refused": translate_request(["the cat sits on the mat ."], options),
        "GET /livez": Request("/livez", b"", "text/plain", method="GET"),
    }


async def measure(
    url: str, worker: psutil.Process, request: Request, args: argparse.Namespace
) -> dict[str, Any]:
    cpu, started = cpu_seconds(worker), time.perf_counter()
    tally = await closed_loop(url, [request], args.clients, args.seconds)
    cpu, wall = cpu_seconds(worker) - cpu, time.perf_counter() - started
    answers = len(tally.answers)
    return {
        "statuses": {str(k): v for k, v in tally.statuses().items()},
        "answers_per_s": round(answers / wall, 1),
        "worker_cpu_ms_an_answer": round(1000 * cpu / answers, 4),
        "worker_cores": round(cpu / wall, 2),
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    report = common.environment(command_args={**vars(args), "out": str(args.out)})
    found: dict[str, list[dict]] = {name: [] for name in cells()}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        home = tmp / "home"
        common.make_store(common.model_dirs("tiny", tmp), home)
        env = {"SEQSERVE_WORKERS": "1", "SEQSERVE_DEVICE": "cpu", "SEQSERVE_MAX_IN_FLIGHT": "1"}
        with Server.bentoml(home, tmp / "serve.log", env) as server:
            server.wait_ready()
            host, port = server.url.rsplit("//", 1)[1].split(":")
            with socket.create_connection((host, int(port))) as hold:
                hold.sendall(HOLD)
                time.sleep(1)  # the door has counted it in
                worker = server.worker()
                for round_ in range(args.rounds):
                    names = list(found) if round_ % 2 == 0 else list(found)[::-1]
                    for name in names:
                        cell = asyncio.run(measure(server.url, worker, cells()[name], args))
                        found[name].append(cell)
                        print(f"[{round_}] {name}: {cell}", flush=True)
    rows = [
        [
            name,
            " / ".join(str(c["answers_per_s"]) for c in runs),
            f"{statistics.median(c['worker_cpu_ms_an_answer'] for c in runs):.3f}",
            ", ".join(sorted({s for c in runs for s in c["statuses"]})),
        ]
        for name, runs in found.items()
    ]
    common.print_table(["call", "answers/s (rounds)", "worker CPU ms an answer", "statuses"], rows)
    report.update(load_average=common.load_average()[0], cells=found)
    common.write_report(report, args.out)
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
