"""Learning-rate schedule, training progress, resumable checkpoints (plain state, no pickles) and
the weight snapshots kept for averaging."""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from models.atomic import DamagedFileError, sha256_file, write_bytes, write_text
from models.checkpoint import stored_tensors

CHECKPOINT = "checkpoint.pt"
SNAPSHOTS = "snapshots"  # <run>/snapshots/step_00001234.safetensors: weights only, for averaging
CHECKSUMS = "checkpoint.sha256.json"  # {"checkpoint.pt": [sha256 of the newest, of the one before]}


class CheckpointError(DamagedFileError):
    """A checkpoint that cannot be resumed from: damaged, or made by other settings."""


@dataclass
class LRSchedule:
    """Linear warm-up, then cosine decay or a factor cut each time validation stalls (plateau)."""

    base_lr: float
    warmup_steps: int
    kind: str = "plateau"  # plateau | cosine | constant
    total_steps: int = 1
    factor: float = 0.5
    min_ratio: float = 0.02
    scale: float = 1.0  # the plateau cuts so far

    def __post_init__(self) -> None:
        if self.kind not in ("plateau", "cosine", "constant"):
            raise ValueError(f"schedule must be plateau, cosine or constant, got {self.kind!r}")

    def lr(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-based)."""
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        decay = self.scale
        if self.kind == "cosine":
            progress = min(1.0, step / max(1, self.total_steps))
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.base_lr * warm * max(self.min_ratio, decay)

    def after_validation(self, improved: bool) -> None:
        """Cut the rate when the validation metric did not improve (plateau only)."""
        if self.kind == "plateau" and not improved:
            self.scale = max(self.min_ratio, self.scale * self.factor)


@dataclass
class Progress:
    """Where training is: finished epochs, batches done in the current one, steps, best metric."""

    epoch: int = 0
    batch: int = 0  # batches of `epoch` already trained (a checkpoint may fall mid-epoch)
    step: int = 0
    best_metric: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def record(self, metric: float, higher_is_better: bool) -> bool:
        """Note the validation metric of the epoch just finished; True when it is the best so far."""
        better = self.best_metric is None or (
            metric > self.best_metric if higher_is_better else metric < self.best_metric
        )
        if better:
            self.best_metric, self.best_epoch, self.bad_epochs = metric, self.epoch, 0
        else:
            self.bad_epochs += 1
        return better


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
    progress: Progress,
    carry: dict[str, Tensor] | None = None,
) -> None:
    """Write everything needed to continue exactly, atomically, with its sha256 recorded first.

    `carry` is what the next batch of an unfinished epoch starts from (truncated BPTT's state).
    The checksum file names the new checkpoint's sha256 and the one on disk, so that a kill
    between the two writes leaves the previous checkpoint loadable and verified.
    """
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": {"scale": schedule.scale},
        "progress": asdict(progress),
        "rng": _rng_state(),
        "carry": {k: v.cpu() for k, v in (carry or {}).items()},
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    accepted = [hashlib.sha256(data).hexdigest()]
    if path.is_file():
        accepted.append(sha256_file(path))
    write_text(path.with_name(CHECKSUMS), json.dumps({path.name: accepted}))
    write_bytes(path, data)


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
) -> tuple[Progress, dict[str, Tensor]]:
    """Restore model, optimizer, schedule and RNG state; return the saved progress and carry.

    CheckpointError, naming the file and what to do, when it is damaged or does not fit."""
    state = read_checkpoint(path)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.scale = float(state["schedule"]["scale"])
        _set_rng_state(state["rng"])
        progress = Progress(**state["progress"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"{path}: does not fit the model these settings build ({_reason(error)}); resume with the "
            f"run's own settings ({path.parent / 'settings.json'}), or delete it to start afresh"
        ) from None
    return progress, state.get("carry", {})


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The state saved in `path`, after checking it against the recorded sha256."""
    data = path.read_bytes()
    accepted = _recorded_sha256(path)
    delete = (
        f"delete {path.name} and {CHECKSUMS} to train this run from its start "
        "(best/ keeps the best model so far)"
    )
    if accepted is not None and hashlib.sha256(data).hexdigest() not in accepted:
        raise CheckpointError(
            f"{path}: truncated or altered: its sha256 is not the one recorded in {CHECKSUMS} "
            f"when it was written; {delete}"
        )
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, pickle and zip errors, EOFError...
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({_reason(error)}); {delete}"
        ) from None


def save_snapshot(directory: Path, model: nn.Module, progress: Progress, keep: int) -> Path:
    """Write the model's weights now as `<directory>/step_<step, 8 digits>.safetensors`
    (atomically, step and epoch in its metadata) and remove all but the newest `keep`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step_{progress.step:08d}.safetensors"
    metadata = {"step": str(progress.step), "epoch": str(progress.epoch)}
    write_bytes(path, safetensors_bytes(stored_tensors(model), metadata))
    for old in list_snapshots(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_snapshots(directory: Path) -> list[Path]:
    """The snapshots in `directory`, oldest step first."""
    return sorted(directory.glob("step_[0-9]*.safetensors"), key=snapshot_step)


def snapshot_step(path: Path) -> int:
    """The step a snapshot was taken at, from its name."""
    return int(path.stem.removeprefix("step_"))


def remove_snapshots(directory: Path, after: int = -1) -> None:
    """Remove the snapshots of steps after `after` (all by default): on a fresh start, or what a
    stopped run wrote after the checkpoint it is resumed from (the resumed run writes them again)."""
    for path in list_snapshots(directory):
        if snapshot_step(path) > after:
            path.unlink(missing_ok=True)


def _reason(error: Exception, limit: int = 160) -> str:
    """An exception as one short line: its type and the start of its message."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _recorded_sha256(path: Path) -> list[str] | None:
    """The sha256 values recorded for `path`, or None (said on stderr) when there are none."""
    listing = path.with_name(CHECKSUMS)
    try:
        accepted = json.loads(listing.read_text(encoding="utf-8"))[path.name]
        if isinstance(accepted, list) and all(isinstance(x, str) for x in accepted):
            return accepted
    except (OSError, ValueError, KeyError, TypeError):
        pass
    print(
        f"warning: {listing} is missing or unreadable: {path} is loaded unverified", file=sys.stderr
    )
    return None


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
