r"""Average the weights of a run's last snapshots into a saved model directory (checkpoint averaging,
as in Vaswani et al. 2017): `training.evaluate` and `training.export` read it as they read `best/`.

    python -m training.train_translator --preset large        # keeps 5 snapshots in runs/<name>/snapshots
    python -m training.average_checkpoints --run runs/translator_large --last 5 \
        --output runs/translator_large/averaged

The config, vocabularies and metadata come from the run's `best/`; the weights are the float32 mean
of the snapshots' (integer buffers, counters, are the last snapshot's).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from safetensors import safe_open
from torch import Tensor

from models.atomic import DamagedFileError
from models.checkpoint import load_model, save_model, stored_tensors
from training.errors import run_main
from training.settings import SettingsError
from training.state import SNAPSHOTS, list_snapshots, snapshot_step


class SnapshotError(DamagedFileError):
    """A snapshot that cannot be averaged: unreadable, or other weights than the run's model."""


def read_snapshot(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """A snapshot's tensors and metadata (step, epoch); SnapshotError naming it when unreadable."""
    try:
        with safe_open(str(path), framework="pt") as stored:
            names = stored.keys()  # safe_open is not iterable
            return {k: stored.get_tensor(k) for k in names}, stored.metadata() or {}
    except Exception as error:  # safetensors raises its own error types, OSError, ValueError...
        raise SnapshotError(
            f"{path}: not a readable snapshot ({type(error).__name__}: {error}); delete it and "
            "average the others (--last)"
        ) from None


def check_matches(path: Path, tensors: dict[str, Tensor], reference: dict[str, Tensor]) -> None:
    """SnapshotError naming `path` unless it holds exactly `reference`'s names and shapes."""
    missing, extra = sorted(set(reference) - set(tensors)), sorted(set(tensors) - set(reference))
    shapes = [n for n in reference if n in tensors and tensors[n].shape != reference[n].shape]
    if missing or extra or shapes:
        raise SnapshotError(
            f"{path}: not a snapshot of this run's model (missing {missing[:3]}, unexpected "
            f"{extra[:3]}, other shapes {shapes[:3]}); average snapshots of one run only"
        )


def average_tensors(paths: list[Path], reference: dict[str, Tensor]) -> dict[str, Tensor]:
    """The mean over the snapshots `paths` of each floating tensor, summed in float32 and returned
    in `reference`'s dtype; other tensors (integer counters) are the last snapshot's."""
    sums: dict[str, Tensor] = {}
    last: dict[str, Tensor] = {}
    for path in paths:
        last, _ = read_snapshot(path)
        check_matches(path, last, reference)
        for name, tensor in last.items():
            if tensor.is_floating_point():
                value = tensor.float()
                sums[name] = sums[name] + value if name in sums else value.clone()
    return {
        name: (sums[name] / len(paths)).to(ref.dtype) if name in sums else last[name]
        for name, ref in reference.items()
    }


def choose_snapshots(run_dir: Path, last: int) -> list[Path]:
    """The newest `last` snapshots of `run_dir`, oldest first; errors say what to do instead."""
    found = list_snapshots(run_dir / SNAPSHOTS)
    if not found:
        raise FileNotFoundError(
            f"{run_dir / SNAPSHOTS} holds no snapshots: train with --keep-snapshots N "
            "(and --snapshot-every STEPS, or one per validation) first"
        )
    if last < 1 or last > len(found):
        raise SettingsError(
            f"--last {last}: {run_dir / SNAPSHOTS} holds {len(found)} snapshots; "
            f"give --last 1 to {len(found)}"
        )
    return found[-last:]


def average_run(run_dir: Path, last: int, output: Path) -> dict[str, Any]:
    """Write `output` (the layout of `best/`) with the mean weights of the last `last` snapshots;
    returns what its metadata says about the averaging."""
    chosen = choose_snapshots(run_dir, last)
    if not (run_dir / "best" / "config.json").is_file():
        raise FileNotFoundError(
            f"{run_dir / 'best'} is missing: averaging takes the model's config and vocabularies "
            "from the run's best/, which the first validation writes"
        )
    template = load_model(run_dir / "best")
    model = template.model
    state = model.state_dict()
    state.update(average_tensors(chosen, stored_tensors(model)))
    model.load_state_dict(state)
    _, newest = read_snapshot(chosen[-1])
    averaged = {
        "snapshots": [p.name for p in chosen],
        "steps": [snapshot_step(p) for p in chosen],
        "config_from": str(run_dir / "best"),
    }
    kept = {k: v for k, v in template.metadata.items() if k in ("settings", "data")}
    metadata = {
        **kept,
        "step": snapshot_step(chosen[-1]),
        "epoch": int(newest.get("epoch", 0)),
        "averaged": averaged,
    }
    save_model(output, model, template.vocabularies, metadata)
    return averaged


def get_args_parser() -> argparse.ArgumentParser:
    """Flags of `python -m training.average_checkpoints`."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run", type=Path, required=True, help="a run folder, e.g. runs/translator_large"
    )
    parser.add_argument(
        "--last", type=int, default=5, help="average the newest N snapshots (default: 5)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="model directory to write, replaced as a whole (default: <run>/averaged)",
    )
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Average and save; prints which snapshots went in."""
    output = args.output or args.run / "averaged"
    averaged = average_run(args.run, args.last, output)
    print(json.dumps({"output": str(output), **averaged}))
    return averaged


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())
