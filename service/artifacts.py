"""Model artifacts in the BentoML store: find them, load them with checksums verified, read their golden."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.checkpoint import load_model
from models.ensemble import TranslatorEnsemble, check_members_agree
from models.inference import translate
from models.search import SearchOptions
from models.vocabulary import Vocabulary
from service.settings import ENSEMBLE_JOIN, ensemble_members, store_tag

GOLDEN = "golden.json"
# vocabulary file names tried in order (vocab.<name>.json); a single vocabulary serves every role
TARGET_NAMES = ("target", "tgt", "caption", "captions", "words")
SOURCE_NAMES = ("source", "src")


class ArtifactError(RuntimeError):
    """A model in the store is missing, incomplete or fails its golden check."""


@dataclass
class ServedModel:
    """A loaded store model with what the service needs to answer with it."""

    name: str  # store name, e.g. "captioner"
    tag: str  # "captioner:<version>"
    configured: str  # as the settings name it: "captioner" (latest) or a tag; the runtime's key
    kind: str  # "captioner" | "translator" | "char_lm"
    model: nn.Module
    target: Vocabulary
    source: Vocabulary | None  # a translator's; None for models that read no text
    path: Path
    golden: dict[str, Any]
    scores: dict[str, Any] = field(default_factory=dict)
    autocast: bool = False  # bf16 autocast on CUDA; switched off if it changes the golden output
    language: str = ""  # the output language its training settings name, when they name one
    source_language: str = ""  # a translator's input language, from its training direction
    members: list[ServedModel] = field(default_factory=list)  # an ensemble's models; [] for one

    @property
    def attention(self) -> str:
        return _agreed([str(_decoder_config(m.model.config).attention) for m in self.parts])

    @property
    def parts(self) -> list[ServedModel]:
        """The single models it decodes with: an ensemble's members, else itself."""
        return self.members or [self]

    def info(self) -> dict[str, Any]:
        """What GET /models reports about this model; an ensemble adds its members' own."""
        config = self.parts[0].model.config
        return {
            "name": self.name,
            "tag": self.tag,
            "configured": self.configured,
            "kind": self.kind,
            "attention": self.attention,
            "cell": _agreed([_decoder_config(m.model.config).cell for m in self.parts]),
            "vocab_size": {
                "target": len(self.target),
                **({"source": len(self.source)} if self.source is not None else {}),
            },
            "precision": "bf16-autocast" if self.autocast else "fp32",
            # captioners: the image encoder's backbone, whether confidence is calibrated and
            # out_of_domain can be flagged
            **(
                {
                    "image_encoder": config.encoder.backbone,
                    "uncertainty_fitted": getattr(self.model, "uncertainty", None) is not None,
                }
                if hasattr(self.model, "assess")
                else {}
            ),
            **({"language": self.language} if self.language else {}),
            **(
                {"source_language": self.source_language, "target_language": self.language}
                if self.source_language
                else {}
            ),
            "scores": self.scores,
            **({"members": [m.info() for m in self.members]} if self.members else {}),
        }


def in_store(model: str) -> bool:
    """Whether the BentoML store holds `model` ("name" or "name:version"; optional models load
    only then)."""
    import bentoml  # imported here: the parent `bentoml serve` process never needs it loaded

    if not model:
        return False
    try:
        bentoml.models.get(store_tag(model))
    except bentoml.exceptions.NotFound:
        return False
    return True


def load_served_model(
    model: str, kind: str, with_source: bool, device: torch.device
) -> ServedModel:
    """Load `model` ("name": its latest version, or "name:version") from the store, checksums
    verified (ChecksumError on a mismatch); a source vocabulary as well `with_source`.
    "a+b" loads an ensemble (`load_served_ensemble`)."""
    if ENSEMBLE_JOIN in model:
        return load_served_ensemble(model, kind, with_source, device)
    import bentoml  # imported here: the parent `bentoml serve` process never needs it loaded

    try:
        stored = bentoml.models.get(store_tag(model))
    except bentoml.exceptions.NotFound:
        raise ArtifactError(
            f"model {model!r} is not in the BentoML store at $BENTOML_HOME; import it first "
            "(make import-models), or name a version that `bentoml models list` shows"
        ) from None
    path = Path(stored.path)
    loaded = load_model(path, device)
    if loaded.kind != kind:
        raise ArtifactError(f"{stored.tag}: is a {loaded.kind}, expected a {kind}")
    golden_path = path / GOLDEN
    if not golden_path.is_file():
        raise ArtifactError(f"{stored.tag}: {GOLDEN} is missing; re-export the model with it")
    metadata = dict(stored.info.metadata or {})
    source_language, language = languages(loaded.metadata.get("settings", {}))
    return ServedModel(
        name=stored.tag.name,
        tag=str(stored.tag),
        configured=model,
        kind=kind,
        model=loaded.model,
        target=_vocabulary(loaded.vocabularies, TARGET_NAMES, str(stored.tag)),
        source=(
            _vocabulary(loaded.vocabularies, SOURCE_NAMES, str(stored.tag)) if with_source else None
        ),
        path=path,
        golden=json.loads(golden_path.read_text(encoding="utf-8")),
        scores=_scores(metadata) or _scores(loaded.metadata),
        autocast=device.type == "cuda",
        language=language,
        source_language=source_language,
    )


def load_served_ensemble(
    model: str, kind: str, with_source: bool, device: torch.device
) -> ServedModel:
    """Load the members of `model` ("a+b", each "name" or "name:version") as one translator.

    They must agree on languages and vocabularies (ArtifactError naming the members and what
    differs), and each must still translate its own golden sentence as recorded (checked here,
    directly, in fp32). The ensemble's golden is its own fp32 translation of the first member's
    golden sentence: the service's check then shows that the batched serving path, under its
    precision, answers as the plain decode does.
    """
    try:
        names = ensemble_members(model)
    except ValueError as error:
        raise ArtifactError(str(error)) from None
    if kind != "translator":
        raise ArtifactError(f"{model!r}: only translators can be ensembled, not a {kind}")
    members = [load_served_model(name, kind, with_source, device) for name in names]
    _check_members(model, members)
    for member in members:
        output = _golden_translation(member)
        if output != member.golden["output"]:
            raise ArtifactError(
                f"{member.tag} (in {model!r}): golden check failed: expected "
                f"{member.golden['output']!r}, got {output!r}"
            )
    first = members[0]
    served = ServedModel(
        name=model,
        tag=ENSEMBLE_JOIN.join(m.tag for m in members),
        configured=model,
        kind=kind,
        model=TranslatorEnsemble([m.model for m in members]),
        target=first.target,
        source=first.source,
        path=first.path,
        golden={k: v for k, v in first.golden.items() if k != "output"},
        autocast=first.autocast,
        language=first.language,
        source_language=first.source_language,
        members=members,
    )
    served.golden["output"] = _golden_translation(served)
    return served


def _check_members(model: str, members: list[ServedModel]) -> None:
    """ArtifactError, naming every disagreement, unless the members of `model` agree on
    languages and vocabularies."""
    agreements = {
        "source language": [m.source_language for m in members],
        "target language": [m.language for m in members],
        "source vocabulary": [m.source for m in members],
        "target vocabulary": [m.target for m in members],
    }
    problems = []
    for what, values in agreements.items():
        try:
            check_members_agree(what, dict(zip([m.tag for m in members], values, strict=True)))
        except ValueError as error:
            problems.append(str(error))
    if problems:
        raise ArtifactError(f"{model!r}: {'; '.join(problems)}")


def _golden_translation(served: ServedModel) -> str:
    """A translator's output for its golden sentence, decoded directly (no batcher)."""
    golden = served.golden
    options = SearchOptions(**golden.get("options", {}))
    ((best, *_),) = translate(served.model, served.source, [golden["input"]], options)
    return served.target.decode(best.tokens)


def _agreed(values: list[str]) -> str:
    """The value every member has, or "mixed"."""
    return values[0] if len(set(values)) == 1 else "mixed"


def languages(settings: dict[str, Any]) -> tuple[str, str]:
    """(input, output) languages that a model's training settings name, "" where they name none:
    a translator's `direction` ("en-de", "en-pt_BR": the codes never hold a hyphen), a
    captioner's `language`."""
    if settings.get("direction"):
        source, _, target = str(settings["direction"]).partition("-")
        return source, target
    return "", str(settings.get("language", ""))


def _decoder_config(config: Any) -> Any:
    """The decoder's config: captioners and translators hold one, a char LM derives it."""
    return config.decoder if hasattr(config, "decoder") else config.decoder_config()


def _scores(metadata: dict[str, Any]) -> dict[str, Any]:
    """Evaluation scores recorded at export ("evaluation" by training.export, or "scores")."""
    return dict(metadata.get("scores") or metadata.get("evaluation") or {})


def _vocabulary(
    vocabularies: dict[str, Vocabulary], names: tuple[str, ...], tag: str
) -> Vocabulary:
    for name in names:
        if name in vocabularies:
            return vocabularies[name]
    if len(vocabularies) == 1:
        return next(iter(vocabularies.values()))
    raise ArtifactError(
        f"{tag}: no vocabulary named {' or '.join(names)} among {sorted(vocabularies)}"
    )
