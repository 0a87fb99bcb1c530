"""What a busy Python thread beside it does to the translator's batches, in one process: the
service's situation, where the event loop (HTTP parsing, validation, responses) and the batch
worker share one interpreter lock.

The decoding loop is Python between small torch calls, and torch lets go of the lock in every
call; when another thread wants the lock, each call's end waits for it to come back. This runs
batches of 8 consecutive test sentences on a thread with one torch thread (as `bench.serving`'s
limit does), alone and beside a thread that runs pure Python (JSON round trips) in 1 ms chunks,
busy a given share of the time and asleep the rest, and reports each batch's wall time and the
batch thread's own CPU time (`time.thread_time`). The busy shares alternate within each round.

`--switch-ms` sets the interpreter's switch interval (`sys.setswitchinterval`; Python's default
is 5 ms), how long a thread waiting for the lock lets the holder run before asking for it.

Usage: python -m bench.gil [--models pretrained] [--busy 0 0.5 1] [--batches 40] [--rounds 3]
       [--switch-ms 5] [--out bench/results/gil.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from bench import common, serving_limit
from models.checkpoint import load_model

BATCH = 8
CHUNK_S = 0.001  # one chunk of the Python thread's work
DOCUMENT = {"sentences": ["the cat sits on the mat ."] * 4, "numbers": list(range(50))}


def get_args_parser() -> argparse.ArgumentParser:
    parser = common.argument_parser(__doc__)
    common.add_models_argument(parser)
    parser.add_argument(
        "--busy", type=float, nargs="+", default=[0.0, 0.5, 1.0],
        help="shares of the time the Python thread runs (default: 0 0.5 1)",
    )  # fmt: skip
    parser.add_argument("--batches", type=int, default=40, help="batches a cell (default: 40)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default: 3)")
    parser.add_argument(
        "--switch-ms", type=float, default=5.0, help="the switch interval, ms (default: 5)"
    )
    parser.add_argument("--out", type=Path, default=common.RESULTS / "gil.json")
    return parser


def python_work(busy: float, stop: threading.Event) -> None:
    """Pure Python in CHUNK_S chunks, asleep between them for the rest of the share."""
    while not stop.is_set():
        started = time.perf_counter()
        while time.perf_counter() - started < CHUNK_S:
            json.loads(json.dumps(DOCUMENT))
        if busy < 1:
            time.sleep(CHUNK_S * (1 - busy) / busy)


def batches(work: serving_limit.Work, sentences: list[str], count: int) -> dict[str, float]:
    """Mean wall and CPU milliseconds of `count` batches, on the calling thread."""
    torch.set_num_threads(1)
    work(sentences[:BATCH])  # warm-up
    walls, cpus = [], []
    for i in range(count):
        chosen = [sentences[(BATCH * i + j) % len(sentences)] for j in range(BATCH)]
        wall, cpu = time.perf_counter(), time.thread_time()
        work(chosen)
        cpus.append(1000 * (time.thread_time() - cpu))
        walls.append(1000 * (time.perf_counter() - wall))
    return {"wall_ms": statistics.mean(walls), "cpu_ms": statistics.mean(cpus)}


def cell(work: serving_limit.Work, sentences: list[str], busy: float, count: int) -> dict:
    """Batches on a thread of their own, beside the Python thread when `busy` > 0."""
    stop, found = threading.Event(), {}
    neighbour = threading.Thread(target=python_work, args=(busy, stop)) if busy > 0 else None
    if neighbour is not None:
        neighbour.start()
    runner = threading.Thread(target=lambda: found.update(batches(work, sentences, count)))
    runner.start()
    runner.join()
    stop.set()
    if neighbour is not None:
        neighbour.join()
    return found


def main(args: argparse.Namespace) -> dict[str, Any]:
    report = common.environment(command_args={**vars(args), "out": str(args.out)})
    sys.setswitchinterval(args.switch_ms / 1000)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_model(common.model_dirs(args.models, Path(tmp))["translator"], device)
    work = serving_limit.inprocess_work("translate", loaded, device, "none")
    sentences = common.sentences(512)
    cells: dict[float, list[dict]] = {busy: [] for busy in args.busy}
    for round_ in range(args.rounds):
        for busy in args.busy if round_ % 2 == 0 else args.busy[::-1]:
            # a thread that never sleeps holds each torch call's end for a switch interval
            count = args.batches if busy < 1 else max(2, args.batches // 10)
            cells[busy].append(cell(work, sentences, busy, count))
            print(f"[{round_}] busy {busy:.0%}: {cells[busy][-1]}", flush=True)
    rows = [
        [
            f"{busy:.0%}",
            " / ".join(f"{c['wall_ms']:.1f}" for c in found),
            " / ".join(f"{c['cpu_ms']:.1f}" for c in found),
        ]
        for busy, found in cells.items()
    ]
    common.print_table(["Python thread busy", "wall ms a batch (rounds)", "CPU ms a batch"], rows)
    report.update(batch=BATCH, load_average=common.load_average()[0], cells=cells)
    common.write_report(report, args.out)
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
