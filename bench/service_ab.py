"""Before/after of a service change over HTTP: the service of a git revision (checked out into a
temporary worktree) against this working tree's, each started fresh for every round in turn
(alternating which goes first), the same closed-loop clients, the shipped models.

Per side and client count: answers/s, p50 and p99 latency and the mean batch, medians over the
rounds, and every round's figures. A fresh server per round matters: which worker each keep-alive
connection lands on is decided as the clients connect (bench/README.md, "Connections on one
worker").

`--before-env` / `--after-env NAME=VALUE ...` add environment variables to one side's server:
with `--rev HEAD` that compares two settings of the same code.

Usage: python -m bench.service_ab [--rev HEAD] [--endpoint translate|caption]
       [--concurrency 1 32] [--rounds 5] [--duration 10] [--before-env SEQSERVE_X=1 ...]
       [--after-env ...] [--out bench/results/service_ab.json]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench import common
from bench.serving_load import run_cell
from harness.server import Server

SIDES = ("before", "after")


def get_args_parser() -> argparse.ArgumentParser:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--rev", default="HEAD", help="the 'before' revision (default: HEAD)")
    parser.add_argument("--endpoint", choices=("translate", "caption"), default="translate")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=5, help="servers per side (default: 5)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured s (default: 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="s before each (default: 2)")
    for side in SIDES:
        parser.add_argument(
            f"--{side}-env", nargs="*", default=[], metavar="NAME=VALUE",
            help=f"environment variables for the {side} side's server",
        )  # fmt: skip
    common.add_out_argument(parser, "service_ab.json")
    return parser


@contextlib.contextmanager
def worktree(rev: str, parent: Path):
    """`rev` checked out (detached) under `parent`; removed afterwards."""
    path = parent / "before"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(path), rev], check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], check=False)


def main(args: argparse.Namespace) -> dict[str, Any]:
    rev = subprocess.run(
        ["git", "rev-parse", "--short", args.rev], capture_output=True, text=True, check=True
    ).stdout.strip()
    report = common.environment(rev=rev, command_args={**vars(args), "out": str(args.out)})
    runs: dict[str, dict[int, list[dict]]] = {s: {c: [] for c in args.concurrency} for s in SIDES}
    with (
        tempfile.TemporaryDirectory(prefix="seqserve-service-ab-") as tmp,
        worktree(args.rev, Path(tmp)) as before,
    ):
        home = Path(tmp) / "bentoml"
        common.make_store(common.model_dirs("pretrained", Path(tmp)), home)
        places = {"before": before, "after": common.ROOT}
        env = {"SEQSERVE_DEVICE": "cpu", "SEQSERVE_GPUS": "0"}
        extra = {side: _variables(getattr(args, f"{side}_env")) for side in SIDES}
        for round_ in range(args.rounds):
            for side in SIDES if round_ % 2 == 0 else SIDES[::-1]:
                log = Path(tmp) / f"{side}_{round_}.log"
                side_env = {**env, **extra[side]}
                with Server.bentoml(home, log, side_env, working_dir=places[side]) as server:
                    server.wait_ready()
                    for clients in args.concurrency:
                        found = run_cell(server, args.endpoint, clients, args)
                        runs[side][clients].append(found)
                        print(
                            f"[{round_}] {side} c={clients}: {found['throughput']:.1f}/s, "
                            f"p50 {found['latency_ms']['p50']:.2f} ms, "
                            f"batch {found.get('mean_batch') or 0:.2f}",
                            flush=True,
                        )
    rows, summary = [], {}
    for clients in args.concurrency:
        for side in SIDES:
            found = runs[side][clients]
            rates = [r["throughput"] for r in found]
            medians = {
                "throughput": statistics.median(rates),
                "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in found),
                "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in found),
                "mean_batch": statistics.median(r.get("mean_batch") or 0 for r in found),
            }
            summary[f"{side}_c{clients}"] = medians
            rows.append([
                clients, side, f"{medians['throughput']:.1f}",
                ", ".join(f"{rate:.0f}" for rate in rates), f"{medians['p50_ms']:.2f}",
                f"{medians['p99_ms']:.2f}", f"{medians['mean_batch']:.2f}",
            ])  # fmt: skip
    common.print_table(
        ["clients", "side", "answers/s", "rounds", "p50 ms", "p99 ms", "mean batch"], rows
    )
    report.update(
        runs={s: {str(c): r for c, r in by.items()} for s, by in runs.items()}, summary=summary
    )
    common.write_report(report, args.out)
    return report


def _variables(pairs: list[str]) -> dict[str, str]:
    """["NAME=VALUE", ...] -> {NAME: VALUE}; exits naming a pair without "="."""
    bad = [pair for pair in pairs if "=" not in pair]
    if bad:
        raise SystemExit(f"service_ab: expected NAME=VALUE, got {bad[0]!r}")
    return dict(pair.split("=", 1) for pair in pairs)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
