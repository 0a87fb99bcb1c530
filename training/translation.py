"""The translation task: line-aligned parallel text, subword (or word) vocabularies, a seq2seq model."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models.checkpoint import save_model
from models.encoders import TextEncoderConfig
from models.inference import pad_batch, source_ids
from models.search import SearchOptions
from models.tokenizers import SentencePieceTokenizer, WordTokenizer
from models.translator import Translator, TranslatorConfig
from models.vocabulary import Vocabulary
from training.batching import example_batches
from training.captioning import manifest_checksum
from training.data.loaders import load_aligned
from training.data.pairs import split_direction
from training.distributed import Distributed
from training.loop import Batch, Carry
from training.metrics import translation_scores
from training.predict import translate_texts
from training.settings import LoopSettings, SettingsError, setting


@dataclass(frozen=True)
class TranslatorSettings(LoopSettings):
    """Loop settings plus the translator's data, vocabularies and model shape."""

    data_dir: str = setting(
        "data/de-en",
        "folder of line-aligned {train,valid,test}.<language> files "
        "(python -m training.data.pairs prepares one from your pairs)",
    )
    direction: str = setting(
        "en-de",
        "SOURCE-TARGET language codes, the data files' suffixes: en-de, de-en, en-fr, en-pt_BR",
    )
    tokenizer: str = setting(
        "sentencepiece", "sentencepiece (subwords) or word", choices=("sentencepiece", "word")
    )
    vocab_size: int = setting(8000, "vocabulary size of each language")
    sp_model_type: str = setting(
        "unigram", "SentencePiece model: unigram or bpe", choices=("unigram", "bpe")
    )
    attention: str = setting(
        "additive",
        "additive (Bahdanau), multiplicative (Luong) or none",
        choices=("additive", "multiplicative", "none"),
    )
    cell: str = setting("lstm", "recurrent cell: lstm, gru or rnn", choices=("lstm", "gru", "rnn"))
    embed_size: int = setting(256, "embedding size (encoder and decoder)")
    hidden_size: int = setting(256, "hidden size (each encoder direction, and the decoder)")
    num_layers: int = setting(1, "recurrent layers (encoder and decoder)")
    bidirectional: bool = setting(True, "bidirectional encoder")
    dropout: float = setting(0.2, "dropout on embeddings and outputs")
    attention_size: int = setting(256, "additive attention's hidden size")
    max_tokens: int = setting(
        80, "training pairs longer than this (either side, in tokens) are skipped"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.direction:  # empty in the generic preset: the data files ask for it
            try:
                split_direction(self.direction)
            except ValueError as error:
                raise SettingsError(str(error)) from None


def data_files(data_dir: str, direction: str, split: str) -> tuple[Path, Path]:
    """A split's source and target files; FileNotFoundError, when the direction names none, saying
    which languages the folder has and which --direction reads them."""
    root = Path(data_dir)
    if not data_dir or not root.is_dir():
        problem = f"data folder {root} does not exist" if data_dir else "no --data-dir given"
        raise FileNotFoundError(
            f"{problem}: give --data-dir a folder of {{train,valid,test}}.<language> files "
            "(python -m training.data.pairs prepares one)"
        )
    if direction:
        files = tuple(root / f"{split}.{language}" for language in split_direction(direction))
        missing = [f for f in files if not f.is_file()]
        if not missing:
            return files  # type: ignore[return-value]
        problem = f"{missing[0]} does not exist"
    else:
        problem = "no --direction given"
    raise FileNotFoundError(f"{problem}; {available_directions(root, split)}")


def available_directions(root: Path, split: str) -> str:
    """What the folder offers: its `<split>.<language>` files and the --direction that reads them
    (the one its manifest.json was prepared for, when it names one)."""
    languages = sorted(p.suffix[1:] for p in root.glob(f"{split}.*"))
    if not languages:
        return f"{root} has no {split}.<language> files (python -m training.data.pairs makes them)"
    found = "/".join(f"{split}.{language}" for language in languages)
    prepared = prepared_languages(root)
    if prepared and set(prepared) <= set(languages):
        return f"{root} has {found}: use --direction {'-'.join(prepared)}"
    if len(languages) == 2:
        first, second = languages
        return f"{root} has {found}: use --direction {first}-{second} or {second}-{first}"
    return f"{root} has {found}: use --direction SOURCE-TARGET with two of these languages"


def prepared_languages(root: Path) -> tuple[str, str] | None:
    """(source, target) from the folder's manifest.json `languages`, when it names them."""
    try:
        languages = json.loads((root / "manifest.json").read_text(encoding="utf-8"))["languages"]
        return str(languages["source"]), str(languages["target"])
    except (OSError, ValueError, KeyError, TypeError):  # no manifest, or not one of ours
        return None


def train_sentencepiece(
    texts: list[str], vocab_size: int, model_type: str
) -> SentencePieceTokenizer:
    """Train a SentencePiece model in memory; no bos/eos/pad of its own (our ids 0-3 are fixed).

    Byte fallback spells characters outside the vocabulary as UTF-8 byte pieces, so nothing
    becomes <unk>; `normalization_rule_name="identity"` keeps the text as our tokenizer left it.
    """
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        byte_fallback=True,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        normalization_rule_name="identity",
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    return SentencePieceTokenizer(model.getvalue())


def build_vocabulary(texts: list[str], settings: TranslatorSettings) -> Vocabulary:
    """A subword or word vocabulary of about `vocab_size` entries, from training text."""
    if settings.tokenizer == "sentencepiece":
        tokenizer = train_sentencepiece(texts, settings.vocab_size, settings.sp_model_type)
        return Vocabulary.from_sentencepiece(tokenizer)
    if settings.tokenizer == "word":
        return Vocabulary.build(texts, WordTokenizer(), max_size=settings.vocab_size)
    raise ValueError(f"tokenizer must be sentencepiece or word, got {settings.tokenizer!r}")


def build_translator(
    settings: TranslatorSettings, source_size: int, target_size: int
) -> Translator:
    """A new translator shaped by `settings`."""
    s = settings
    encoder = TextEncoderConfig(
        source_size, s.embed_size, s.hidden_size, s.cell, s.num_layers, s.dropout, s.bidirectional
    )  # type: ignore[arg-type]
    config = TranslatorConfig.create(
        encoder,
        target_size,
        embed_size=s.embed_size,
        hidden_size=s.hidden_size,
        cell=s.cell,
        num_layers=s.num_layers,
        dropout=s.dropout,
        attention=s.attention,
        attention_size=s.attention_size,
    )
    return Translator(config)


class TranslationTask:
    """Examples are (source ids ending with END, START target ids END) pairs."""

    kind = "translator"

    def __init__(
        self, settings: TranslatorSettings, info: Distributed, device: torch.device
    ) -> None:
        self.settings, self.is_main = settings, info.is_main
        files = {
            s: data_files(settings.data_dir, settings.direction, s) for s in ("train", "valid")
        }
        self.manifest_sha256 = manifest_checksum(files["train"][0])
        self.pairs = {s: load_aligned(*files[s]) for s in ("train", "valid")}
        self.source = self._vocabulary("source", [p[0] for p in self.pairs["train"]])
        self.target = self._vocabulary("target", [p[1] for p in self.pairs["train"]])
        torch.manual_seed(settings.seed)
        self.model = build_translator(settings, len(self.source), len(self.target))
        self.examples = {s: self._encode(s) for s in ("train", "valid")}

    def _vocabulary(self, name: str, texts: list[str]) -> Vocabulary:
        path = self.settings.run_dir / f"vocab.{name}.json"
        if self.settings.resume and path.is_file():
            return Vocabulary.load(path)
        vocabulary = build_vocabulary(texts, self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.is_main:  # each process builds the same one; one writes it
            vocabulary.save(path)
        return vocabulary

    def _encode(self, split: str) -> list[tuple[list[int], list[int]]]:
        encoded = [
            (source_ids(self.source, s), self.target.encode(t, add_start_end=True))
            for s, t in self.pairs[split]
        ]
        if split == "train":
            limit = self.settings.max_tokens
            encoded = [(s, t) for s, t in encoded if len(s) <= limit and len(t) <= limit + 1]
        return encoded

    def batches(self, split: str, epoch: int) -> list[list[int]]:
        lengths = [max(len(s), len(t)) for s, t in self.examples[split]]
        return example_batches(lengths, split, epoch, self.settings.batch_size, self.settings.seed)

    def batch(self, split: str, indices: list[int], device: torch.device) -> Batch:
        pairs = [self.examples[split][i] for i in indices]
        source, lengths = pad_batch([s for s, _ in pairs], device)  # (B, S), (B,)
        tokens, _ = pad_batch([t for _, t in pairs], device)  # (B, T+1) START ... END PAD
        return Batch((source, lengths, tokens[:, :-1]), tokens[:, 1:])

    def teacher_forced(self) -> nn.Module:
        return self.model

    def forward(self, module: nn.Module, batch: Batch, carry: Carry) -> tuple[Tensor, Carry, None]:
        return module(*batch.inputs), carry, None  # pairs are independent: nothing carried

    def epoch_metrics(
        self, record: dict[str, Any], decode: bool, device: torch.device
    ) -> dict[str, float]:
        """Greedy BLEU and chrF of the first `metric_subset` validation pairs, when `decode`."""
        if not decode:
            return {}
        pairs = self.pairs["valid"][: self.settings.metric_subset]
        hypotheses = self.translations(
            [s for s, _ in pairs], SearchOptions("greedy", max_length=200)
        )
        scores = translation_scores(hypotheses, [t for _, t in pairs])
        return {"bleu": float(scores["bleu"]), "chrf": float(scores["chrf"])}

    def translations(self, sentences: list[str], options: SearchOptions) -> list[str]:
        """Decode `sentences` with `options`."""
        self.model.eval()
        return translate_texts(self.model, self.source, self.target, sentences, options)

    def save(self, directory: Path, metadata: dict[str, Any]) -> None:
        s = self.settings
        data = {
            "data_dir": s.data_dir,
            "direction": s.direction,
            "manifest_sha256": self.manifest_sha256,
        }
        vocabularies = {"source": self.source, "target": self.target}
        save_model(directory, self.model, vocabularies, {**metadata, "data": data})
