"""The BentoML service: captioner, translator and char LM in one process, so one GPU serves all.

`bentoml serve service.service:SeqServe`. The parent process imports this module too, so
nothing here imports torch or loads a model; the worker does both in `__init__`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import bentoml
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.demo_app import demo_app
from service.errors import QuietValidationErrors, answers_errors
from service.guard import RequestGuard, RouteRule
from service.openapi import OpenAPIDocument
from service.overlay import overlay_app
from service.schemas import (
    MAX_BATCH_IMAGES,
    CaptionBatchResponse,
    CaptionLanguage,
    CaptionResponse,
    DecodingOptions,
    GenerateLength,
    GenerateResponse,
    InspectResponse,
    InspectText,
    LMBeamSize,
    LMDecoding,
    ModelName,
    SamplingSeed,
    SeedText,
    Sentences,
    Temperature,
    TopK,
    TopUnits,
    TranslateResponse,
    UnitNames,
    UnitProperty,
)
from service.settings import Settings
from service.supervisor import use_private_supervisor_sockets

use_private_supervisor_sockets()  # before `bentoml serve` starts its supervisor
SETTINGS = Settings.from_env()
DEFAULT_OPTIONS = DecodingOptions()  # frozen, so one instance can be every call's default
Images = Annotated[list[Path], Field(min_length=1, max_length=MAX_BATCH_IMAGES)]


@bentoml.service(
    name="seqserve",
    workers=SETTINGS.worker_count(),
    logging={"access": {"enabled": SETTINGS.access_log}},
    threads=SETTINGS.api_threads,
    traffic={"timeout": SETTINGS.request_timeout_s + 5},  # ours answers first, in our shape
    resources={"gpu": SETTINGS.gpus} if SETTINGS.gpus else {},
)
class SeqServe:
    """Image captioning, translation and a character LM, with recurrent sequence models."""

    # declared for `bentoml build`, which packs them into the bento; loaded by the tasks
    captioner_model = bentoml.models.BentoModel(f"{SETTINGS.captioner}:latest")
    translator_model = bentoml.models.BentoModel(f"{SETTINGS.translator_names[0]}:latest")

    def __init__(self) -> None:
        # imported here: torch loads in the serving worker, never in BentoML's parent process
        from service.runtime import Runtime
        from service.tasks import start_tasks
        from service.tasks.caption import CaptionTask
        from service.tasks.language_model import LanguageModelTask
        from service.tasks.translate import TranslateTask

        logging.getLogger("bentoml._internal.server.http_app").addFilter(QuietValidationErrors())
        self.runtime = Runtime(SETTINGS)
        self.captions = CaptionTask(self.runtime)
        self.translations = TranslateTask(self.runtime)
        self.language = LanguageModelTask(self.runtime)
        start_tasks(self.runtime, [self.captions, self.translations, self.language])

    def __is_ready__(self) -> bool:
        return self.runtime.ready

    def __is_alive__(self) -> bool:
        return self.runtime.batcher.alive

    @bentoml.api(route="/caption")
    @answers_errors
    def caption(
        self,
        image: Path,
        options: DecodingOptions = DEFAULT_OPTIONS,
        language: CaptionLanguage = "en",
    ) -> CaptionResponse:
        """Caption one image: a multipart file upload (JPEG, PNG, WebP, GIF first frame, BMP)."""
        return self.captions.caption(image, options, language)

    @bentoml.api(route="/caption_batch")
    @answers_errors
    def caption_batch(
        self,
        images: Images,
        options: DecodingOptions = DEFAULT_OPTIONS,
        language: CaptionLanguage = "en",
    ) -> CaptionBatchResponse:
        """Caption up to 8 images uploaded as repeated `images` file parts, in order."""
        return self.captions.caption_batch(images, options, language)

    @bentoml.api(route="/translate")
    @answers_errors
    def translate(
        self,
        sentences: Sentences,
        options: DecodingOptions = DEFAULT_OPTIONS,
        model: ModelName | None = None,
    ) -> TranslateResponse:
        """Translate up to 32 sentences, in order; `model` picks a translator by name or tag."""
        return self.translations.translate(sentences, options, model)

    @bentoml.api(route="/generate")
    @answers_errors
    def generate(
        self,
        text: SeedText = "",
        length: GenerateLength = 200,
        decoding: LMDecoding = "greedy",
        temperature: Temperature = 1.0,
        top_k: TopK = 0,
        seed: SamplingSeed | None = None,
        beam_size: LMBeamSize = 5,
    ) -> GenerateResponse:
        """Continue `text` (empty: a new text) by `length` characters with the char LM."""
        return self.language.generate(text, length, decoding, temperature, top_k, seed, beam_size)

    @bentoml.api(route="/inspect")
    @answers_errors
    def inspect(
        self,
        text: InspectText,
        units: UnitNames | None = None,
        property: UnitProperty | None = None,
        top: TopUnits = 5,
    ) -> InspectResponse:
        """The char LM's units over `text`: the named `units`, or the `top` tracking `property`."""
        return self.language.inspect(text, units, property, top)


async def _model_info(_: Request) -> JSONResponse:
    """GET /models: loaded models, versions, vocabulary sizes, scores, device and readiness."""
    return JSONResponse(bentoml.get_current_service().runtime.info())


def _route_rules() -> dict[str, RouteRule]:
    limits = {
        "caption": SETTINGS.caption_body_bytes,
        "caption_batch": SETTINGS.caption_batch_body_bytes,
        "translate": SETTINGS.translate_body_bytes,
        "generate": SETTINGS.translate_body_bytes,  # small JSON bodies, like /translate
        "inspect": SETTINGS.translate_body_bytes,
    }
    rules = {}
    for name, api in SeqServe.apis.items():
        spec = api.input_spec
        files = frozenset(spec.multipart_fields)
        media = "multipart/form-data" if files else "application/json"
        rules[api.route] = RouteRule(
            frozenset({media}), limits[name], files, spec.model_json_schema()
        )
    return rules


SeqServe.add_asgi_middleware(
    RequestGuard, routes=_route_rules(), max_in_flight=SETTINGS.max_in_flight
)
SeqServe.add_asgi_middleware(
    OpenAPIDocument, api_paths=[api.route for api in SeqServe.apis.values()]
)
SeqServe.mount_asgi_app(Starlette(routes=[Route("/models", _model_info)]), path="/")
SeqServe.mount_asgi_app(overlay_app(SETTINGS), path="/")  # POST /caption_overlay
SeqServe.mount_asgi_app(demo_app(), path="/demo")
