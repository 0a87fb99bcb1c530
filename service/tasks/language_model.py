"""The optional character language model: POST /generate (continue a text), /generate_stream
(the same, character by character) and POST /inspect (its hidden units over a text), each text
run alone through the batch worker."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from models.language_model import CharLanguageModel
from models.search import Hypothesis, SearchOptions
from models.units import Inspection, inspect, property_values, unit_names
from service.artifacts import ServedModel, in_store
from service.errors import RequestError
from service.openapi import request_schema
from service.responses import GenerateResponse, InspectResponse, UnitTrace
from service.runtime import BatchFamily, Job, Runtime
from service.tasks.decoding import ms_since
from service.tasks.generation import (
    STREAM_EVENT_SCHEMA,
    GenerateJob,
    generate_batch,
    generation_options,
    stream_events,
)

logger = logging.getLogger("bentoml.seqserve")
KIND = "char_lm"
ACTIVATION_DECIMALS = 5  # enough to colour text or rank units; keeps 4000 x 32 values small


@dataclass(frozen=True)
class InspectJob:
    text: str
    units: tuple[str, ...] | None
    property: str | None
    top: int
    rows: ClassVar[int] = 1


class LanguageModelTask:
    """/generate and /inspect with the char LM, when the store has one; RequestError otherwise."""

    kind = KIND
    with_source = False

    def __init__(self, runtime: Runtime) -> None:
        self.runtime, self.name = runtime, runtime.settings.language_model

    def model_names(self) -> list[str]:
        """[name] when the configured language model is in the store, else [].

        The language model is optional: without it the service still becomes ready, and
        /generate and /inspect answer 404 model_not_installed. Once it is in the store, it must
        load and pass its golden check like every other model before the service is ready.
        """
        if not in_store(self.name):
            logger.info(
                "no language model %r in the BentoML store: /generate and /inspect answer 404 "
                "(make import-models imports pretrained/charlm)",
                self.name,
            )
            return []
        return [self.name]

    def golden_output(self, served: ServedModel) -> str:
        """The continuation of the model's golden text, through the batch worker."""
        golden = served.golden
        options = SearchOptions(**golden.get("options", {}))
        best = self._hypotheses(served, golden["input"], options)[0]
        return served.target.decode(best.tokens)

    def generate(
        self,
        text: str,
        length: int,
        decoding: str,
        temperature: float,
        top_k: int,
        seed: int | None,
        beam_size: int,
    ) -> GenerateResponse:
        """POST /generate: the best continuation of `text` and its log-probability."""
        started = time.perf_counter()
        served = self.model()
        options = generation_options(decoding, length, temperature, top_k, seed, beam_size)
        best = self._hypotheses(served, text, options)[0]
        return GenerateResponse(
            seed_text=text,
            text=served.target.decode(best.tokens),
            log_prob=best.log_prob,
            model=served.tag,
            time_ms=ms_since(started),
        )

    def inspect(
        self, text: str, units: Sequence[str] | None, property: str | None, top: int
    ) -> InspectResponse:
        """POST /inspect: the named units' activations over `text`, or the `top` units that
        track `property`."""
        started = time.perf_counter()
        served = self.model()
        if (units is None) == (property is None):
            which = "neither was given" if units is None else "not both"
            raise RequestError(
                f"give either units (names like h0.12) or property, {which}", "units"
            )
        if units is not None:
            _check_units(served.model, units)
        characters = served.target.tokenizer.tokenize(text)
        if property is not None and not _varies(property, characters):
            found = Inspection(characters, [])  # no unit can track what never changes
        else:
            job = InspectJob(text, None if units is None else tuple(units), property, top)
            found = self._run(served, "inspect", _inspect_batch, job)
        return InspectResponse(
            characters=found.characters,
            property=property or "",
            units=unit_traces(found),
            model=served.tag,
            time_ms=ms_since(started),
        )

    def stream(
        self,
        text: str,
        length: int,
        decoding: str,
        temperature: float,
        top_k: int,
        seed: int | None,
        beam_size: int,
    ) -> AsyncIterator[str]:
        """POST /generate_stream: /generate's continuation as server-sent events
        (`service.tasks.generation.stream_events`)."""
        served = self.model()
        options = generation_options(decoding, length, temperature, top_k, seed, beam_size)
        return stream_events(self.runtime, served, text, options)

    def amend_document(self, document: dict[str, Any]) -> None:
        """State in the OpenAPI document /generate_stream's events, and /inspect's rules: units
        or property, not both (and neither null); the units of the loaded model."""
        stream = document.get("paths", {}).get("/generate_stream", {}).get("post", {})
        for media in stream.get("responses", {}).get("200", {}).get("content", {}).values():
            media["schema"] = STREAM_EVENT_SCHEMA
        schema = request_schema(document, "/inspect")
        if schema is None:
            return
        schema["oneOf"] = [
            {"required": ["units"], "not": {"required": ["property"]}},
            {"required": ["property"], "not": {"required": ["units"]}},
        ]
        for field in ("units", "property"):
            schema["properties"][field].pop("nullable", None)
        served = self.runtime.models.get(self.name)
        if served is not None:
            schema["properties"]["units"]["items"]["enum"] = unit_names(served.model)

    def model(self) -> ServedModel:
        """The loaded language model, 503 while loading, or 404 model_not_installed."""
        return served_language_model(self.runtime.ready_models(), self.name)

    def _hypotheses(
        self, served: ServedModel, seed_text: str, options: SearchOptions
    ) -> list[Hypothesis]:
        return self._run(served, "generate", generate_batch, GenerateJob(seed_text, options))

    def _run(
        self,
        served: ServedModel,
        task: str,
        run: Callable[[ServedModel, Sequence[Any]], list[Any]],
        job: Job,
    ) -> Any:
        """One job alone through the batch worker (`generate_hypotheses` and `inspect` read one
        text each); a bound the models refuse (ValueError) answers 400."""
        family = BatchFamily(task, served.configured, 1, run)
        try:
            return self.runtime.results([self.runtime.batcher.submit(family, job)])[0]
        except ValueError as error:
            raise RequestError(str(error)) from None


def served_language_model(models: Mapping[str, ServedModel], name: str) -> ServedModel:
    """The loaded language model called `name`, or 404 model_not_installed naming what to do."""
    served = models.get(name)
    if served is None or served.kind != KIND:
        raise RequestError(
            f"no language model is installed: import one into the BentoML store as "
            f"{name or 'charlm'!r} (make import-models) and restart",
            code="model_not_installed",
            status=404,
        )
    return served


def _inspect_batch(served: ServedModel, jobs: Sequence[InspectJob]) -> list[Any]:
    model, vocabulary = served.model, served.target
    return [inspect(model, vocabulary, j.text, j.units, j.property, j.top) for j in jobs]


def unit_traces(inspection: Inspection) -> list[UnitTrace]:
    """Inspection units -> response objects (activations rounded; 0.0 r for named units)."""
    return [
        UnitTrace(
            unit=u.unit,
            activations=[round(a, ACTIVATION_DECIMALS) for a in u.activations],
            correlation=0.0 if u.correlation is None else round(u.correlation, 4),
        )
        for u in inspection.units
    ]


def _varies(property: str, characters: list[str]) -> bool:
    """Whether `property` changes over the characters (models.units refuses one that does not)."""
    try:
        property_values(property, characters)
    except ValueError:
        return False
    return True


def _check_units(model: CharLanguageModel, units: Sequence[str]) -> None:
    known = set(unit_names(model))
    for i, unit in enumerate(units):
        if unit not in known:
            raise RequestError(
                f"unknown unit {unit!r}; this model has {_unit_ranges(model)}", f"units[{i}]"
            )


def _unit_ranges(model: CharLanguageModel) -> str:
    c = model.config
    states = ("h", "c") if c.cell == "lstm" else ("h",)
    last = c.hidden_size - 1
    return ", ".join(
        f"{s}{layer}.0 to {s}{layer}.{last}" for s in states for layer in range(c.num_layers)
    )
