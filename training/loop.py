"""The one training loop: teacher forcing, PAD-masked cross-entropy, clipping, validation, resume."""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models.atomic import recover_directory, write_text
from models.vocabulary import PAD
from training.batching import shard
from training.distributed import Distributed, gather_shards, sum_over_processes
from training.memory import SavedTensorMeter
from training.records import EpochStats, MetricsLog
from training.settings import LoopSettings
from training.state import (
    CHECKPOINT,
    SNAPSHOTS,
    LRSchedule,
    Progress,
    load_checkpoint,
    remove_snapshots,
    save_checkpoint,
    save_snapshot,
)

METRICS_LOG = "metrics.jsonl"
Carry = dict[str, Tensor]  # what a batch hands to the next one of the same pass (rows first)


@dataclass(frozen=True)
class Batch:
    """Model inputs (ending with the decoder's input tokens) and the tokens to predict (B, T)."""

    inputs: tuple[Tensor, ...]
    targets: Tensor


class Task(Protocol):
    """What one model brings to the loop: its data as batches, its forward, its metrics, saving."""

    kind: str
    model: nn.Module

    def batches(self, split: str, epoch: int) -> list[list[int]]:
        """One pass over "train" or "valid": global batches of example ids, the same everywhere."""
        ...

    def batch(self, split: str, indices: list[int], device: torch.device) -> Batch:
        """The tensors of the examples `indices` (this process's share of a global batch)."""
        ...

    def teacher_forced(self) -> nn.Module:
        """The module around `model` that `forward` runs (and DDP wraps)."""
        ...

    def forward(
        self, module: nn.Module, batch: Batch, carry: Carry
    ) -> tuple[Tensor, Carry, Tensor | None]:
        """Logits (B, T, V) of `batch` through `module`, what the pass's next batch starts from,
        and a regulariser to add to the batch's summed token loss (None when the task has none).

        `carry` is what the previous batch returned, empty at the start of each pass.
        """
        ...

    def epoch_metrics(
        self, record: dict[str, Any], decode: bool, device: torch.device
    ) -> dict[str, float]:
        """Numbers to add to an epoch's record; when `decode`, scores of greedy decoding too."""
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
        planned = len(self.epoch_batches(0)) * settings.epochs
        self.schedule = LRSchedule(
            settings.lr,
            settings.warmup_steps,
            settings.schedule,
            min(planned, settings.max_steps or planned),  # cosine ends at the planned last step
            settings.plateau_factor,
            settings.min_lr_ratio,
        )
        self.progress = Progress()
        self.carry: Carry = {}
        self.started = time.monotonic()
        settings.run_dir.mkdir(parents=True, exist_ok=True)
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
            logits, self.carry, penalty = self.task.forward(self.module, batch, self.carry)
        loss_sum, tokens = token_loss(logits, batch.targets, s.label_smoothing)
        total_loss, total_tokens = sum_over_processes(
            [float(loss_sum.detach()), tokens], self.info, self.device
        )  # the logged loss stays the cross-entropy, comparable with validation
        if penalty is not None:
            loss_sum = loss_sum + penalty
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
        batches = self.task.batches("train", epoch)
        return [b for b in batches if len(b) >= self.info.world_size]

    def train_epoch(self) -> tuple[bool, dict[str, float]]:
        """Train the rest of the current epoch: (False when the budget stopped it, its statistics)."""
        s, p = self.settings, self.progress
        batches = self.epoch_batches(p.epoch)
        if p.batch == 0:
            self.carry = {}  # a pass starts afresh; mid-epoch the checkpoint restored it
        bar = tqdm(
            total=len(batches),
            initial=p.batch,
            desc=f"epoch {p.epoch + 1}",
            disable=not (s.progress and self.info.is_main),
            mininterval=1.0,
        )
        stats, finished = EpochStats(), True
        with SavedTensorMeter() if s.measure_memory else nullcontext() as meter:
            for indices in batches[p.batch :]:
                if self.out_of_budget():
                    finished = False
                    break
                batch = self.task.batch("train", shard(indices, *self._place), self.device)
                step = self.train_step(batch)
                p.batch += 1
                self.snapshot(at_validation=False)
                speed = stats.add(step)
                bar.update(1)
                bar.set_postfix(loss=f"{step['loss']:.3f}", tok_s=f"{speed:.0f}", refresh=False)
                if p.step % s.log_every == 0:
                    self.log.write(epoch=p.epoch + 1, step=p.step, **step, tokens_per_s=speed)
        bar.close()
        return finished, stats.summary(s.clip_norm, meter)

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
        total, tokens, carry = 0.0, 0, {}
        for indices in self.task.batches("valid", 0):
            mine = shard(indices, *self._place)
            if not mine:
                continue
            batch = self.task.batch("valid", mine, self.device)
            logits, carry, _ = self.task.forward(self.core, batch, carry)
            loss, count = token_loss(logits, batch.targets)
            total, tokens = total + float(loss), tokens + count
        total, tokens = sum_over_processes([total, tokens], self.info, self.device)
        return total / max(tokens, 1)

    def end_epoch(self, started: float, train_stats: dict[str, float]) -> bool:
        """Validate, keep the best model, adjust the rate; True when training should stop."""
        s, p = self.settings, self.progress
        record: dict[str, Any] = {"epoch": p.epoch, "step": p.step}
        record.update(valid_loss=self.validation_loss(), **train_stats)
        decode = s.select_metric != "loss"
        record.update(self.task.epoch_metrics(record, decode, self.device))
        key = "valid_loss" if s.select_metric == "loss" else s.select_metric
        improved = p.record(record[key], higher_is_better=key != "valid_loss")
        self.schedule.after_validation(improved)
        self.snapshot(at_validation=True)
        elapsed = (p.history[-1]["elapsed_s"] if p.history else 0.0) + time.monotonic() - started
        record.update(best=improved, elapsed_s=elapsed)
        p.history.append(record)
        self.log.write(**record)
        if self.info.is_main:
            print(json.dumps(record), flush=True)
            if improved:
                self.task.save(s.run_dir / "best", {"settings": s.to_dict(), **record})
        return p.bad_epochs >= s.patience

    def snapshot(self, at_validation: bool) -> None:
        """Keep this step's weights for averaging when due: every `snapshot_every` steps, or at
        each validation when that is 0 (main process; `keep_snapshots` 0 keeps none)."""
        s, step = self.settings, self.progress.step
        every = s.snapshot_every
        due = at_validation if every == 0 else (not at_validation and step % every == 0)
        if s.keep_snapshots > 0 and due and self.info.is_main:
            save_snapshot(s.run_dir / SNAPSHOTS, self.task.model, self.progress, s.keep_snapshots)

    def save(self) -> None:
        """Write the checkpoint (main process), with every process's carry in global row order."""
        mid_epoch = self.progress.batch > 0  # at an epoch's end the next one starts afresh
        carry = {k: gather_shards(v, self.info) for k, v in self.carry.items()} if mid_epoch else {}
        if self.info.is_main:
            self.log.sync()
            state = (self.core, self.optimizer, self.schedule, self.progress)
            save_checkpoint(self.checkpoint_path, *state, carry)

    def restore(self) -> None:
        """Continue from the checkpoint: model, optimizer, schedule, RNG, progress, carry (our rows)."""
        progress, carry = load_checkpoint(
            self.checkpoint_path, self.core, self.optimizer, self.schedule
        )
        self.progress = progress
        self.log.keep_until(progress.step)
        if self.info.is_main:
            remove_snapshots(self.settings.run_dir / SNAPSHOTS, after=progress.step)
        self.carry = {
            k: v[self.info.rank :: self.info.world_size].to(self.device) for k, v in carry.items()
        }

    def run(self) -> Progress:
        """Train until the epochs, max_steps or patience run out; the best model is in run_dir/best."""
        s = self.settings
        if self.info.is_main:
            recover_directory(s.run_dir / "best")  # a kill while best/ was being replaced
        if s.resume and self.checkpoint_path.is_file():
            self.restore()
        else:
            if self.info.is_main:
                (s.run_dir / METRICS_LOG).unlink(missing_ok=True)
                remove_snapshots(s.run_dir / SNAPSHOTS)
                write_text(s.run_dir / "settings.json", json.dumps(s.to_dict(), indent=2))
            self.log.write(epoch=0, step=0, valid_loss=self.validation_loss())  # every process
        p = self.progress
        while p.epoch < s.epochs:
            started = self.started = time.monotonic()
            finished, stats = self.train_epoch()
            if finished:
                p.epoch, p.batch = p.epoch + 1, 0
            # a max_steps stop mid-epoch is validated too; one right at an epoch's start already was
            stop = True
            if finished or p.batch:
                # validating and saving best/ (which builds a model) must not move the training's
                # random numbers: a run stopped here and resumed then draws what one run would
                with torch.random.fork_rng(
                    devices=[self.device] if self.device.type == "cuda" else []
                ):
                    stop = self.end_epoch(started, stats)
            self.save()
            if stop or not finished:
                break
        return p
