"""What the training loop writes down: the metrics log and each epoch's training statistics."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

from models.atomic import append_line, sync_file, write_text
from training.memory import SavedTensorMeter


class MetricsLog:
    """Appends one JSON object per line; only the main process writes."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, **record: Any) -> None:
        if self.enabled:
            append_line(self.path, json.dumps(record))

    def sync(self) -> None:
        """Make every line so far durable (at a checkpoint, so that the two agree)."""
        if self.enabled and self.path.is_file():
            sync_file(self.path)

    def keep_until(self, step: int) -> None:
        """After a resume from the checkpoint of `step`: drop what a stopped run logged after it
        (it is done again) and a torn last line, so the log reads as one uninterrupted run's."""
        if not (self.enabled and self.path.is_file()):
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines(keepends=True):
            try:
                record = json.loads(line)
            except ValueError:
                break  # a line cut short by a kill: nothing after it is whole
            if not line.endswith("\n") or record.get("step", 0) > step:
                break
            kept.append(line)
        write_text(self.path, "".join(kept))


class EpochStats:
    """Running totals over the steps of one epoch (or of its rest, after a resume)."""

    def __init__(self) -> None:
        self.loss_sum, self.tokens = 0.0, 0
        self.grad_norms: list[float] = []
        self.started = time.monotonic()

    def add(self, step: dict[str, float]) -> float:
        """Count one step of `Trainer.train_step`; returns the tokens per second so far."""
        self.loss_sum += step["loss"] * step["tokens"]
        self.tokens += int(step["tokens"])
        self.grad_norms.append(step["grad_norm"])
        return self.tokens / max(time.monotonic() - self.started, 1e-9)

    def summary(self, clip_norm: float, meter: SavedTensorMeter | None) -> dict[str, float]:
        """Per-token training loss, gradient norms before clipping, speed and memory (no steps: {})."""
        if not self.grad_norms:
            return {}
        seconds = max(time.monotonic() - self.started, 1e-9)
        norms = self.grad_norms
        summary = {
            "train_loss": self.loss_sum / max(self.tokens, 1),
            "grad_norm_mean": sum(norms) / len(norms),
            "grad_norm_max": max(norms),
            "clipped_fraction": sum(n > clip_norm > 0 for n in norms) / len(norms),
            "train_seconds": seconds,
            "train_tokens_per_s": self.tokens / seconds,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        if meter is not None:
            summary["peak_saved_mb"] = meter.peak / 2**20
        return summary
