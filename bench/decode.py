"""Decoding speed: greedy vs beam-5 at batch 1, 16, 64, and batched beam search vs one input at a time.

Usage: python -m bench.decode [--models pretrained] [--repeats 5] [--threads 1]
       [--device cpu] [--autocast none] [--out bench/results/decode.json]
Uses the shipped models in pretrained/ when present, else random models of the default preset
sizes (which never emit END, so every row runs to max_length: the worst case).
Prints a table and writes JSON. Sides are alternated within each repeat; medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench import common
from models.checkpoint import LoadedModel, load_model
from models.inference import caption_features, pad_batch, precision, source_ids
from models.search import SearchOptions, decode

BATCHES = (1, 16, 64)
GREEDY = SearchOptions("greedy", max_length=30)
BEAM = SearchOptions("beam", beam_size=5, max_length=30)


def get_args_parser() -> argparse.ArgumentParser:
    parser = common.argument_parser(__doc__)
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed repeats per cell (default: 5)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default: 1; two threads on the main thread of a busy 2-core "
        "machine ran up to 100x slower, see bench/README.md)",
    )
    common.add_models_argument(parser)
    parser.add_argument(
        "--batches",
        type=int,
        nargs="+",
        default=list(BATCHES),
        help="batch sizes (default: 1 16 64)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument(
        "--autocast", default="none", choices=("none", "bf16", "fp16"), help="(default: none)"
    )
    common.add_out_argument(parser, "decode.json")
    return parser


def decoders(
    kind: str,
    loaded: LoadedModel,
    batch: int,
    device: torch.device,
    autocast: str,
) -> Callable[[SearchOptions, slice], object]:
    """A function decoding rows `rows` of a fixed batch of inputs with the given options:
    encoder features of real images (the emoji the captioner was trained on), or English test
    sentences. Only decoding is timed, not the image encoder."""
    model = loaded.model
    if kind == "captioner":
        with torch.inference_mode():
            pooled, grid = model.encoder(common.image_batch(batch, model.encoder).to(device))

        def caption(options: SearchOptions, rows: slice) -> object:
            with precision(device, autocast):
                found = caption_features(model, pooled[rows], grid[rows], options)
            common.synchronize(device)
            return found

        return caption
    source = loaded.vocabularies["source"]
    sources = [source_ids(source, s) for s in common.sentences(batch)]

    def run(options: SearchOptions, rows: slice) -> object:
        ids, lens = pad_batch(sources[rows], device)
        with torch.inference_mode(), precision(device, autocast):
            found = decode(
                model.decoder, model.init_state(ids, lens), options, model.max_lengths(lens)
            )
        common.synchronize(device)
        return found

    return run


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one call. The CPU time (this process's) leaves out the time
    spent waiting for a core, which on a shared machine is most of the noise."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def measure(
    kind: str, loaded: LoadedModel, batch: int, args: argparse.Namespace
) -> dict[str, float]:
    """Median seconds of greedy, beam-5 batched, and beam-5 one input at a time: wall-clock, and
    CPU under `<side>_cpu`."""
    run = decoders(kind, loaded, batch, torch.device(args.device), args.autocast)
    run(GREEDY, slice(0, batch))  # warm-up
    sides: dict[str, Callable[[], object]] = {
        "greedy": lambda: run(GREEDY, slice(0, batch)),
        "beam5": lambda: run(BEAM, slice(0, batch)),
        "beam5_one_at_a_time": lambda: [run(BEAM, slice(i, i + 1)) for i in range(batch)],
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, fn in sides.items():  # alternate the sides within each repeat
            times[name].append(timed(fn))
    result = {}
    for name, values in times.items():
        result[name] = statistics.median(wall for wall, _ in values)
        result[f"{name}_cpu"] = statistics.median(cpu for _, cpu in values)
    result["beam5_over_greedy"] = result["beam5"] / result["greedy"]
    result["batched_beam_speedup"] = result["beam5_one_at_a_time"] / result["beam5"]
    result["batched_beam_speedup_cpu"] = result["beam5_one_at_a_time_cpu"] / result["beam5_cpu"]
    result["load_average"] = common.load_average()[0]
    return result


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    report = common.environment(
        threads=args.threads,
        repeats=args.repeats,
        device=args.device,
        autocast=args.autocast,
        results={},
    )
    print(
        f"{'model':<10} {'batch':>5} {'greedy s':>9} {'beam5 s':>9} {'beam/greedy':>11} "
        f"{'1-by-1 s':>9} {'speed-up':>8} {'CPU s-up':>8} {'load':>5}"
    )
    with tempfile.TemporaryDirectory(prefix="seqserve-bench-") as tmp:
        dirs = common.model_dirs(args.models, Path(tmp))
        for kind in ("captioner", "translator"):
            loaded = load_model(dirs[kind], device)
            report["results"][kind] = {"model": str(dirs[kind]), "batches": {}}
            for batch in args.batches:
                r = measure(kind, loaded, batch, args)
                report["results"][kind]["batches"][batch] = r
                print(
                    f"{kind:<10} {batch:>5} {r['greedy']:>9.4f} {r['beam5']:>9.4f} "
                    f"{r['beam5_over_greedy']:>11.2f} {r['beam5_one_at_a_time']:>9.4f} "
                    f"{r['batched_beam_speedup']:>8.1f} {r['batched_beam_speedup_cpu']:>8.1f} "
                    f"{r['load_average']:>5.2f}",
                    flush=True,
                )
    common.write_report(report, args.out)
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
