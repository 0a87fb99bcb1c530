"""The BentoML service: captioner, translator and char LM in one process, so one GPU serves all.

`bentoml serve service.service:SeqServe`. The parent process imports this module too, so
nothing here imports torch or loads a model; the worker does both in `__init__`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType
from pydantic import Field
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.access import (
    HEALTH_PATHS,
    METRICS_PATH,
    ApiKeys,
    RequestIdLog,
    RequestIds,
    api_key_options,
    cors_options,
)
from service.admission import Admission, refusal_app
from service.connections import ConnectionAges
from service.demo_app import demo_app
from service.errors import QuietValidationErrors, answers_errors
from service.guard import RequestGuard, RouteRule
from service.openapi import OpenAPIDocument
from service.overlay import overlay_png
from service.responses import (
    CaptionBatchResponse,
    CaptionResponse,
    GenerateResponse,
    InspectResponse,
    ModelsResponse,
    TranslateResponse,
)
from service.schemas import (
    MAX_BATCH_IMAGES,
    CaptionLanguage,
    DecodingOptions,
    GenerateLength,
    InspectProperty,
    InspectText,
    InspectUnits,
    LMBeamSize,
    LMDecoding,
    ModelName,
    OverlayAlternative,
    OverlaySize,
    OverlayToken,
    SamplingSeed,
    SeedText,
    Sentences,
    Temperature,
    TopK,
    TopUnits,
    strict_input,
)
from service.settings import Settings, store_tag
from service.streaming import streams_errors
from service.supervisor import use_private_supervisor_sockets

use_private_supervisor_sockets()  # before `bentoml serve` starts its supervisor
SETTINGS = Settings.from_env()
DEFAULT_OPTIONS = DecodingOptions()  # frozen, so one instance can be every call's default
Images = Annotated[list[Path], Field(min_length=1, max_length=MAX_BATCH_IMAGES)]
PNG = Annotated[Path, ContentType("image/png")]


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
    captioner_model = bentoml.models.BentoModel(store_tag(SETTINGS.captioner))
    translator_model = bentoml.models.BentoModel(store_tag(SETTINGS.translator_store_models[0]))

    def __init__(self) -> None:
        # imported here: torch loads in the serving worker, never in BentoML's parent process
        from service.runtime import Runtime
        from service.tasks import start_tasks
        from service.tasks.caption import CaptionTask
        from service.tasks.language_model import LanguageModelTask
        from service.tasks.translate import TranslateTask

        logging.getLogger("bentoml._internal.server.http_app").addFilter(QuietValidationErrors())
        for name in ("bentoml.access", "bentoml.seqserve"):
            logging.getLogger(name).addFilter(RequestIdLog())
        self.runtime = Runtime(SETTINGS)
        self.captions = CaptionTask(self.runtime)
        self.translations = TranslateTask(self.runtime)
        self.language = LanguageModelTask(self.runtime)
        start_tasks(self.runtime, [self.captions, self.translations, self.language])

    def __is_ready__(self) -> bool:
        return self.runtime.ready

    def __is_alive__(self) -> bool:
        return self.runtime.batcher.alive

    def amend_document(self, document: dict[str, Any]) -> None:
        """The OpenAPI document's rules that depend on the loaded models, from their tasks."""
        self.translations.amend_document(document)
        self.language.amend_document(document)

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

    @bentoml.api(route="/caption_overlay")
    @answers_errors
    def caption_overlay(
        self,
        image: Path,
        options: DecodingOptions = DEFAULT_OPTIONS,
        token: OverlayToken = 0,
        alternative: OverlayAlternative = 0,
        size: OverlaySize = 384,
        language: CaptionLanguage = "en",
    ) -> PNG:
        """One word's attention drawn over the image (the encoder's centre square) as a PNG;
        headers X-Caption, X-Token (percent-encoded) and X-Model."""
        found = overlay_png(self.captions, image, options, token, alternative, size, language)
        return found  # type: ignore[return-value]  # a PNG response, headers and all

    @bentoml.api(route="/translate")
    @answers_errors
    async def translate(
        self,
        sentences: Sentences,
        options: DecodingOptions = DEFAULT_OPTIONS,
        model: ModelName | None = None,
    ) -> TranslateResponse:
        """Translate up to 32 sentences, in order; `model` picks a translator by name or tag."""
        return await self.translations.translate(sentences, options, model)

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

    @bentoml.api(route="/generate_stream")
    @streams_errors
    async def generate_stream(
        self,
        ctx: bentoml.Context,
        text: SeedText = "",
        length: GenerateLength = 200,
        decoding: LMDecoding = "greedy",
        temperature: Temperature = 1.0,
        top_k: TopK = 0,
        seed: SamplingSeed | None = None,
        beam_size: LMBeamSize = 5,
    ) -> AsyncIterator[str]:
        """/generate as server-sent events: `text` events ({"text": "..."}) as the characters
        are chosen, then `done` with what /generate answers, or `error` with the error body."""
        events = self.language.stream(text, length, decoding, temperature, top_k, seed, beam_size)
        async for event in events:
            yield event

    @bentoml.api(route="/inspect")
    @answers_errors
    def inspect(
        self,
        text: InspectText,
        units: InspectUnits = None,
        property: InspectProperty = None,
        top: TopUnits = 5,
    ) -> InspectResponse:
        """The char LM's units over `text`: the named `units`, or the `top` tracking `property`."""
        return self.language.inspect(text, units, property, top)

    @bentoml.api(route="/models")
    @answers_errors
    def model_info(self) -> ModelsResponse:
        """The loaded models (tags, vocabulary sizes, scores), device and readiness; GET /models
        answers the same."""
        return ModelsResponse(**self.runtime.info())


async def _model_info(_: Request) -> JSONResponse:
    """GET /models: what POST /models answers, for browsers and curl."""
    return JSONResponse(bentoml.get_current_service().runtime.info())


def _amend_document(document: dict[str, Any]) -> None:
    bentoml.get_current_service().amend_document(document)


def _route_rules(service: bentoml.Service) -> dict[str, RouteRule]:
    small = SETTINGS.translate_body_bytes  # JSON bodies
    limits = {
        "caption": SETTINGS.caption_body_bytes,
        "caption_batch": SETTINGS.caption_batch_body_bytes,
        "caption_overlay": SETTINGS.caption_body_bytes,
        "translate": small,
        "generate": small,
        "generate_stream": small,
        "inspect": small,
        "model_info": small,
    }
    rules = {}
    for name, api in service.apis.items():
        spec = api.input_spec
        files = frozenset(spec.multipart_fields)
        media = "multipart/form-data" if files else "application/json"
        others = frozenset({"GET", "HEAD"}) if name == "model_info" else frozenset()
        rules[api.route] = RouteRule(
            frozenset({media}), limits[name], files, spec.model_json_schema(), others
        )
    return rules


def add_middleware(service: bentoml.Service, amend: Callable[[dict[str, Any]], None]) -> None:
    """Ours in front of `service`'s API routes, outermost first: the door (which stands in front
    of BentoML's own middleware once the app starts), a request ID on every answer, CORS
    (preflights need no key), API keys, the guard, the API document. bench/serving_noop.py puts
    the same in front of routes that do no model work."""
    routes = [api.route for api in service.apis.values()]
    id_routes = [*routes, *HEALTH_PATHS, METRICS_PATH]
    cors, keys = cors_options(SETTINGS), api_key_options(SETTINGS)
    limit = SETTINGS.in_flight_limit()
    refusal = refusal_app(limit)  # with the request ID and CORS headers every answer gets
    refusal = RequestIds(refusal if cors is None else CORSMiddleware(refusal, **cors), id_routes)
    age = SETTINGS.connection_age_s()
    ages = ConnectionAges(age) if age > 0 else None
    service.add_asgi_middleware(Admission, routes=routes, limit=limit, refusal=refusal, ages=ages)
    service.add_asgi_middleware(RequestIds, routes=id_routes)
    if cors is not None:
        service.add_asgi_middleware(CORSMiddleware, **cors)
    service.add_asgi_middleware(ApiKeys, **keys)
    service.add_asgi_middleware(RequestGuard, routes=_route_rules(service))
    service.add_asgi_middleware(
        OpenAPIDocument, api_paths=routes, with_keys=bool(keys["keys"]), amend=amend
    )


for _api in SeqServe.apis.values():
    _api.input_spec = strict_input(_api.input_spec)  # unknown fields: 400, not ignored
add_middleware(SeqServe, _amend_document)
SeqServe.mount_asgi_app(Starlette(routes=[Route("/models", _model_info)]), path="/")
SeqServe.mount_asgi_app(demo_app(), path="/demo")
