"""Decoded hypotheses -> the response models: text, scores, per-token log-probs and attention."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from models.search import Hypothesis
from models.vocabulary import SPECIALS, Vocabulary
from service.schemas import (
    Caption,
    CaptionAlternative,
    CaptionToken,
    Translation,
    TranslationAlternative,
    TranslationToken,
)

END_TOKEN = SPECIALS[2]
ATTENTION_DECIMALS = 5


def caption(hypotheses: Sequence[Hypothesis], vocabulary: Vocabulary, attention: bool) -> Caption:
    """One image's hypotheses (best first) -> its caption; attention as an H x W grid per token."""
    found = []
    for h in hypotheses:
        grids = grid_rows(_attention(h, None)) if attention else None
        tokens = [
            CaptionToken(token=name, log_prob=lp, attention=grids[t] if grids else [])
            for t, (name, lp) in enumerate(_scored_tokens(h, vocabulary))
        ]
        found.append(CaptionAlternative(**_summary(h, vocabulary), tokens=tokens))
    return Caption(caption=found[0].text, truncated=found[0].truncated, alternatives=found)


def translation(
    source: str,
    source_tokens: list[str],
    hypotheses: Sequence[Hypothesis],
    vocabulary: Vocabulary,
    attention: bool,
) -> Translation:
    """One sentence's hypotheses (best first) -> its translation; attention over source_tokens."""
    found = []
    for h in hypotheses:
        weights = _attention(h, len(source_tokens)).tolist() if attention else None
        tokens = [
            TranslationToken(token=name, log_prob=lp, attention=weights[t] if weights else [])
            for t, (name, lp) in enumerate(_scored_tokens(h, vocabulary))
        ]
        found.append(TranslationAlternative(**_summary(h, vocabulary), tokens=tokens))
    return Translation(
        source=source,
        source_tokens=source_tokens,
        translation=found[0].text,
        truncated=found[0].truncated,
        alternatives=found,
    )


def _summary(hypothesis: Hypothesis, vocabulary: Vocabulary) -> dict:
    return {
        "text": vocabulary.decode(hypothesis.tokens),
        "score": hypothesis.score,
        "log_prob": hypothesis.log_prob,
        "truncated": hypothesis.truncated,
    }


def _scored_tokens(hypothesis: Hypothesis, vocabulary: Vocabulary) -> list[tuple[str, float]]:
    """(token string, log-prob) for every generated token, the end token included."""
    names = [vocabulary.tokens[i] for i in hypothesis.tokens]
    if not hypothesis.truncated:
        names.append(END_TOKEN)
    return list(zip(names, hypothesis.token_log_probs, strict=True))


def grid_rows(weights: Tensor) -> list[list[list[float]]]:
    """(T, S) -> T grids of H x W: H = W = sqrt(S) for a square feature map, else 1 x S."""
    steps, positions = weights.shape
    side = math.isqrt(positions)
    height = side if side * side == positions else 1
    return weights.reshape(steps, height, positions // height).tolist()


def _attention(hypothesis: Hypothesis, positions: int | None) -> Tensor:
    """(T, S) weights over the first `positions` memory positions (the rest is batch padding)."""
    if hypothesis.attention is None:
        raise ValueError("attention was asked for but the model returned none")
    return hypothesis.attention[:, :positions].double().round(decimals=ATTENTION_DECIMALS)
