"""The captioning task: Karpathy-format data, a word vocabulary, cached frozen-encoder features
(or, fine-tuning the encoder's last blocks, cached activations of the frozen blocks before them)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from models.attention import doubly_stochastic_penalty
from models.captioner import Captioner, CaptionerConfig
from models.checkpoint import save_model
from models.encoders import EncoderSuffix, ImageEncoderConfig
from models.inference import pad_batch
from models.search import SearchOptions
from models.tokenizers import WordTokenizer
from models.vocabulary import END, PAD, START, Vocabulary
from training.augment import augmented_examples
from training.batching import example_batches
from training.data.common import SplitFractions, hash_fraction, stable_split
from training.data.loaders import (
    CaptionExample,
    DataFormatError,
    held_out_fractions,
    load_caption_dataset,
)
from training.distributed import Distributed
from training.encoder_tuning import plain_captioner, split_encoder
from training.features import FeatureCache
from training.loop import Batch, Carry
from training.metrics import caption_scores
from training.predict import caption_texts
from training.settings import LoopSettings, setting

VOCAB = "caption"


@dataclass(frozen=True)
class CaptionerSettings(LoopSettings):
    """Loop settings plus the captioner's data, vocabulary and decoder shape."""

    dataset: str = setting(
        "data/emoji/dataset_emoji.json",
        "captions: Karpathy split JSON, COCO captions JSON or image<TAB>caption TSV/CSV "
        "(python -m training.data.captions checks and prepares one)",
    )
    images: str = setting("data/emoji/images", "folder the data file's image paths start from")
    styles: str = setting(
        "",
        "emoji/photo data only: comma-separated style folders to keep, e.g. google (empty: all)",
    )
    max_images: int = setting(
        0, "use at most this many images of each split, a stable spread-out subset (0: all)"
    )
    augment_copies: int = setting(
        0,
        "also train on this many altered copies of each training image (moved, recoloured, "
        "blurred...: training/augment.py), made once into <feature-cache>/augmented (0: none)",
    )
    feature_cache: str = setting("runs/cache", "folder of cached encoder features")
    backbone: str = setting(
        "efficientnet-lite0",
        "frozen image encoder: efficientnet-lite0 or small-cnn",
        choices=("efficientnet-lite0", "small-cnn"),
    )
    image_size: int = setting(
        128, "encoder input size in pixels: the grid is size/32 a side (224: 7 x 7)"
    )
    fine_tune_blocks: int = setting(
        0,
        "train the encoder's last N blocks and head with the decoder, on cached activations of "
        "the frozen blocks before them; the model then stores its encoder (0: frozen encoder)",
    )
    encoder_lr_scale: float = setting(
        0.1, "with --fine-tune-blocks: the encoder's learning rate is lr times this"
    )
    attention: str = setting(
        "none",
        "none (Show and Tell), additive (Bahdanau) or multiplicative (Luong)",
        choices=("none", "additive", "multiplicative"),
    )
    attention_input: bool = setting(
        False, "Show, Attend and Tell: attend before each step, gated context into the LSTM input"
    )
    attention_penalty: float = setting(
        0.0, "lambda of the doubly stochastic attention penalty, per caption (0: off)"
    )
    language: str = setting("en", "caption language: en, or a code with sentences_<code> (de)")
    inject_context: bool = setting(False, "also feed the image vector with every word")
    cell: str = setting("lstm", "recurrent cell: lstm, gru or rnn", choices=("lstm", "gru", "rnn"))
    embed_size: int = setting(256, "word embedding size")
    hidden_size: int = setting(512, "decoder hidden size")
    num_layers: int = setting(1, "decoder layers")
    dropout: float = setting(0.3, "dropout on embeddings and decoder outputs")
    attention_size: int = setting(256, "additive attention's hidden size")
    min_freq: int = setting(1, "keep words seen at least this often in training captions")
    max_caption_tokens: int = setting(24, "captions are cut to this many words")
    decode_max_length: int = setting(24, "longest caption decoded for metrics, END included")


MIN_TRAIN_TO_CARVE = 20  # data without validation images gets some from train when it has this many


class EmptySplitError(DataFormatError):
    """A split the run needs has no images left after the data's own filters."""


def load_caption_splits(
    dataset: str, images: str, styles: str = "", language: str = "en", max_images: int = 0
) -> dict[str, list[CaptionExample]]:
    """The splits of a caption data file (any format `load_caption_dataset` reads) in `language`,
    keeping only images under the listed style folders (when given) and at most `max_images` of
    each split. Raises EmptySplitError, naming the filter, when train or valid ends up empty."""
    splits = load_caption_dataset(dataset, Path(images), language=language)
    if not splits["valid"] and len(splits["train"]) >= MIN_TRAIN_TO_CARVE:
        splits["train"], splits["valid"] = carve_valid(splits["train"])
        print(f"{dataset} has no validation split: {len(splits['valid'])} training images validate")
    keep = {s.strip() for s in styles.split(",") if s.strip()}
    if keep:
        splits = {
            name: [e for e in ex if e.image_path.parent.name in keep] for name, ex in splits.items()
        }
    for name in ("train", "valid"):
        if not splits[name]:
            raise EmptySplitError(_empty_split_reason(dataset, name, keep, language))
    if max_images > 0:
        splits = {name: spread_subset(ex, max_images) for name, ex in splits.items()}
    return splits


def carve_valid(
    train: list[CaptionExample],
) -> tuple[list[CaptionExample], list[CaptionExample]]:
    """(train, valid) for data that names no validation images: valid takes the training images
    that `stable_split` holds out (5%, at most 5,000), so the choice is stable across runs."""
    fractions = held_out_fractions(len(train))
    fractions = SplitFractions(train=1 - fractions.valid, valid=fractions.valid, test=0.0)
    chosen = [stable_split(f"valid:{e.image_path}", fractions) == "valid" for e in train]
    if not any(chosen):  # a small set the hash left without one
        chosen[
            min(range(len(train)), key=lambda i: hash_fraction(f"valid:{train[i].image_path}"))
        ] = True
    return (
        [e for e, held in zip(train, chosen, strict=True) if not held],
        [e for e, held in zip(train, chosen, strict=True) if held],
    )


def spread_subset(examples: list[CaptionExample], limit: int) -> list[CaptionExample]:
    """At most `limit` examples, chosen by a hash of the image path (stable, spread over the
    whole list, whatever its order), kept in their original order."""
    if len(examples) <= limit:
        return examples
    chosen = set(
        sorted(
            range(len(examples)), key=lambda i: hash_fraction(f"subset:{examples[i].image_path}")
        )[:limit]
    )
    return [e for i, e in enumerate(examples) if i in chosen]


def _empty_split_reason(dataset: str, split: str, styles: set[str], language: str) -> str:
    reasons = []
    if styles:
        reasons.append(
            f"--styles {','.join(sorted(styles))} keeps only images whose folder has one of "
            "those names (use --styles '' to keep all)"
        )
    if language != "en":
        reasons.append(f"--language {language} keeps only images with sentences_{language}")
    why = "; ".join(reasons) or "the file has no images in it"
    return f"{dataset}: the {split} split is empty: {why}"


def manifest_checksum(data_file: Path) -> str | None:
    """sha256 of the manifest.json beside a prepared data file, when there is one."""
    manifest = Path(data_file).parent / "manifest.json"
    return hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None


class TeacherForcedCaptioner(nn.Module):
    """Cached features and caption prefixes -> logits, as one forward (what DDP wraps). With a
    fine-tuned encoder the cache holds its prefix's activations, which `suffix` finishes."""

    def __init__(self, model: Captioner, suffix: EncoderSuffix | None = None) -> None:
        super().__init__()
        self.model = model
        self.suffix = suffix

    def train(self, mode: bool = True) -> TeacherForcedCaptioner:
        super().train(mode)
        if self.suffix is not None:
            self.suffix.train(mode)  # after the captioner's backbone: its batch norm stays frozen
        return self

    def forward(self, pooled: Tensor, grid: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        """pooled (B, D), grid (B, S, D), tokens (B, T) -> logits (B, T, V), attention (B, T, S).
        With a suffix, grid is the prefix's (B, S', C) and pooled is unused."""
        if self.suffix is not None:
            pooled, grid = self.suffix(grid)  # (B, D), (B, S, D)
        decoder = self.model.decoder
        memory = self.model.memory_from_features(pooled, grid)
        logits, _, weights = decoder(tokens, decoder.init_state(memory))
        return logits, weights


def build_captioner(settings: CaptionerSettings, vocab_size: int) -> Captioner:
    """A new captioner shaped by `settings` (a frozen pretrained encoder comes from its package;
    one that is fine-tuned is stored with the model)."""
    s = settings
    encoder = ImageEncoderConfig(
        backbone=s.backbone,  # type: ignore[arg-type]
        trainable=s.fine_tune_blocks > 0,
        image_size=s.image_size,
    )
    config = CaptionerConfig.create(
        encoder,
        vocab_size,
        embed_size=s.embed_size,
        hidden_size=s.hidden_size,
        cell=s.cell,
        num_layers=s.num_layers,
        dropout=s.dropout,
        attention=s.attention,
        attention_size=s.attention_size,
        inject_context=s.inject_context,
        attention_input=s.attention_input,
    )
    return Captioner(config)


def load_features(
    encoder: nn.Module, paths: list[Path], directory: str, info: Distributed, device: torch.device
) -> FeatureCache:
    """The cache holding every path's `encoder` output (an ImageEncoder's features, or an
    EncoderPrefix's activations); the main process computes what is missing, the others open
    the cache once it is done, to read only."""
    if info.is_main:
        cache = FeatureCache(directory, encoder.to(device))  # type: ignore[arg-type]
        cache.ensure(paths, device=device)
        encoder.cpu()
    if info.enabled:
        dist.barrier()
    if not info.is_main:
        cache = FeatureCache(directory, encoder)  # type: ignore[arg-type]
    return cache


class CaptionTask:
    """Examples are (image, caption) pairs; an image's features are looked up by its cache row."""

    kind = "captioner"

    def __init__(
        self, settings: CaptionerSettings, info: Distributed, device: torch.device
    ) -> None:
        self.settings, self.is_main = settings, info.is_main
        self.splits = load_caption_splits(
            settings.dataset,
            settings.images,
            settings.styles,
            settings.language,
            settings.max_images,
        )
        self.vocabulary = self._vocabulary()  # from the real captions only: copies repeat them
        if settings.augment_copies > 0:
            self.splits["train"] += self._augmented(self.splits["train"], info)
        torch.manual_seed(settings.seed)
        self.model = build_captioner(settings, len(self.vocabulary))
        cached, self.suffix = split_encoder(
            self.model, settings.fine_tune_blocks, settings.encoder_lr_scale
        )
        # evaluation reuses a frozen encoder's features of every split; a tuned one's it computes
        cached_splits = ("train", "valid") if self.suffix is not None else tuple(self.splits)
        paths = [e.image_path for s in cached_splits for e in self.splits[s]]
        self.cache = load_features(cached, paths, settings.feature_cache, info, device)
        self.image_rows = {
            s: self.cache.rows([e.image_path for e in self.splits[s]]) for s in cached_splits
        }
        self.examples = {s: self._pairs(s) for s in ("train", "valid")}

    def _vocabulary(self) -> Vocabulary:
        path = self.settings.run_dir / f"vocab.{VOCAB}.json"
        if self.settings.resume and path.is_file():
            return Vocabulary.load(path)
        captions = [c for e in self.splits["train"] for c in e.captions]
        vocabulary = Vocabulary.build(
            captions, WordTokenizer(lowercase=True), min_freq=self.settings.min_freq
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.is_main:  # each process builds the same one; one writes it
            vocabulary.save(path)
        return vocabulary

    def _augmented(self, train: list[CaptionExample], info: Distributed) -> list[CaptionExample]:
        """The altered copies of the training images (made by the main process)."""
        s = self.settings
        folder = Path(s.feature_cache) / "augmented"
        workers = min(8, os.cpu_count() or 1) if info.is_main else 0
        copies = augmented_examples(train, s.augment_copies, folder, s.seed, s.image_size, workers)
        if info.enabled:
            dist.barrier()
        return copies

    def _pairs(self, split: str) -> list[tuple[int, list[int]]]:
        limit = self.settings.max_caption_tokens
        pairs = []
        for example, row in zip(self.splits[split], self.image_rows[split].tolist(), strict=True):
            for caption in example.captions:
                pairs.append((row, [START, *self.vocabulary.encode(caption)[:limit], END]))
        return pairs

    def batches(self, split: str, epoch: int) -> list[list[int]]:
        lengths = [len(tokens) for _, tokens in self.examples[split]]
        return example_batches(lengths, split, epoch, self.settings.batch_size, self.settings.seed)

    def batch(self, split: str, indices: list[int], device: torch.device) -> Batch:
        pairs = [self.examples[split][i] for i in indices]
        rows = torch.tensor([row for row, _ in pairs])
        tokens, _ = pad_batch([t for _, t in pairs], device)  # (B, T+1) START ... END PAD
        pooled, grid = self.cache.features(rows)  # fp16 (B, D), (B, S, D)
        pooled, grid = pooled.float().to(device), grid.float().to(device)
        return Batch((pooled, grid, tokens[:, :-1]), tokens[:, 1:])

    def teacher_forced(self) -> nn.Module:
        return TeacherForcedCaptioner(self.model, self.suffix)

    def forward(
        self, module: nn.Module, batch: Batch, carry: Carry
    ) -> tuple[Tensor, Carry, Tensor | None]:
        """Captions are independent: nothing carried. With attention_penalty, Show, Attend and
        Tell's doubly stochastic penalty, summed over the batch's captions."""
        logits, weights = module(*batch.inputs)
        penalty = None
        if self.settings.attention_penalty > 0 and weights is not None:
            steps = batch.targets != PAD  # (B, T)
            per_caption = doubly_stochastic_penalty(weights.float(), steps)
            penalty = self.settings.attention_penalty * per_caption * steps.size(0)
        return logits, carry, penalty

    def epoch_metrics(
        self, record: dict[str, Any], decode: bool, device: torch.device
    ) -> dict[str, float]:
        """Greedy CIDEr and BLEU-4 of the first `metric_subset` validation images, when `decode`."""
        if not decode:
            return {}
        limit = self.settings.metric_subset
        examples = self.splits["valid"][:limit]
        rows = self.image_rows["valid"][:limit]
        hypotheses = self.captions(
            rows, SearchOptions("greedy", max_length=self.settings.decode_max_length)
        )
        scores = caption_scores(hypotheses, [e.captions for e in examples])
        return {"cider": scores["cider"], "bleu4": scores["bleu4"]}

    def captions(self, rows: Tensor, options: SearchOptions) -> list[str]:
        """Decode the images at cache `rows` (N,) with `options`."""
        self.model.eval()
        pooled, grid = self.cache.features(rows)  # fp16 (N, D), (N, S, D)
        if self.suffix is not None:
            with torch.no_grad():  # the cached prefix activations (N, S', C) -> features
                device = next(self.model.parameters()).device
                pooled, grid = self.suffix.eval()(grid.float().to(device))
        return caption_texts(self.model, self.vocabulary, pooled, grid, options)

    def save(self, directory: Path, metadata: dict[str, Any]) -> None:
        data = {
            "dataset": self.settings.dataset,
            "manifest_sha256": manifest_checksum(Path(self.settings.dataset)),
        }
        model = plain_captioner(self.model)  # a fine-tuned encoder's weights stored plainly
        save_model(directory, model, {VOCAB: self.vocabulary}, {**metadata, "data": data})
