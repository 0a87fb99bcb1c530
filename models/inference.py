"""Batched inference entry points shared by evaluation, benchmarks and the service."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from models.captioner import Captioner
from models.ensemble import TranslatorEnsemble
from models.search import Hypothesis, SearchOptions, decode
from models.translator import Translator
from models.vocabulary import END, PAD, Vocabulary


def precision(device: torch.device, autocast: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on `device`, or nothing for "none" (evaluation and benchmarks)."""
    if autocast == "none":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[autocast]
    return torch.autocast(device.type, dtype=dtype)


def source_ids(vocabulary: Vocabulary, text: str) -> list[int]:
    """Source sentence -> ids ending with END (what the translator is trained on)."""
    return [*vocabulary.encode(text), END]


def pad_batch(
    sequences: Sequence[Sequence[int]], device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """Right-pad id lists with PAD -> ids (B, S) and lengths (B,)."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    ids = torch.full((len(sequences), int(lengths.max())), PAD, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
    return ids.to(device), lengths.to(device)


def opening_with_a_word(options: SearchOptions, vocabulary: Vocabulary) -> SearchOptions:
    """`options` under which a caption that may not be empty (min_length >= 1) starts with a word:
    tokens without a letter or digit (".", ",") cannot come first, so "." is no caption either."""
    if options.min_length < 1:
        return options
    return dataclasses.replace(options, never_first=vocabulary.punctuation_ids())


@torch.inference_mode()
def caption_images(
    model: Captioner, images: Tensor, options: SearchOptions
) -> list[list[Hypothesis]]:
    """Preprocessed images (B, 3, S, S) -> hypotheses per image, best first."""
    return decode(model.decoder, model.init_state(images), options)


@torch.inference_mode()
def caption_features(
    model: Captioner, pooled: Tensor, grid: Tensor, options: SearchOptions
) -> list[list[Hypothesis]]:
    """Cached encoder features (B, D), (B, S, D) -> hypotheses per image, best first."""
    return decode(
        model.decoder, model.decoder.init_state(model.memory_from_features(pooled, grid)), options
    )


@torch.inference_mode()
def translate_ids(
    model: Translator | TranslatorEnsemble, sources: Sequence[Sequence[int]], options: SearchOptions
) -> list[list[Hypothesis]]:
    """Source id lists (each ending with END) -> hypotheses per sentence, best first; an
    ensemble decodes like one translator (its decoder steps every member)."""
    device = next(model.parameters()).device
    ids, lengths = pad_batch(sources, device)
    return decode(
        model.decoder, model.init_state(ids, lengths), options, model.max_lengths(lengths)
    )


def translate(
    model: Translator | TranslatorEnsemble,
    vocabulary: Vocabulary,
    sentences: Sequence[str],
    options: SearchOptions,
) -> list[list[Hypothesis]]:
    """Sentences -> hypotheses per sentence, best first."""
    return translate_ids(model, [source_ids(vocabulary, s) for s in sentences], options)
