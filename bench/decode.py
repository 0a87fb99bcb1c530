"""Decoding speed: greedy vs beam-5 at batch 1, 16, 64, and batched beam search vs one input at a time.

Usage: python -m bench.decode [--repeats 5] [--threads 2] [--out bench/results/decode.json]
Uses the shipped models in pretrained/ when present, else random models of the same shape.
Prints a table and writes JSON. Sides are alternated within each repeat; medians are reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

from models.captioner import Captioner, CaptionerConfig
from models.checkpoint import load_model
from models.encoders import ImageEncoderConfig, TextEncoderConfig
from models.inference import caption_features, pad_batch
from models.search import SearchOptions, decode
from models.translator import Translator, TranslatorConfig

BATCHES = (1, 16, 64)
GREEDY = SearchOptions("greedy", max_length=30)
BEAM = SearchOptions("beam", beam_size=5, max_length=30)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed repeats per cell (default: 5)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench/results/decode.json"),
        help="JSON output (default: bench/results/decode.json)",
    )
    return parser


def load_or_random(kind: str) -> tuple[torch.nn.Module, str]:
    """The shipped model of `kind`, or a random one of a realistic size."""
    path = Path("pretrained") / kind
    if (path / "config.json").is_file():
        return load_model(path).model, str(path)
    torch.manual_seed(0)
    if kind == "captioner":
        config = CaptionerConfig.create(
            ImageEncoderConfig(), 2000, hidden_size=512, attention="additive"
        )
        return Captioner(config, pretrained=False).eval(), "random weights"
    encoder = TextEncoderConfig(8000, 256, 256)
    return Translator(
        TranslatorConfig.create(encoder, 8000, hidden_size=512, attention="additive")
    ).eval(), "random weights"


def decoders(
    kind: str, model: torch.nn.Module, batch: int
) -> Callable[[SearchOptions, slice], object]:
    """A function decoding rows `rows` of a fixed random batch with the given options."""
    generator = torch.Generator().manual_seed(batch)
    if kind == "captioner":
        size = model.config.encoder.feature_size
        grid = torch.randn(batch, 49, size, generator=generator).relu()
        pooled = grid.mean(1)
        return lambda options, rows: caption_features(model, pooled[rows], grid[rows], options)
    vocab = model.config.encoder.vocab_size
    lengths = torch.randint(5, 20, (batch,), generator=generator)
    sources = [
        torch.randint(4, vocab, (int(n),), generator=generator).tolist() + [2] for n in lengths
    ]

    def run(options: SearchOptions, rows: slice) -> object:
        ids, lens = pad_batch(sources[rows])
        with torch.inference_mode():
            return decode(
                model.decoder, model.init_state(ids, lens), options, model.max_lengths(lens)
            )

    return run


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(kind: str, model: torch.nn.Module, batch: int, repeats: int) -> dict[str, float]:
    """Median seconds of greedy, beam-5 batched, and beam-5 one input at a time."""
    run = decoders(kind, model, batch)
    run(GREEDY, slice(0, batch))  # warm-up
    sides: dict[str, Callable[[], object]] = {
        "greedy": lambda: run(GREEDY, slice(0, batch)),
        "beam5": lambda: run(BEAM, slice(0, batch)),
        "beam5_one_at_a_time": lambda: [run(BEAM, slice(i, i + 1)) for i in range(batch)],
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():  # alternate the sides within each repeat
            times[name].append(timed(fn))
    result = {name: statistics.median(values) for name, values in times.items()}
    result["beam5_over_greedy"] = result["beam5"] / result["greedy"]
    result["batched_beam_speedup"] = result["beam5_one_at_a_time"] / result["beam5"]
    return result


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "repeats": args.repeats,
        "results": {},
    }
    print(
        f"{'model':<10} {'batch':>5} {'greedy s':>9} {'beam5 s':>9} {'beam/greedy':>11} {'1-by-1 s':>9} {'speed-up':>8}"
    )
    for kind in ("captioner", "translator"):
        model, source = load_or_random(kind)
        report["results"][kind] = {"model": source, "batches": {}}
        for batch in BATCHES:
            r = measure(kind, model, batch, args.repeats)
            report["results"][kind]["batches"][batch] = r
            print(
                f"{kind:<10} {batch:>5} {r['greedy']:>9.4f} {r['beam5']:>9.4f} {r['beam5_over_greedy']:>11.2f} "
                f"{r['beam5_one_at_a_time']:>9.4f} {r['batched_beam_speedup']:>8.1f}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
