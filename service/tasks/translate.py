"""Translation: sentences -> source ids -> batched through a translator -> translations (POST /translate)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from models.inference import source_ids, translate_ids
from models.search import Hypothesis, SearchOptions
from models.vocabulary import Vocabulary
from service.artifacts import ServedModel
from service.errors import RequestError
from service.openapi import request_schema
from service.responses import (
    TranslateResponse,
    Translation,
    TranslationAlternative,
    TranslationToken,
)
from service.runtime import BatchFamily, Runtime
from service.schemas import DecodingOptions
from service.tasks.decoding import (
    END_TOKEN,
    attention_weights,
    by_options,
    ms_since,
    scored_tokens,
    search_options,
    summary,
)


@dataclass(frozen=True)
class TranslateJob:
    """One request's sentences, as source ids; they stay together in one batch."""

    sources: list[list[int]]
    options: SearchOptions

    @property
    def rows(self) -> int:
        return len(self.sources)


class TranslateTask:
    """Translates sentences with one of the configured translators (store models, or ensembles
    "a+b" of them, which batch and decode like one model); RequestError for bad input."""

    kind = "translator"
    with_source = True

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.names = runtime.settings.translator_names  # the first is the default
        self.max_rows = runtime.settings.max_batch_sentences
        self.max_tokens = runtime.settings.max_source_tokens

    def model_names(self) -> list[str]:
        return list(self.names)

    def golden_output(self, served: ServedModel) -> str:
        """The translation of the model's golden sentence, queued like a request."""
        golden = served.golden
        options = SearchOptions(**golden.get("options", {}))
        found = self.hypotheses(served, [golden["input"]], options)
        return served.target.decode(found[0][0].tokens)

    async def translate(
        self, sentences: Sequence[str], options: DecodingOptions, model: str | None
    ) -> TranslateResponse:
        """POST /translate: sentences -> one translation each, in order. Async: tokenising is
        quick, so the event loop submits and awaits the batch itself, without an API thread
        (fewer hand-offs and threads contending for the GIL; bench/README.md, "Translations
        without an API thread")."""
        started = time.perf_counter()
        served = self.model(model)
        future = self.submit(served, sentences, search_options(options))
        (found,) = await self.runtime.results_async([future])
        translations = [
            translation_of(
                sentence,
                [*served.source.tokenizer.tokenize(sentence)[: self.max_tokens], END_TOKEN],
                hypotheses,
                served.target,
                options.return_attention,
            )
            for sentence, hypotheses in zip(sentences, found, strict=True)
        ]
        return TranslateResponse(
            translations=translations, model=served.tag, time_ms=ms_since(started)
        )

    def model(self, name: str | None) -> ServedModel:
        """The translator called `name` (as configured, or its full tag), or the default one."""
        models = self.runtime.ready_models()
        wanted = name or self.names[0]
        for candidate in self.names:
            served = models[candidate]
            if wanted in (served.configured, served.tag):
                return served
        raise RequestError(
            f"unknown model {wanted!r}; available: {', '.join(self.model_choices())}",
            "model",
            code="unknown_model",
        )

    def model_choices(self) -> list[str]:
        """What `model` may be: each translator as configured, and its tag once loaded."""
        loaded = self.runtime.models
        tags = [loaded[name].tag for name in self.names if name in loaded]
        return list(dict.fromkeys([*self.names, *tags]))

    def amend_document(self, document: dict[str, Any]) -> None:
        """State in the OpenAPI document which translators `model` may name."""
        schema = request_schema(document, "/translate")
        if schema is not None:  # null: the default translator
            schema["properties"]["model"]["enum"] = [*self.model_choices(), None]

    def hypotheses(
        self, served: ServedModel, sentences: Sequence[str], options: SearchOptions
    ) -> list[list[Hypothesis]]:
        """Sentences -> hypotheses per sentence, batched with concurrent requests (blocking)."""
        return self.runtime.results([self.submit(served, sentences, options)])[0]

    def submit(
        self, served: ServedModel, sentences: Sequence[str], options: SearchOptions
    ) -> Future:
        """Queue the sentences as one job; its future gets hypotheses per sentence."""
        job = TranslateJob(self.source_tokens(served, sentences), options)
        family = BatchFamily("translate", served.configured, self.max_rows, run_batch)
        return self.runtime.batcher.submit(family, job, job.rows)

    def source_tokens(self, served: ServedModel, sentences: Sequence[str]) -> list[list[int]]:
        """Sentences -> source ids; a sentence over the token limit is refused by index."""
        ids = []
        for i, sentence in enumerate(sentences):
            encoded = source_ids(served.source, sentence)
            if len(encoded) - 1 > self.max_tokens:
                raise RequestError(
                    f"sentence has {len(encoded) - 1} tokens; at most {self.max_tokens} are "
                    "allowed",
                    f"sentences[{i}]",
                )
            ids.append(encoded)
        return ids


def run_batch(served: ServedModel, jobs: Sequence[TranslateJob]) -> list[Any]:
    """In the batch worker: one batched search per distinct options over every queued sentence;
    hypotheses per sentence, per job."""
    results: list[Any] = [None] * len(jobs)
    for options, rows in by_options(jobs):
        sources = [source for row in rows for source in jobs[row].sources]
        found = translate_ids(served.model, sources, options)
        start = 0
        for row in rows:
            count = len(jobs[row].sources)
            results[row] = found[start : start + count]
            start += count
    return results


def translation_of(
    source: str,
    source_tokens: list[str],
    hypotheses: Sequence[Hypothesis],
    vocabulary: Vocabulary,
    attention: bool,
) -> Translation:
    """One sentence's hypotheses (best first) -> its translation; attention over source_tokens."""
    found = []
    for h in hypotheses:
        found_weights = attention_weights(h, len(source_tokens)) if attention else None
        weights = found_weights.tolist() if found_weights is not None else None
        tokens = [
            TranslationToken(token=name, log_prob=lp, attention=weights[t] if weights else [])
            for t, (name, lp) in enumerate(scored_tokens(h, vocabulary))
        ]
        found.append(TranslationAlternative(**summary(h, vocabulary), tokens=tokens))
    return Translation(
        source=source,
        source_tokens=source_tokens,
        translation=found[0].text,
        truncated=found[0].truncated,
        alternatives=found,
    )
