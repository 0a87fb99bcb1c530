"""Serving throughput and latency over real HTTP: our BentoML service vs the in-process limit vs
a plain FastAPI server, for captions and translations at several concurrencies, each server beside
its framework ceiling: the same server with routes that do no model work (bench/serving_noop.py,
with our middleware on and off; bench/simple_server.py --noop).

Usage: python -m bench.serving [--models pretrained] [--concurrency 1 8 32 64] [--duration 8]
       [--repeats 2] [--out bench/results/serving.json]

Both servers run as their own processes; the load comes from this process (the harness's aiohttp
client, one greedy request per call: a 640x480 JPEG, or one English test sentence). The limit is
the same models called in this process on pre-batched inputs (decoding and preprocessing
included, no HTTP, best of several batch sizes). Each server with models is also reported as a
fraction of its combined limit 1 / (1/a + 1/b): a the all-cores limit, b its framework ceiling at
the same concurrency. Sides alternate within each repeat; medians are reported. Prints a markdown
table, writes JSON and a PNG plot of throughput against concurrency.
Parts: bench/serving_limit.py, bench/serving_load.py, bench/serving_report.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench import common, serving_limit, serving_load, serving_report
from models.checkpoint import load_model

ENDPOINTS = ("caption", "translate")
MODEL_OF = {"caption": "captioner", "translate": "translator"}


def get_args_parser() -> argparse.ArgumentParser:
    parser = common.argument_parser(__doc__)
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
    common.add_out_argument(parser, "serving.json", "; the plot goes beside it as .png")
    return parser


def describe_limit(repeat: int, endpoint: str, limit: dict[str, Any]) -> str:
    return (
        f"[{repeat}] {endpoint} limit {limit['one_process']:.1f}/s at batch "
        f"{limit['best_batch']} ({limit['placement']}), "
        f"{limit.get('parallel', float('nan')):.1f}/s in {limit.get('processes')} processes, "
        f"single {limit['single_ms']['p50']:.1f} ms ({limit['single_placement']}) "
        f"(load {limit['load_average']})"
    )


def describe_cell(repeat: int, endpoint: str, c: int, side: str, cell: dict[str, Any]) -> str:
    return (
        f"[{repeat}] {endpoint} c={c} {side}: {cell['throughput']:.1f}/s "
        f"p99 {cell['latency_ms'].get('p99', float('nan')):.0f} ms "
        f"errors {cell['errors']} batch {cell.get('mean_batch')} (load {cell['load_average']})"
    )


def measure(
    args: argparse.Namespace, dirs: dict[str, Path], workdir: Path, report: dict[str, Any]
) -> tuple[dict[str, list[dict]], dict[str, dict[str, dict[int, list[dict]]]]]:
    """Every repeat: per endpoint, the limit, then each concurrency on both servers (who goes
    first alternates). Returns the limits and the cells, unmerged."""
    device = torch.device(args.device)
    loaded = {e: load_model(dirs[MODEL_OF[e]], device) for e in args.endpoints}
    inputs = {
        "caption": [common.image_bytes()] * max(args.batches),
        "translate": common.sentences(512),
    }
    limits: dict[str, list[dict]] = {e: [] for e in args.endpoints}
    cells: dict[str, dict[str, dict[int, list[dict]]]] = {
        e: {s: {c: [] for c in args.concurrency} for s in serving_load.SIDES}
        for e in args.endpoints
    }
    with contextlib.ExitStack() as stack:
        servers = serving_load.start_servers(args, dirs, workdir, stack)
        report["start_s"] = {name: round(s.start_s, 2) for name, s in servers.items()}
        for repeat in range(args.repeats):
            for endpoint in args.endpoints:
                limit = serving_limit.endpoint_limit(
                    endpoint, loaded[endpoint], dirs[MODEL_OF[endpoint]], inputs[endpoint],
                    args.batches, device, args.autocast,
                )  # fmt: skip
                limits[endpoint].append(limit)
                print(describe_limit(repeat, endpoint, limit), flush=True)
                for c in args.concurrency:
                    sides = serving_load.SIDES if repeat % 2 == 0 else serving_load.SIDES[::-1]
                    for side in sides:
                        cell = serving_load.run_cell(servers[side], endpoint, c, args)
                        cells[endpoint][side][c].append(cell)
                        print(describe_cell(repeat, endpoint, c, side, cell), flush=True)
        report["memory_after"] = {name: s.memory() for name, s in servers.items()}
    return limits, cells


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # what the service uses by default
    dirs = common.model_dirs(args.models, workdir)
    report = common.environment(
        models={k: str(v) for k, v in dirs.items()},
        settings={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        torch_threads=torch.get_num_threads(),
    )
    limits, cells = measure(args, dirs, workdir, report)
    report["limit"] = {e: serving_limit.summarize_limit(v) for e, v in limits.items()}
    report["http"] = {
        e: {
            s: {c: serving_load.median_cells(v) for c, v in by_c.items()}
            for s, by_c in by_side.items()
        }
        for e, by_side in cells.items()
    }
    report["ratios"] = serving_report.ratios(report)
    return report


def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="seqserve-bench-") as tmp:
        report = run(args, Path(tmp))
    common.write_report(report, args.out)
    serving_report.print_table(report)
    serving_report.plot(report, args.out.with_suffix(".png"))
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
