"""Before/after of a change to models/search.py: bench.decode's cells with the searches (greedy
and sampled, beam) of a given git revision against the working tree's, alternating.

Usage: python -m bench.search_ab [--rev 50e6326] [--batches 16 64] [--repeats 2]
       [--out bench/results/search_ab.json]
The old module is loaded from `git show REV:models/search.py` and its SWAPPED functions stand in
for the working tree's (those it has; `decode` itself stays the working tree's). Each cell first
counts the inputs whose hypotheses differ between the two sides (0 for a pure speed change).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

import models.search as current
from bench import common, decode
from models.checkpoint import LoadedModel, load_model
from models.search import Hypothesis, SearchOptions

KEYS = (
    "greedy",
    "beam5",
    "beam5_one_at_a_time",
    "beam5_over_greedy",
    "batched_beam_speedup",
    "beam5_cpu",
    "beam5_one_at_a_time_cpu",
    "batched_beam_speedup_cpu",
)
SWAPPED = ("sequential_search", "beam_search", "_constrain")
CHECKS = (  # what `differing_inputs` compares: n-best, length penalty, the n-gram block
    decode.GREEDY,
    SearchOptions("sample", n_best=3, max_length=30, seed=5, top_k=20),
    SearchOptions("greedy", max_length=30, no_repeat_ngram_size=2),
    decode.BEAM,
    SearchOptions("beam", beam_size=5, n_best=5, max_length=30, length_penalty=0.6),
    SearchOptions("beam", beam_size=3, n_best=3, max_length=20, no_repeat_ngram_size=3),
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--rev", default="50e6326", help="the 'before' revision (default: 50e6326)")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64], help="(default: 16 64)")
    parser.add_argument("--repeats", type=int, default=2, help="repeats per side (default: 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    common.add_out_argument(parser, "search_ab.json")
    return parser


def module_at(rev: str, workdir: Path) -> Any:
    """models/search.py as it was at `rev`, imported under another name."""
    source = subprocess.run(
        ["git", "show", f"{rev}:models/search.py"],
        cwd=common.ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = workdir / "search_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("search_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["search_before"] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


def main(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    report = common.environment(rev=args.rev, threads=args.threads, results={})
    with tempfile.TemporaryDirectory(prefix="seqserve-bench-") as tmp:
        before = module_at(args.rev, Path(tmp))
        names = [name for name in SWAPPED if hasattr(before, name)]
        sides = {
            "before": {name: getattr(before, name) for name in names},
            "after": {name: getattr(current, name) for name in names},
        }
        dirs = common.model_dirs("pretrained", Path(tmp))
        try:
            for kind in ("captioner", "translator"):
                loaded = load_model(dirs[kind])
                for batch in args.batches:
                    changed = differing_inputs(kind, loaded, batch, sides)
                    report["results"][f"{kind}/{batch}/differing_inputs"] = changed
                    print(f"{kind:<10} {batch:>3} inputs whose hypotheses differ: {changed}")
                    for side, r in timed_sides(kind, loaded, batch, sides, args.repeats).items():
                        report["results"][f"{kind}/{batch}/{side}"] = r
                        print(
                            f"{kind:<10} {batch:>3} {side:<6} greedy {r['greedy']:.4f} s "
                            f"beam5 {r['beam5']:.4f} s 1-by-1 {r['beam5_one_at_a_time']:.4f} s "
                            f"beam/greedy {r['beam5_over_greedy']:.2f} "
                            f"speed-up {r['batched_beam_speedup']:.1f} | CPU beam5 "
                            f"{r['beam5_cpu']:.4f} s 1-by-1 {r['beam5_one_at_a_time_cpu']:.4f} s "
                            f"speed-up {r['batched_beam_speedup_cpu']:.1f} "
                            f"(load {max(r['load_average'])})",
                            flush=True,
                        )
        finally:
            use(sides["after"])
    common.write_report(report, args.out)
    return report


def use(functions: dict[str, Any]) -> None:
    """Put one side's search functions in models.search."""
    for name, function in functions.items():
        setattr(current, name, function)


def timed_sides(
    kind: str, loaded: LoadedModel, batch: int, sides: dict[str, dict[str, Any]], repeats: int
) -> dict[str, dict[str, Any]]:
    """bench.decode's cell for each side, the sides alternating (and swapping order) per repeat;
    medians, and the load average of each repeat."""
    cell_args = argparse.Namespace(repeats=1, device="cpu", autocast="none")
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for repeat in range(repeats):
        for side in list(sides) if repeat % 2 == 0 else list(sides)[::-1]:
            use(sides[side])
            runs[side].append(decode.measure(kind, loaded, batch, cell_args))
    results = {}
    for side, cells in runs.items():
        results[side] = {k: statistics.median(c[k] for c in cells) for k in KEYS}
        results[side]["load_average"] = [c["load_average"] for c in cells]
    return results


def differing_inputs(
    kind: str, loaded: LoadedModel, batch: int, sides: dict[str, dict[str, Any]]
) -> int:
    """How many of the cell's inputs get hypotheses from the two sides that are not bit for bit
    the same (tokens, scores, token log-probabilities, attention), over the CHECKS options."""
    run = decode.decoders(kind, loaded, batch, torch.device("cpu"), "none")
    found = {}
    for side, functions in sides.items():
        use(functions)
        found[side] = [row for options in CHECKS for row in run(options, slice(0, batch))]
    return sum(not _identical(a, b) for a, b in zip(found["before"], found["after"], strict=True))


def _identical(a: list[Hypothesis], b: list[Hypothesis]) -> bool:
    def fields(h: Hypothesis) -> tuple:
        return h.tokens, h.score, h.log_prob, h.token_log_probs, h.truncated

    return len(a) == len(b) and all(
        fields(x) == fields(y)
        and (x.attention is None) == (y.attention is None)
        and (x.attention is None or torch.equal(x.attention, y.attention))
        for x, y in zip(a, b, strict=False)
    )


if __name__ == "__main__":
    main(get_args_parser().parse_args())
