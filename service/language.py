"""The optional character language model at serving time: its store model, its batch jobs, and the
work behind POST /generate and POST /inspect."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from models.language_model import CharLanguageModel, generate_hypotheses
from models.search import Hypothesis, SearchOptions
from models.units import Inspection, inspect, property_values, unit_names
from service.artifacts import ServedModel
from service.errors import RequestError
from service.schemas import UnitTrace
from service.settings import Settings

if TYPE_CHECKING:  # the runtime imports this module
    from service.runtime import Runtime

logger = logging.getLogger("bentoml.seqserve")
KIND = "char_lm"
# Batch job families. `generate_hypotheses` and `inspect` read one text each, so every job runs
# alone: the batch worker takes one row at a time for these families.
TASKS = ("generate", "inspect")
ACTIVATION_DECIMALS = 5  # enough to colour text or rank units; keeps 4000 x 32 values small


@dataclass(frozen=True)
class GenerateJob:
    seed_text: str
    options: SearchOptions


@dataclass(frozen=True)
class InspectJob:
    text: str
    units: tuple[str, ...] | None
    property: str | None
    top: int


def wanted(settings: Settings) -> list[tuple[str, str]]:
    """[(store name, KIND)] when the configured language model is in the store, else [].

    The language model is optional: without it the service still becomes ready, and /generate
    and /inspect answer 404 model_not_installed. Once it is in the store, it must load and pass
    its golden check like every other model before the service is ready.
    """
    name = settings.language_model
    if not name:
        return []
    import bentoml  # imported here: the parent `bentoml serve` process never needs it loaded

    try:
        bentoml.models.get(f"{name}:latest")
    except bentoml.exceptions.NotFound:
        logger.info(
            "no language model %r in the BentoML store: /generate and /inspect answer 404 "
            "(make import-models imports pretrained/charlm)",
            name,
        )
        return []
    return [(name, KIND)]


def served_language_model(models: dict[str, ServedModel], settings: Settings) -> ServedModel:
    """The loaded language model, or 404 model_not_installed naming what to do."""
    served = models.get(settings.language_model)
    if served is None or served.kind != KIND:
        raise RequestError(
            f"no language model is installed: import one into the BentoML store as "
            f"{settings.language_model or 'charlm'!r} (make import-models) and restart",
            code="model_not_installed",
            status=404,
        )
    return served


def run_batch(served: ServedModel, task: str, jobs: Sequence[Any]) -> list[Any]:
    """In the batch worker (under inference mode): each job through `models`, one at a time."""
    model, vocabulary = served.model, served.target
    if task == "generate":
        return [generate_hypotheses(model, vocabulary, j.seed_text, j.options) for j in jobs]
    return [inspect(model, vocabulary, j.text, j.units, j.property, j.top) for j in jobs]


def hypotheses(
    runtime: Runtime, served: ServedModel, seed_text: str, options: SearchOptions
) -> list[Hypothesis]:
    """Continuations of `seed_text`, best first, computed by the batch worker."""
    return _run(runtime, served, "generate", GenerateJob(seed_text, options))


def generation_options(
    decoding: str, length: int, temperature: float, top_k: int, seed: int | None, beam_size: int
) -> SearchOptions:
    """/generate's fields -> SearchOptions; fields the method does not use keep their defaults."""
    if decoding == "sample":
        return SearchOptions(
            "sample", max_length=length, temperature=temperature, top_k=top_k, seed=seed
        )
    if decoding == "beam":
        return SearchOptions("beam", beam_size=beam_size, max_length=length)
    return SearchOptions("greedy", max_length=length)


class LanguageEndpoints:
    """The work behind /generate and /inspect, given validated inputs; RequestError otherwise."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def generate(
        self,
        seed_text: str,
        decoding: str,
        length: int,
        temperature: float,
        top_k: int,
        seed: int | None,
        beam_size: int,
    ) -> tuple[str, float, str]:
        """The best continuation of `seed_text`, its log-probability and the model's tag."""
        served = self.runtime.language_model()
        options = generation_options(decoding, length, temperature, top_k, seed, beam_size)
        best = hypotheses(self.runtime, served, seed_text, options)[0]
        return served.target.decode(best.tokens), best.log_prob, served.tag

    def inspect(
        self, text: str, units: Sequence[str] | None, property: str | None, top: int
    ) -> tuple[list[str], list[UnitTrace], str]:
        """The named units' activations over `text`, or the `top` units that track `property`."""
        served = self.runtime.language_model()
        if (units is None) == (property is None):
            which = "neither was given" if units is None else "not both"
            raise RequestError(
                f"give either units (names like h0.12) or property, {which}", "units"
            )
        if units is not None:
            _check_units(served.model, units)
        else:
            try:  # a text where the property never changes has no unit tracking it
                property_values(property, served.target.tokenizer.tokenize(text))
            except ValueError as error:
                raise RequestError(str(error), "text") from None
        job = InspectJob(text, None if units is None else tuple(units), property, top)
        found: Inspection = _run(self.runtime, served, "inspect", job)
        return found.characters, unit_traces(found), served.tag


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


def _run(runtime: Runtime, served: ServedModel, task: str, job: Any) -> Any:
    """One job through the batch worker; a bound the models refuse (ValueError) answers 400."""
    try:
        return runtime.results([runtime.batcher.submit((task, served.name), job)])[0]
    except ValueError as error:
        raise RequestError(str(error)) from None
