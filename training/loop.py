"""The shared training loop: teacher forcing, PAD-masked cross-entropy, clipping, validation, resume."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models.vocabulary import PAD
from training.batching import bucket_batches, shard, sorted_batches
from training.distributed import Distributed, setup, sum_over_processes, teardown
from training.settings import LoopSettings
from training.state import CHECKPOINT, LRSchedule, Progress, load_checkpoint, save_checkpoint

METRICS_LOG = "metrics.jsonl"


@dataclass(frozen=True)
class Batch:
    """Model inputs (ending with the decoder's input tokens) and the tokens to predict (B, T)."""

    inputs: tuple[Tensor, ...]
    targets: Tensor


class Task(Protocol):
    """The model-specific part of training: data, the teacher-forced forward, metrics, saving."""

    kind: str
    model: nn.Module

    def lengths(self, split: str) -> list[int]:
        """Target length of every example of "train" or "valid" (for bucketing)."""
        ...

    def batch(self, split: str, indices: list[int], device: torch.device) -> Batch: ...

    def teacher_forced(self) -> nn.Module:
        """A module around `model` whose forward(*batch.inputs) gives logits (B, T, V)."""
        ...

    def decode_metrics(self, limit: int, device: torch.device) -> dict[str, float]:
        """Greedy-decode up to `limit` validation examples and score them (bleu or cider)."""
        ...

    def save(self, directory: Path, metadata: dict[str, Any]) -> None: ...


def token_loss(logits: Tensor, targets: Tensor, smoothing: float = 0.0) -> tuple[Tensor, int]:
    """Summed cross-entropy of logits (B, T, V) against targets (B, T), PAD ignored; and #tokens."""
    loss = F.cross_entropy(
        logits.float().flatten(0, 1),
        targets.flatten(),
        ignore_index=PAD,
        label_smoothing=smoothing,
        reduction="sum",
    )
    return loss, int((targets != PAD).sum())


class MetricsLog:
    """Appends one JSON object per line; only the main process writes."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, **record: Any) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as stream:
                stream.write(json.dumps(record) + "\n")


class Trainer:
    """Trains `task.model` as `settings` say, on this process's share of every batch."""

    def __init__(
        self, task: Task, settings: LoopSettings, info: Distributed, device: torch.device
    ) -> None:
        self.task, self.settings, self.info, self.device = task, settings, info, device
        self.core = task.teacher_forced().to(device)
        self.module: nn.Module = self.core
        if info.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.module = DistributedDataParallel(self.core, device_ids=ids)
        params = [p for p in task.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(
            params, lr=settings.lr, weight_decay=settings.weight_decay
        )
        steps = max(1, len(task.lengths("train")) // settings.batch_size) * settings.epochs
        self.schedule = LRSchedule(
            settings.lr,
            settings.warmup_steps,
            settings.schedule,
            steps,  # the planned horizon: max_steps and the time limit only cut it short
            settings.plateau_factor,
            settings.min_lr_ratio,
        )
        self.progress = Progress()
        self.started = time.monotonic()
        self.log = MetricsLog(settings.run_dir / METRICS_LOG, info.is_main)

    @property
    def checkpoint_path(self) -> Path:
        return self.settings.run_dir / CHECKPOINT

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One optimizer step on a batch: returns the global per-token loss, grad norm and lr."""
        s = self.settings
        self.module.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.device.type == "cuda"):
            logits = self.module(*batch.inputs)
        loss_sum, tokens = token_loss(logits, batch.targets, s.label_smoothing)
        total_loss, total_tokens = sum_over_processes(
            [float(loss_sum.detach()), tokens], self.info, self.device
        )
        # DDP averages gradients over processes: scale so the result is the global per-token mean
        (loss_sum * self.info.world_size / max(total_tokens, 1)).backward()
        params = [p for p in self.task.model.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, s.clip_norm if s.clip_norm > 0 else math.inf)
        lr = self.schedule.lr(self.progress.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.progress.step += 1
        return {
            "loss": total_loss / max(total_tokens, 1),
            "grad_norm": float(norm),
            "lr": lr,
            "tokens": total_tokens,
        }

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The global batches of `epoch`: the same on every process and after a resume."""
        generator = torch.Generator().manual_seed(self.settings.seed * 100_003 + epoch)
        batches = bucket_batches(self.task.lengths("train"), self.settings.batch_size, generator)
        return [b for b in batches if len(b) >= self.info.world_size]

    def train_epoch(self) -> bool:
        """Train the rest of the current epoch; False when max_steps stopped it early."""
        s, p = self.settings, self.progress
        batches = self.epoch_batches(p.epoch)
        bar = tqdm(
            total=len(batches),
            initial=p.batch,
            desc=f"epoch {p.epoch + 1}",
            disable=not (s.progress and self.info.is_main),
            mininterval=1.0,
        )
        tokens, start = 0, time.monotonic()
        for indices in batches[p.batch :]:
            if self.out_of_budget():
                bar.close()
                return False
            stats = self.train_step(
                self.task.batch("train", shard(indices, *self._place), self.device)
            )
            p.batch += 1
            tokens += int(stats["tokens"])
            speed = tokens / max(time.monotonic() - start, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", tok_s=f"{speed:.0f}", refresh=False)
            if p.step % s.log_every == 0:
                self.log.write(epoch=p.epoch + 1, step=p.step, **stats, tokens_per_s=speed)
        bar.close()
        return True

    def out_of_budget(self) -> bool:
        """True once max_steps or the time limit (counted over resumed runs too) is reached."""
        s, p = self.settings, self.progress
        spent = (p.history[-1]["elapsed_s"] if p.history else 0.0) + time.monotonic() - self.started
        return bool(s.max_steps and p.step >= s.max_steps) or bool(
            s.time_limit_min and spent >= 60 * s.time_limit_min
        )

    @property
    def _place(self) -> tuple[int, int]:
        return self.info.rank, self.info.world_size

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Per-token cross-entropy (no smoothing) over the whole validation split."""
        self.core.eval()
        total, tokens = 0.0, 0
        for indices in sorted_batches(self.task.lengths("valid"), self.settings.batch_size):
            mine = shard(indices, *self._place)
            if not mine:
                continue
            batch = self.task.batch("valid", mine, self.device)
            loss, count = token_loss(self.core(*batch.inputs), batch.targets)
            total, tokens = total + float(loss), tokens + count
        total, tokens = sum_over_processes([total, tokens], self.info, self.device)
        return total / max(tokens, 1)

    def validate(self) -> dict[str, float]:
        """Validation loss, and the decoding metric when early stopping selects on it."""
        metrics = {"valid_loss": self.validation_loss()}
        if self.settings.select_metric != "loss":
            metrics.update(self.task.decode_metrics(self.settings.metric_subset, self.device))
        return metrics

    def end_epoch(self, started: float) -> bool:
        """Validate, keep the best model, adjust the rate; True when training should stop."""
        s, p = self.settings, self.progress
        metrics = self.validate()
        key = "valid_loss" if s.select_metric == "loss" else s.select_metric
        improved = p.record(metrics[key], higher_is_better=key != "valid_loss")
        self.schedule.after_validation(improved)
        elapsed = (p.history[-1]["elapsed_s"] if p.history else 0.0) + time.monotonic() - started
        record = {
            "epoch": p.epoch,
            "step": p.step,
            **metrics,
            "best": improved,
            "elapsed_s": elapsed,
        }
        p.history.append(record)
        self.log.write(**record)
        if improved and self.info.is_main:
            self.task.save(s.run_dir / "best", {"settings": s.to_dict(), **record})
        return p.bad_epochs >= s.patience

    def run(self) -> Progress:
        """Train until the epochs, max_steps or patience run out; the best model is in run_dir/best."""
        s = self.settings
        s.run_dir.mkdir(parents=True, exist_ok=True)
        if s.resume and self.checkpoint_path.is_file():
            self.progress = load_checkpoint(
                self.checkpoint_path, self.core, self.optimizer, self.schedule
            )
        else:
            if self.info.is_main:
                (s.run_dir / METRICS_LOG).unlink(missing_ok=True)
                (s.run_dir / "settings.json").write_text(json.dumps(s.to_dict(), indent=2))
            self.log.write(epoch=0, step=0, valid_loss=self.validation_loss())  # every process
        p = self.progress
        while p.epoch < s.epochs:
            started = self.started = time.monotonic()
            finished = self.train_epoch()
            if finished:
                p.epoch, p.batch = p.epoch + 1, 0
            # a max_steps stop mid-epoch is validated too; one right at an epoch's start already was
            stop = self.end_epoch(started) if finished or p.batch else True
            if self.info.is_main:
                save_checkpoint(self.checkpoint_path, self.core, self.optimizer, self.schedule, p)
            if stop or not finished:
                break
        return p


def train(settings: LoopSettings, make_task: Callable[..., Task]) -> Progress:
    """Set up this process (alone or under torchrun), build the task and train it."""
    info, device = setup(settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        task = make_task(settings, info, device)
        progress = Trainer(task, settings, info, device).run()
    finally:
        teardown(info)
    if info.is_main:
        best = progress.best_metric
        print(
            f"{settings.run_dir}: {progress.step} steps, {progress.epoch} epochs, best {settings.select_metric} {best}"
        )
    return progress
