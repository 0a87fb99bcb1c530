"""Batched decoding to text through `models.inference`, for validation metrics and evaluation."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from models.captioner import Captioner
from models.ensemble import TranslatorEnsemble
from models.inference import caption_features, opening_with_a_word, source_ids, translate_ids
from models.search import SearchOptions
from models.translator import Translator
from models.vocabulary import Vocabulary


def caption_texts(
    model: Captioner,
    vocabulary: Vocabulary,
    pooled: Tensor,
    grid: Tensor,
    options: SearchOptions,
    batch_size: int = 64,
) -> list[str]:
    """Cached features (N, D), (N, S, D) -> the best caption of each image."""
    device = next(model.parameters()).device
    options = opening_with_a_word(options, vocabulary)
    texts: list[str] = []
    for start in range(0, pooled.size(0), batch_size):
        p = pooled[start : start + batch_size].float().to(device)
        g = grid[start : start + batch_size].float().to(device)
        texts += [vocabulary.decode(h[0].tokens) for h in caption_features(model, p, g, options)]
    return texts


def translate_texts(
    model: Translator | TranslatorEnsemble,
    source: Vocabulary,
    target: Vocabulary,
    sentences: Sequence[str],
    options: SearchOptions,
    batch_size: int = 64,
) -> list[str]:
    """Sentences -> the best translation of each, decoded in length-sorted batches."""
    ids = [source_ids(source, s) for s in sentences]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    texts = [""] * len(ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        hypotheses = translate_ids(model, [ids[i] for i in chunk], options)
        for i, best in zip(chunk, hypotheses, strict=True):
            texts[i] = target.decode(best[0].tokens)
    return texts
