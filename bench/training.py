"""Training throughput: samples per second of both default presets on this machine.

Usage: python -m bench.training [--steps 60] [--skip 10] [--repeats 1] [--out bench/results/training.json]

Runs `python -m training.train_<kind> --preset default` for `--steps` optimizer steps into a
temporary run folder (logging every step, validation on loss only so no decoding is timed), and
reads the step times back from metrics.jsonl: the loop logs each step's target tokens and the
tokens/s since the epoch began, so the time at step k is tokens_k / (tokens/s)_k. The first
`--skip` steps (allocator and thread-pool warm-up) are left out. Presets alternate per repeat.
The captioner trains on cached encoder features (runs/cache), as the preset does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common

PRESETS = ("captioner", "translator")


def get_args_parser() -> argparse.ArgumentParser:
    parser = common.argument_parser(__doc__)
    parser.add_argument(
        "--steps", type=int, default=60, help="optimizer steps per run (default: 60)"
    )
    parser.add_argument(
        "--skip", type=int, default=10, help="first steps left out of the rate (default: 10)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per preset (default: 1)")
    parser.add_argument(
        "--preset", default="default", help="preset of both trainers (default: default)"
    )
    parser.add_argument(
        "--extra",
        nargs="*",
        default=[],
        help="more trainer flags for both, e.g. --threads 2 (default: none)",
    )
    common.add_out_argument(parser, "training.json")
    return parser


def train_once(kind: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One bounded run; samples/s and tokens/s over steps skip+1 .. steps."""
    name = f"bench_{kind}"
    command = [
        sys.executable, "-m", f"training.train_{kind}", "--preset", args.preset,
        "--name", name, "--output-dir", str(workdir), "--max-steps", str(args.steps),
        "--time-limit-min", "0", "--log-every", "1", "--select-metric", "loss", "--no-progress",
        *args.extra,
    ]  # fmt: skip
    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{name}.log"
    with log.open("wb") as sink:
        done = subprocess.run(command, cwd=common.ROOT, stdout=sink, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{log.read_text()[-3000:]}")
    run_dir = workdir / name
    settings = json.loads((run_dir / "settings.json").read_text())
    steps = [
        r
        for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if "tokens_per_s" in r
    ]
    first_epoch = [r for r in steps if r["epoch"] == steps[0]["epoch"]]
    if len(first_epoch) <= args.skip + 1:
        raise RuntimeError(f"{kind}: only {len(first_epoch)} steps logged in the first epoch")
    cumulative, elapsed = 0, []
    for record in first_epoch:
        cumulative += record["tokens"]
        elapsed.append((cumulative, cumulative / record["tokens_per_s"]))
    (tokens_a, time_a), (tokens_b, time_b) = elapsed[args.skip - 1], elapsed[-1]
    measured = len(first_epoch) - args.skip
    seconds = time_b - time_a
    return {
        "samples_per_s": measured * settings["batch_size"] / seconds,
        "tokens_per_s": (tokens_b - tokens_a) / seconds,
        "step_s": seconds / measured,
        "steps_timed": measured,
        "batch_size": settings["batch_size"],
        "threads": settings["threads"],
        "wall_s_incl_setup_and_validation": wall,
        "load_average": common.load_average()[0],
        "command": " ".join(command[1:]),
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    report = common.environment(steps=args.steps, skip=args.skip, preset=args.preset)
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in PRESETS}
    with tempfile.TemporaryDirectory(prefix="seqserve-bench-train-") as tmp:
        for repeat in range(args.repeats):
            for kind in PRESETS if repeat % 2 == 0 else PRESETS[::-1]:
                run = train_once(kind, args, Path(tmp) / str(repeat))
                runs[kind].append(run)
                print(
                    f"[{repeat}] {kind}: {run['samples_per_s']:.1f} samples/s, "
                    f"{run['tokens_per_s']:.0f} tokens/s, {run['step_s'] * 1000:.0f} ms/step "
                    f"(load {run['load_average']})",
                    flush=True,
                )
    report["presets"] = {
        kind: {**common.medians(v, ("samples_per_s", "tokens_per_s", "step_s")), "runs": v}
        for kind, v in runs.items()
    }
    common.write_report(report, args.out)
    rows = [
        [
            f"{kind} {args.preset}", f"{p['samples_per_s']:.1f}", f"{p['tokens_per_s']:.0f}",
            f"{p['step_s'] * 1000:.0f}", p["runs"][0]["batch_size"], p["runs"][0]["threads"],
            f"{max(r['load_average'] for r in p['runs']):.2f}",
        ]
        for kind, p in report["presets"].items()
    ]  # fmt: skip
    header = ("preset", "samples/s", "tokens/s", "ms/step", "batch", "threads", "load")
    common.print_table(header, rows)
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
