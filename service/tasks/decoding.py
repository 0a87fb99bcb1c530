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
from service.artifacts import ServedModel
from service.errors import RequestError
from service.schemas import DecodingOptions

END_TOKEN = SPECIALS[2]
ATTENTION_DECIMALS = 5


def search_options(options: DecodingOptions) -> SearchOptions:
    """API options -> SearchOptions. Fields the method does not use keep their defaults, so
    requests that differ only there share a batch."""
    options.check_consistent()
    base = SearchOptions(
        method=options.decoding,
        max_length=options.max_length,
        min_length=options.min_length,
        length_penalty=options.length_penalty,
        no_repeat_ngram_size=options.no_repeat_ngram_size,
    )
    if options.decoding == "beam":
        return replace(base, beam_size=options.beam_size, n_best=options.n_best)
    if options.decoding == "sample":
        return replace(
            base,
            n_best=options.n_best,
            temperature=options.temperature,
            top_k=options.top_k,
            seed=options.seed,
        )
    return base


def check_attention(served: ServedModel, options: DecodingOptions) -> None:
    """Refuse return_attention for a model without attention."""
    if options.return_attention and served.attention == "none":
        raise RequestError(
            f"{served.tag} has no attention to return; leave return_attention false",
            "options.return_attention",
        )


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


def attention_weights(hypothesis: Hypothesis, positions: int | None) -> Tensor:
    """(T, S) weights over the first `positions` memory positions (the rest is batch padding)."""
    if hypothesis.attention is None:
        raise ValueError("attention was asked for but the model returned none")
    return hypothesis.attention[:, :positions].double().round(decimals=ATTENTION_DECIMALS)


def ms_since(started: float) -> float:
    """Milliseconds since `started` (a perf_counter reading), as responses report them."""
    return round((time.perf_counter() - started) * 1000, 2)
