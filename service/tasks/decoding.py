"""What the caption and translate tasks share: API options -> SearchOptions, jobs grouped by those
options, and hypotheses -> the fields of a response alternative."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from torch import Tensor

from models.search import Hypothesis, SearchOptions
from models.vocabulary import SPECIALS, Vocabulary
from service.schemas import DecodingOptions

END_TOKEN = SPECIALS[2]
ATTENTION_DECIMALS = 5


def search_options(options: DecodingOptions) -> SearchOptions:
    """API options -> SearchOptions. Fields the method does not use keep their defaults, so
    requests that differ only there share a batch; n_best is capped at what the method gives."""
    base = SearchOptions(
        method=options.decoding,
        max_length=options.max_length,
        min_length=options.min_length,
        length_penalty=options.length_penalty,
        no_repeat_ngram_size=options.no_repeat_ngram_size,
    )
    if options.decoding == "beam":
        n_best = min(options.n_best, options.beam_size)
        return replace(base, beam_size=options.beam_size, n_best=n_best)
    if options.decoding == "sample":
        return replace(
            base,
            n_best=options.n_best,
            temperature=options.temperature,
            top_k=options.top_k,
            seed=options.seed,
        )
    return base


def by_options(jobs: Sequence[Any]) -> Iterator[tuple[SearchOptions, list[int]]]:
    """Indices of jobs (each with `.options`) grouped by identical options, first-seen order."""
    groups: dict[SearchOptions, list[int]] = defaultdict(list)
    for row, job in enumerate(jobs):
        groups[job.options].append(row)
    yield from groups.items()


def summary(hypothesis: Hypothesis, vocabulary: Vocabulary) -> dict[str, Any]:
    """The text and scores of one alternative."""
    return {
        "text": vocabulary.decode(hypothesis.tokens),
        "score": hypothesis.score,
        "log_prob": hypothesis.log_prob,
        "truncated": hypothesis.truncated,
    }


def scored_tokens(hypothesis: Hypothesis, vocabulary: Vocabulary) -> list[tuple[str, float]]:
    """(token string, log-prob) for every generated token, the end token included."""
    names = [vocabulary.tokens[i] for i in hypothesis.tokens]
    if not hypothesis.truncated:
        names.append(END_TOKEN)
    return list(zip(names, hypothesis.token_log_probs, strict=True))


def attention_weights(hypothesis: Hypothesis, positions: int | None) -> Tensor | None:
    """(T, S) weights over the first `positions` memory positions (the rest is batch padding);
    None from a model without attention, whose tokens then answer empty attention lists."""
    if hypothesis.attention is None:
        return None
    return hypothesis.attention[:, :positions].double().round(decimals=ATTENTION_DECIMALS)


def ms_since(started: float) -> float:
    """Milliseconds since `started` (a perf_counter reading), as responses report them."""
    return round((time.perf_counter() - started) * 1000, 2)
