"""The translator's sentence encoder on the CPU: packed rows (nn.LSTM's loop over unequal lengths)
against the padded batch in one oneDNN call per direction (`RecurrentCore.outputs_and_final_h`),
alternating, on the test sentences, one torch thread.

Two tables: milliseconds a batch at each batch size (consecutive sentences, the service's mix;
`outputs_and_final_h` as it stands, which packs batches that are mostly padding), and, over
random batches, the packed/unpacked time ratio by the batch's fill (real steps / padded steps),
both forced: where that ratio crosses 1 is where `_UNPACKED_FILL` in models/recurrent.py belongs.

Usage: python -m bench.encode [--models pretrained] [--batches 1 8 32 64] [--rounds 6]
       [--out bench/results/encode.json]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench import common
from models.checkpoint import load_model
from models.inference import pad_batch, source_ids
from models.recurrent import RecurrentCore

Encode = Callable[[RecurrentCore, Tensor, Tensor], tuple[Tensor, Tensor]]
FILL_BINS = (0.3, 0.4, 0.5, 0.6)  # lower edges of the fill bins after the first
AS_IT_STANDS: Encode = RecurrentCore.outputs_and_final_h


def get_args_parser() -> argparse.ArgumentParser:
    parser = common.argument_parser(__doc__)
    common.add_models_argument(parser)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--rounds", type=int, default=6, help="per side (default: 6)")
    parser.add_argument("--random-batches", type=int, default=30, help="per size (default: 30)")
    common.add_out_argument(parser, "encode.json")
    return parser


def packed(core: RecurrentCore, inputs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """The packed forward, as every batch ran before the unpacked path."""
    outputs, state = core(inputs, lengths=lengths)
    return outputs, state["h"]


def forced_unpacked(core: RecurrentCore, inputs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """The unpacked path whatever the fill (the threshold set so low that no batch packs)."""
    import models.recurrent as recurrent

    kept, recurrent._UNPACKED_FILL = recurrent._UNPACKED_FILL, 0.0
    try:
        return AS_IT_STANDS(core, inputs, lengths)
    finally:
        recurrent._UNPACKED_FILL = kept


def main(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    report = common.environment(command_args={**vars(args), "out": str(args.out)})
    with tempfile.TemporaryDirectory(prefix="seqserve-bench-") as tmp:
        loaded = load_model(common.model_dirs(args.models, Path(tmp))["translator"])
    model, vocabulary = loaded.model.eval(), loaded.vocabularies["source"]
    sentences = common.sentences(2048)
    sides: dict[str, Encode] = {"packed": packed, "as it stands": AS_IT_STANDS}
    try:
        with torch.inference_mode():
            by_batch = per_batch_size(model, vocabulary, sentences, sides, args)
            by_fill = per_fill(model, vocabulary, sentences, args)
    finally:
        RecurrentCore.outputs_and_final_h = AS_IT_STANDS
    rows = [
        [batch, f"{times['packed']:.3f}", f"{times['as it stands']:.3f}",
         f"{times['packed'] / times['as it stands']:.2f}"]
        for batch, times in by_batch.items()
    ]  # fmt: skip
    common.print_table(["batch", "packed ms", "as it stands ms", "packed / as it stands"], rows)
    common.print_table(
        ["fill from", "batches", "packed / unpacked time, median"],
        [[edge, n, f"{ratio:.2f}"] for edge, (n, ratio) in by_fill.items()],
    )
    by_fill_report = {str(e): {"batches": n, "ratio": r} for e, (n, r) in by_fill.items()}
    report.update(
        ms_per_batch={str(b): t for b, t in by_batch.items()},
        packed_over_unpacked_by_fill=by_fill_report,
        load_average_end=common.load_average(),
    )
    common.write_report(report, args.out)
    return report


def per_batch_size(
    model: Any, vocabulary: Any, sentences: list[str], sides: dict[str, Encode], args: Any
) -> dict[int, dict[str, float]]:
    """Median ms a batch per side over consecutive sentences (256 of them a round)."""
    times: dict[int, dict[str, list[float]]] = {b: {s: [] for s in sides} for b in args.batches}
    for round_ in range(args.rounds):
        for side in list(sides) if round_ % 2 == 0 else list(sides)[::-1]:
            RecurrentCore.outputs_and_final_h = sides[side]
            for batch in args.batches:
                batches = [
                    pad_batch([source_ids(vocabulary, s) for s in sentences[i : i + batch]])
                    for i in range(0, 256, batch)
                ]
                model.encode(*batches[0])  # warm-up
                started = time.perf_counter()
                for source, lengths in batches:
                    model.encode(source, lengths)
                times[batch][side].append((time.perf_counter() - started) / len(batches) * 1000)
    return {b: {s: statistics.median(v) for s, v in by.items()} for b, by in times.items()}


def per_fill(
    model: Any, vocabulary: Any, sentences: list[str], args: Any
) -> dict[float, tuple[int, float]]:
    """Random batches of each size: packed/unpacked time (best of two runs of 3 each) by fill."""
    generator, ratios = random.Random(0), []
    for batch in (b for b in args.batches if b > 1):
        for _ in range(args.random_batches):
            source, lengths = pad_batch(
                [source_ids(vocabulary, s) for s in generator.sample(sentences, batch)]
            )
            fill = float(lengths.sum()) / lengths.numel() / source.size(1)
            best = {}
            for side in ("packed", "unpacked", "packed", "unpacked"):
                RecurrentCore.outputs_and_final_h = packed if side == "packed" else forced_unpacked
                model.encode(source, lengths)
                started = time.perf_counter()
                for _ in range(3):
                    model.encode(source, lengths)
                took = time.perf_counter() - started
                best[side] = min(best.get(side, took), took)
            ratios.append((fill, best["packed"] / best["unpacked"]))
    edges = (0.0, *FILL_BINS)
    found = {}
    for low, high in zip(edges, (*edges[1:], 1.01), strict=True):
        inside = [ratio for fill, ratio in ratios if low <= fill < high]
        if inside:
            found[low] = (len(inside), statistics.median(inside))
    return found


if __name__ == "__main__":
    main(get_args_parser().parse_args())
