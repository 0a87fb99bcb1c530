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
from models.tokenizers import (
    SampledSentencePiece,
    SentencePieceTokenizer,
    WordTokenizer,
    seed_sampling,
)
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

BT_TAG = "<bt>"  # first source token of a back-translated pair (tagged BT, Caswell et al. 2019)
Example = tuple[list[int], list[int]]  # (source ids ending with END, START target ids END)


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
    tie_embeddings: bool = setting(
        False, "the output layer shares the target embedding matrix (Press and Wolf 2017)"
    )
    sp_sampling_alpha: float = setting(
        0.0,
        "subword regularisation: training text is segmented anew each epoch, sampled with this "
        "smoothing (sentencepiece only; 0: off; e.g. 0.3, see docs/training.md)",
    )
    synthetic_dir: str = setting(
        "",
        "folder of back-translated train.<language> pairs (python -m training.back_translate) "
        f"added to training only, each source starting with the tag {BT_TAG} (empty: none)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sp_sampling_alpha < 0 or (
            self.sp_sampling_alpha > 0 and self.tokenizer != "sentencepiece"
        ):
            raise SettingsError(
                f"sp_sampling_alpha {self.sp_sampling_alpha} needs tokenizer sentencepiece and "
                "a value >= 0 (0 turns sampling off)"
            )
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
        tie_embeddings=s.tie_embeddings,
    )
    return Translator(config)


def synthetic_pairs(settings: TranslatorSettings) -> list[tuple[str, str]]:
    """The back-translated (source, target) pairs of `synthetic_dir`, or none when it is empty."""
    if not settings.synthetic_dir:
        return []
    if not Path(settings.synthetic_dir).is_dir():
        raise FileNotFoundError(
            f"synthetic_dir {settings.synthetic_dir} does not exist: give --synthetic-dir the "
            "--output-dir of python -m training.back_translate, or leave it empty"
        )
    return load_aligned(*data_files(settings.synthetic_dir, settings.direction, "train"))


def with_tag(vocabulary: Vocabulary) -> Vocabulary:
    """`vocabulary` with BT_TAG as its last id; no text tokenizes to it (the word tokenizer splits
    "<", "bt", ">"; SentencePiece has no such piece), so only the training data puts it first."""
    if BT_TAG in vocabulary.tokens:
        return vocabulary
    return Vocabulary([*vocabulary.tokens, BT_TAG], vocabulary.tokenizer)


def sampling(vocabulary: Vocabulary, alpha: float) -> Vocabulary:
    """The same ids, with a tokenizer that samples each segmentation (subword regularisation)."""
    tokenizer = vocabulary.tokenizer
    if not isinstance(tokenizer, SentencePieceTokenizer):
        raise SettingsError(
            f"sp_sampling_alpha needs a sentencepiece vocabulary, not {tokenizer.kind}"
        )
    return Vocabulary(vocabulary.tokens, SampledSentencePiece(tokenizer, alpha))


def encode_pairs(
    source: Vocabulary, target: Vocabulary, pairs: list[tuple[str, str]]
) -> list[Example]:
    """Text pairs -> (source ids ending with END, START target ids END)."""
    return [(source_ids(source, s), target.encode(t, add_start_end=True)) for s, t in pairs]


class TranslationTask:
    """Examples are (source ids ending with END, START target ids END) pairs; back-translated
    training pairs start with BT_TAG, and with sp_sampling_alpha each epoch has its own
    segmentation of the training text (validation's is always the deterministic one)."""

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
        self.synthetic = synthetic_pairs(settings)
        train = self.pairs["train"] + self.synthetic  # the vocabularies see all training text
        self.source = self._vocabulary("source", [p[0] for p in train])
        self.target = self._vocabulary("target", [p[1] for p in train])
        torch.manual_seed(settings.seed)
        self.model = build_translator(settings, len(self.source), len(self.target))
        self.examples = {s: self._encode(s) for s in ("train", "valid")}
        self.encoded_epoch = 0  # whose segmentation examples["train"] holds

    def _vocabulary(self, name: str, texts: list[str]) -> Vocabulary:
        path = self.settings.run_dir / f"vocab.{name}.json"
        if self.settings.resume and path.is_file():
            return Vocabulary.load(path)
        vocabulary = build_vocabulary(texts, self.settings)
        if name == "source" and self.synthetic:
            vocabulary = with_tag(vocabulary)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.is_main:  # each process builds the same one; one writes it
            vocabulary.save(path)
        return vocabulary

    def _encode(self, split: str, epoch: int = 0) -> list[Example]:
        """A split's examples; "train" adds the tagged synthetic pairs, drops pairs over
        max_tokens and, with sp_sampling_alpha, draws the segmentation of `epoch` (the same
        for the same seed and epoch, on every process and after a resume)."""
        if split != "train":
            return encode_pairs(self.source, self.target, self.pairs[split])
        source, target, alpha = self.source, self.target, self.settings.sp_sampling_alpha
        if alpha > 0:
            seed_sampling(self.settings.seed * 1_000_003 + epoch)
            source, target = sampling(source, alpha), sampling(target, alpha)
        tag = self.source.id_of(BT_TAG)
        encoded = encode_pairs(source, target, self.pairs["train"]) + [
            ([tag, *s], t) for s, t in encode_pairs(source, target, self.synthetic)
        ]
        limit = self.settings.max_tokens
        return [(s, t) for s, t in encoded if len(s) <= limit and len(t) <= limit + 1]

    def batches(self, split: str, epoch: int) -> list[list[int]]:
        if split == "train" and self.settings.sp_sampling_alpha > 0 and epoch != self.encoded_epoch:
            self.examples["train"], self.encoded_epoch = self._encode("train", epoch), epoch
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
            "train_pairs": len(self.pairs["train"]),
            "synthetic_pairs": len(self.synthetic),
        }
        if self.synthetic:
            data.update(synthetic_dir=s.synthetic_dir, synthetic_tag=BT_TAG)
        vocabularies = {"source": self.source, "target": self.target}
        save_model(directory, self.model, vocabularies, {**metadata, "data": data})
