"""The framework ceiling of `bench.serving`: our service's HTTP stack with routes that do no model
work, so what it answers per second is what BentoML, our middleware and the client cost alone.

    bentoml serve bench.serving_noop:NoopServe       # our middleware on, as in the service
    bentoml serve bench.serving_noop:BareNoopServe   # our middleware off: BentoML alone

Both take the service's settings (workers, threads, traffic, access log: SEQSERVE_*), and
`/caption` and `/translate` with the service's very signatures, so BentoML parses and validates
the same requests the same way (the upload written to a temporary file, strict fields); they
answer a response of the service's shape at once: the caption never reads its image, the
translation is the sentence itself, one token a word.
"""

from __future__ import annotations

import logging
from pathlib import Path

import bentoml

from harness.server import READY_LINE
from service.responses import (
    CaptionAlternative,
    CaptionResponse,
    CaptionToken,
    TranslateResponse,
    Translation,
    TranslationAlternative,
    TranslationToken,
)
from service.schemas import CaptionLanguage, DecodingOptions, ModelName, Sentences, strict_input
from service.service import DEFAULT_OPTIONS, SETTINGS, add_middleware

logger = logging.getLogger("bentoml.seqserve")
CAPTION = "a house with a red roof"
CONFIG = {
    "workers": SETTINGS.worker_count(),
    "logging": {"access": {"enabled": SETTINGS.access_log}},
    "threads": SETTINGS.api_threads,
    "traffic": {"timeout": SETTINGS.request_timeout_s + 5},
}


def caption_response(language: str) -> CaptionResponse:
    words = [*CAPTION.split(), "</s>"]
    tokens = [CaptionToken(token=word, log_prob=0.0) for word in words]
    best = CaptionAlternative(
        text=CAPTION, score=0.0, log_prob=0.0, truncated=False, confidence=1.0, tokens=tokens
    )
    return CaptionResponse(
        caption=CAPTION, truncated=False, confidence=1.0, out_of_domain=False,
        alternatives=[best], language=language, model="noop", time_ms=0.0,
    )  # fmt: skip


def translation(sentence: str) -> Translation:
    words = sentence.split()
    tokens = [TranslationToken(token=word, log_prob=0.0) for word in [*words, "</s>"]]
    best = TranslationAlternative(
        text=sentence, score=0.0, log_prob=0.0, truncated=False, tokens=tokens
    )
    return Translation(
        source=sentence, source_tokens=words, translation=sentence, truncated=False,
        alternatives=[best],
    )  # fmt: skip


class Noop:
    """`/caption` and `/translate` as the service declares them, answered without a model."""

    def __init__(self) -> None:
        logger.info("%s (no models: bench/serving_noop.py)", READY_LINE)

    @bentoml.api(route="/caption")
    def caption(
        self,
        image: Path,
        options: DecodingOptions = DEFAULT_OPTIONS,
        language: CaptionLanguage = "en",
    ) -> CaptionResponse:
        return caption_response(language)

    @bentoml.api(route="/translate")
    async def translate(  # async, as the service's: no API thread
        self,
        sentences: Sentences,
        options: DecodingOptions = DEFAULT_OPTIONS,
        model: ModelName | None = None,
    ) -> TranslateResponse:
        return TranslateResponse(
            translations=[translation(s) for s in sentences], model="noop", time_ms=0.0
        )


NoopServe = bentoml.service(name="noop", **CONFIG)(type("NoopServe", (Noop,), {}))
BareNoopServe = bentoml.service(name="noop-bare", **CONFIG)(type("BareNoopServe", (Noop,), {}))
for _api in NoopServe.apis.values():  # shared by both services
    _api.input_spec = strict_input(_api.input_spec)
add_middleware(NoopServe, amend=lambda document: None)
