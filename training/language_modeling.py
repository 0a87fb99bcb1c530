"""The language-modelling task: a text cut into parallel streams, trained by truncated BPTT."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models.checkpoint import load_model, save_model
from models.language_model import CharLanguageModel, CharLMConfig, generate
from models.search import SearchOptions
from models.tokenizers import CharTokenizer
from models.vocabulary import Vocabulary
from training.data.text import load_text_splits
from training.distributed import Distributed
from training.loop import Batch, Carry
from training.settings import LoopSettings, SettingsError, setting
from training.tbptt import (
    LN2,
    CarriedStateLM,
    to_streams,
    unigram_bpc,
    window_batch,
    window_batches,
)

VOCAB_NAME = "text"  # load_model(...).vocabularies["text"]
GOLDEN_SEED = "The meaning of life is"
EVAL_WINDOW = 256  # validation carries the state across windows, so their size does not matter


@dataclass(frozen=True)
class LMSettings(LoopSettings):
    """Loop settings plus the text, the model shape and truncated BPTT; batch_size = streams."""

    data: str = setting(
        "data/fortunes",
        "UTF-8 text: a file or any folder (train.txt+valid.txt when present; else every file, "
        "the last 5% validating)",
    )
    cell: str = setting("lstm", "recurrent cell: lstm, gru or rnn", choices=("lstm", "gru", "rnn"))
    num_layers: int = setting(2, "stacked recurrent layers")
    hidden_size: int = setting(256, "units per layer")
    embed_size: int = setting(64, "character embedding size")
    dropout: float = setting(0.0, "dropout on embeddings, between layers and before the output")
    bptt: int = setting(100, "characters per chunk: one forward+backward, state carried detached")
    full_bptt: bool = setting(False, "backpropagate through each whole stream in one go instead")
    eval_batch_size: int = setting(32, "parallel streams when measuring validation bits/char")
    max_train_chars: int = setting(0, "train on this prefix of the training text (0: all of it)")
    half: bool = setting(False, "store the best model's float weights as fp16")
    golden_length: int = setting(80, "greedy characters written to best/golden.json")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.select_metric != "loss":
            raise SettingsError(
                "the language model selects on validation loss: --select-metric loss"
            )


def load_splits(data: str, max_train_chars: int) -> tuple[str, str]:
    """(train, valid) text: a folder's train.txt/valid.txt, else its train.txt, every file under
    it or one file, with the last 5% validating (`load_text_splits`); any UTF-8 text."""
    train, valid = load_text_splits(Path(data))
    return (train[:max_train_chars] if max_train_chars > 0 else train), valid


def build_model(s: LMSettings, vocab_size: int) -> CharLanguageModel:
    """A new model shaped by `s`."""
    config = CharLMConfig(vocab_size, s.embed_size, s.hidden_size, s.cell, s.num_layers, s.dropout)
    return CharLanguageModel(config)


class LanguageModelTask:
    """Examples are windows of parallel text streams; a batch is the same window of every stream.

    Training streams: the training text cut into `batch_size` rows (B, L), read in windows of
    `bptt` characters from a random offset below `bptt` each epoch; validation: `eval_batch_size`
    rows in windows of EVAL_WINDOW. The recurrent state flows from one window to the next.
    """

    kind = "char_lm"

    def __init__(self, settings: LMSettings, info: Distributed, device: torch.device) -> None:
        self.settings = s = settings
        train_text, valid_text = load_splits(s.data, s.max_train_chars)
        self.vocabulary = Vocabulary.build([train_text], CharTokenizer())
        encode = self.vocabulary.encode
        train_ids, valid_ids = encode(train_text), encode(valid_text)
        self.streams = {
            "train": to_streams(train_ids, s.batch_size),  # (B, L)
            "valid": to_streams(valid_ids, s.eval_batch_size),  # (B_eval, L_eval)
        }
        self.unigram_bpc = unigram_bpc(train_ids, valid_ids, len(self.vocabulary))
        torch.manual_seed(s.seed)
        self.model = build_model(s, len(self.vocabulary))
        if info.is_main:
            print(
                f"{self.streams['train'].numel()} training characters in {s.batch_size} streams, "
                f"{len(self.vocabulary)} symbols; unigram baseline {self.unigram_bpc:.3f} bits/char"
            )

    def _window(self, split: str) -> int | None:
        """Characters per window of `split`; None: the whole stream (full BPTT)."""
        if split != "train":
            return EVAL_WINDOW
        return None if self.settings.full_bptt else self.settings.bptt

    def batches(self, split: str, epoch: int) -> list[list[int]]:
        window = self._window(split)
        offset = 0
        if split == "train" and window is not None:  # move the window borders every epoch
            offset = random.Random(self.settings.seed + epoch + 1).randrange(window)
        return window_batches(self.streams[split], window, offset)

    def batch(self, split: str, indices: list[int], device: torch.device) -> Batch:
        inputs, targets = window_batch(self.streams[split], indices, self._window(split))
        return Batch((inputs.to(device),), targets.to(device))

    def teacher_forced(self) -> nn.Module:
        return CarriedStateLM(self.model)

    def forward(self, module: nn.Module, batch: Batch, carry: Carry) -> tuple[Tensor, Carry, None]:
        return *module(*batch.inputs, carry), None  # truncated BPTT: the state flows on, detached

    def epoch_metrics(
        self, record: dict[str, Any], decode: bool, device: torch.device
    ) -> dict[str, float]:
        """The losses in bits per character, and the unigram baseline's."""
        bits = {"valid_bpc": record["valid_loss"] / LN2, "unigram_bpc": self.unigram_bpc}
        if "train_loss" in record:
            bits["train_bpc"] = record["train_loss"] / LN2
        return bits

    def save(self, directory: Path, metadata: dict[str, Any]) -> None:
        export_model(directory, self.model, self.vocabulary, metadata, self.settings)


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
