"""Learning-rate schedule, training progress and resumable checkpoints (plain state, no pickles)."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

CHECKPOINT = "checkpoint.pt"


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
    """Write everything needed to continue exactly, atomically (tmp file then rename).

    `carry` is what the next batch of an unfinished epoch starts from (truncated BPTT's state).
    """
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": {"scale": schedule.scale},
        "progress": asdict(progress),
        "rng": _rng_state(),
        "carry": {k: v.cpu() for k, v in (carry or {}).items()},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
) -> tuple[Progress, dict[str, Tensor]]:
    """Restore model, optimizer, schedule and RNG state; return the saved progress and carry."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.scale = float(state["schedule"]["scale"])
    _set_rng_state(state["rng"])
    return Progress(**state["progress"]), state.get("carry", {})


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
