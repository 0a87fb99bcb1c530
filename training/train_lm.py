"""Train the character language model with truncated BPTT: `python -m training.train_lm --preset default`."""

from __future__ import annotations

import argparse
import json
import random
import resource
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from models.checkpoint import load_model, save_model
from models.language_model import CharLanguageModel, CharLMConfig, generate
from models.search import SearchOptions
from models.tokenizers import CharTokenizer
from models.vocabulary import Vocabulary
from training.data.loaders import load_text
from training.distributed import pick_device
from training.loop import METRICS_LOG, MetricsLog
from training.settings import LoopSettings, add_setting_flags, resolve_settings, setting
from training.state import CHECKPOINT, LRSchedule, Progress, load_checkpoint, save_checkpoint
from training.tbptt import (
    LN2,
    ChunkResult,
    SavedTensorMeter,
    chunk_count,
    evaluate_bpc,
    to_streams,
    train_streams,
    unigram_bpc,
)

VOCAB_NAME = "text"  # load_model(...).vocabularies["text"]
GOLDEN_SEED = "The meaning of life is"


@dataclass(frozen=True)
class LMSettings(LoopSettings):
    """Loop settings plus the text, the model shape and truncated BPTT; batch_size = streams."""

    data: str = setting(
        "data/fortunes", "train.txt+valid.txt folder, or a text file (last 5%: valid)"
    )
    cell: str = setting("lstm", "recurrent cell: lstm, gru or rnn")
    num_layers: int = setting(2, "stacked recurrent layers")
    hidden_size: int = setting(256, "units per layer")
    embed_size: int = setting(64, "character embedding size")
    dropout: float = setting(0.0, "dropout on embeddings, between layers and before the output")
    bptt: int = setting(100, "characters per chunk: one forward+backward, state carried detached")
    full_bptt: bool = setting(False, "backpropagate through each whole stream in one go instead")
    eval_batch_size: int = setting(32, "parallel streams when measuring validation bits/char")
    max_train_chars: int = setting(0, "train on this prefix of the training text (0: all of it)")
    measure_memory: bool = setting(False, "log the peak bytes autograd keeps for backward")
    half: bool = setting(False, "store the best model's float weights as fp16")
    golden_length: int = setting(80, "greedy characters written to best/golden.json")


@dataclass(frozen=True)
class LMData:
    """The vocabulary, the texts as streams of ids and the unigram baseline on the validation text."""

    vocabulary: Vocabulary
    train: torch.Tensor  # (B, L)
    valid: torch.Tensor  # (B_eval, L_eval)
    unigram_bpc: float


def get_args_parser() -> argparse.ArgumentParser:
    """Flags: a preset (training/configs/lm_<preset>.yaml), then any setting overridden by name."""
    parser = argparse.ArgumentParser(description=__doc__)
    add_setting_flags(parser, LMSettings)
    return parser


def load_splits(data: str, max_train_chars: int) -> tuple[str, str]:
    """(train, valid) text: a folder's train.txt/valid.txt, or one file's first 95% / last 5%."""
    path = Path(data)
    if path.is_dir() and (path / "train.txt").is_file():
        train, valid = load_text(path / "train.txt"), load_text(path / "valid.txt")
    else:
        text = load_text(path)
        cut = int(len(text) * 0.95)
        train, valid = text[:cut], text[cut:]
    return (train[:max_train_chars] if max_train_chars > 0 else train), valid


def prepare_data(s: LMSettings, device: torch.device) -> LMData:
    """Read the text, build the character vocabulary from the training part, cut it into streams."""
    train_text, valid_text = load_splits(s.data, s.max_train_chars)
    vocabulary = Vocabulary.build([train_text], CharTokenizer())
    train_ids, valid_ids = vocabulary.encode(train_text), vocabulary.encode(valid_text)
    return LMData(
        vocabulary,
        to_streams(train_ids, s.batch_size).to(device),
        to_streams(valid_ids, s.eval_batch_size).to(device),
        unigram_bpc(train_ids, valid_ids, len(vocabulary)),
    )


def build_model(s: LMSettings, vocab_size: int) -> CharLanguageModel:
    """A new model shaped by `s`."""
    config = CharLMConfig(vocab_size, s.embed_size, s.hidden_size, s.cell, s.num_layers, s.dropout)
    return CharLanguageModel(config)


class LMTrainer:
    """Epochs of truncated BPTT over ordered streams; the shared loop's settings, log and state."""

    def __init__(self, s: LMSettings, data: LMData, device: torch.device) -> None:
        self.s, self.data = s, data
        self.model = build_model(s, len(data.vocabulary)).to(device)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=s.lr, weight_decay=s.weight_decay
        )
        steps = chunk_count(data.train, None if s.full_bptt else s.bptt) * s.epochs
        self.schedule = LRSchedule(
            s.lr, s.warmup_steps, s.schedule, s.max_steps or steps, s.plateau_factor, s.min_lr_ratio
        )
        self.progress = Progress()
        self.log = MetricsLog(s.run_dir / METRICS_LOG, True)
        self.started = time.monotonic()

    def out_of_budget(self) -> bool:
        """True once max_steps or the time limit (counted over resumed runs too) is reached."""
        s, p = self.s, self.progress
        spent = (p.history[-1]["elapsed_s"] if p.history else 0.0) + time.monotonic() - self.started
        return bool(s.max_steps and p.step >= s.max_steps) or bool(
            s.time_limit_min and spent >= 60 * s.time_limit_min
        )

    def _set_lr(self) -> float:
        lr = self.schedule.lr(self.progress.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training streams (B, L) with a progress bar; the epoch's metrics."""
        s, p = self.s, self.progress
        bptt = None if s.full_bptt else s.bptt
        offset = random.Random(s.seed + p.epoch + 1).randrange(bptt) if bptt else 0
        bar = tqdm(
            total=chunk_count(self.data.train, bptt, offset),
            desc=f"epoch {p.epoch + 1}",
            disable=not s.progress,
            mininterval=1.0,
        )

        def after_chunk(result: ChunkResult) -> bool:
            p.step += 1
            lr = self._set_lr()
            bar.update(1)
            bar.set_postfix(
                bpc=f"{result.loss / LN2:.3f}", grad=f"{result.grad_norm:.2f}", refresh=False
            )
            if p.step % s.log_every == 0:
                self.log.write(
                    epoch=p.epoch + 1,
                    step=p.step,
                    train_bpc=result.loss / LN2,
                    grad_norm=result.grad_norm,
                    lr=lr,
                )
            return self.out_of_budget()

        self._set_lr()
        start = time.monotonic()
        meter = SavedTensorMeter()
        with meter if s.measure_memory else nullcontext():
            results = train_streams(
                self.model, self.data.train, self.optimizer, bptt, s.clip_norm, offset, after_chunk
            )
        bar.close()
        return epoch_metrics(results, time.monotonic() - start, s, meter.peak)

    def end_epoch(self, train_metrics: dict[str, float], started: float) -> bool:
        """Validate, keep the best model, adjust the rate; True when training should stop."""
        p = self.progress
        p.epoch += 1
        valid_bpc = evaluate_bpc(self.model, self.data.valid)
        improved = p.record(valid_bpc, higher_is_better=False)
        self.schedule.after_validation(improved)
        elapsed = (p.history[-1]["elapsed_s"] if p.history else 0.0) + time.monotonic() - started
        record = {
            "epoch": p.epoch,
            "step": p.step,
            "valid_bpc": valid_bpc,
            "unigram_bpc": self.data.unigram_bpc,
            **train_metrics,
            "best": improved,
            "elapsed_s": elapsed,
        }
        p.history.append(record)
        self.log.write(**record)
        print(json.dumps(record), flush=True)
        if improved:
            metadata = {"settings": self.s.to_dict(), **record}
            export_model(
                self.s.run_dir / "best", self.model, self.data.vocabulary, metadata, self.s
            )
        return p.bad_epochs >= self.s.patience

    def run(self) -> Progress:
        """Train until the epochs, the budget or the patience run out; the best model is in best/."""
        s, checkpoint = self.s, self.s.run_dir / CHECKPOINT
        s.run_dir.mkdir(parents=True, exist_ok=True)
        if s.resume and checkpoint.is_file():
            self.progress = load_checkpoint(checkpoint, self.model, self.optimizer, self.schedule)
        else:
            (s.run_dir / METRICS_LOG).unlink(missing_ok=True)
            (s.run_dir / "settings.json").write_text(json.dumps(s.to_dict(), indent=2))
        while self.progress.epoch < s.epochs:
            started = self.started = time.monotonic()
            stop = self.end_epoch(self.train_epoch(), started)
            save_checkpoint(checkpoint, self.model, self.optimizer, self.schedule, self.progress)
            self.started = time.monotonic()  # the epoch's record now holds its elapsed time
            if stop or self.out_of_budget():
                break
        return self.progress


def epoch_metrics(
    results: list[ChunkResult], seconds: float, s: LMSettings, peak_saved: int
) -> dict[str, float]:
    """Training bits/char, gradient norms (before clipping), speed and memory of one epoch."""
    chars = sum(r.characters for r in results)
    norms = [r.grad_norm for r in results]
    metrics = {
        "train_bpc": sum(r.loss * r.characters for r in results) / chars / LN2,
        "grad_norm_mean": sum(norms) / len(norms),
        "grad_norm_max": max(norms),
        "clipped_fraction": sum(n > s.clip_norm > 0 for n in norms) / len(norms),
        "train_seconds": seconds,
        "chars_per_second": chars / seconds,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if s.measure_memory:
        metrics["peak_saved_mb"] = peak_saved / 2**20
    return metrics


def export_model(
    directory: Path,
    model: CharLanguageModel,
    vocabulary: Vocabulary,
    metadata: dict[str, Any],
    s: LMSettings,
) -> dict[str, Any]:
    """save_model, then golden.json from the model as loaded back (fp16-rounded when `half`)."""
    save_model(directory, model, {VOCAB_NAME: vocabulary}, metadata, half=s.half)
    options = {"method": "greedy", "max_length": s.golden_length}
    loaded = load_model(directory, device=next(model.parameters()).device)
    output = generate(loaded.model, vocabulary, GOLDEN_SEED, SearchOptions(**options))
    golden = {"input": GOLDEN_SEED, "options": options, "output": output}
    extra = {"golden.json": json.dumps(golden, indent=2, ensure_ascii=False).encode()}
    save_model(directory, model, {VOCAB_NAME: vocabulary}, metadata, half=s.half, extra_files=extra)
    return golden


def main(args: argparse.Namespace) -> Progress:
    """Train with the preset and flags in `args`; the best model lands in <run>/best."""
    s = resolve_settings(LMSettings, "lm", args)
    torch.manual_seed(s.seed)
    if s.threads:
        torch.set_num_threads(s.threads)
    device = pick_device(s.device)
    data = prepare_data(s, device)
    print(
        f"{data.train.numel()} training characters in {s.batch_size} streams, "
        f"{len(data.vocabulary)} symbols; unigram baseline {data.unigram_bpc:.3f} bits/char"
    )
    progress = LMTrainer(s, data, device).run()
    print(
        f"{s.run_dir}: {progress.step} steps, {progress.epoch} epochs, "
        f"best valid bits/char {progress.best_metric:.4f}"
    )
    return progress


if __name__ == "__main__":
    main(get_args_parser().parse_args())
