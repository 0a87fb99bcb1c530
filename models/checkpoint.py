"""Model directories: config.json, vocab.<name>.json, model.safetensors and checksums.json; no pickles."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from models.atomic import (
    DamagedFileError,
    missing_directory_hint,
    replacing_directory,
    sha256_file,
    write_bytes,
    write_text,
)
from models.captioner import Captioner, CaptionerConfig
from models.language_model import CharLanguageModel, CharLMConfig
from models.translator import Translator, TranslatorConfig
from models.vocabulary import Vocabulary

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CHECKSUMS = "checksums.json"
# kind -> (model class, config class); other model families register themselves here.
MODEL_KINDS: dict[str, tuple[type[nn.Module], type]] = {
    "captioner": (Captioner, CaptionerConfig),
    "translator": (Translator, TranslatorConfig),
    "char_lm": (CharLanguageModel, CharLMConfig),
}


class ChecksumError(DamagedFileError):
    """A model file does not match the checksum recorded when it was saved."""


@dataclass
class LoadedModel:
    """A rebuilt model with its vocabularies and the metadata saved beside it."""

    kind: str
    model: nn.Module
    vocabularies: dict[str, Vocabulary]
    metadata: dict[str, Any] = field(default_factory=dict)


def kind_of(model: nn.Module) -> str:
    """The registered kind name of a model instance."""
    for kind, (model_class, _) in MODEL_KINDS.items():
        if type(model) is model_class:
            return kind
    raise ValueError(f"{type(model).__name__} is not a registered model kind")


def save_model(
    directory: str | Path,
    model: nn.Module,
    vocabularies: dict[str, Vocabulary],
    metadata: dict[str, Any] | None = None,
    half: bool = False,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write `model` as `directory`, replacing what was there as a whole (built beside it, then
    renamed: a kill leaves the old directory or the new one); a frozen pretrained image backbone
    is not stored (its pip package ships it). `half` stores float weights as fp16 (loaded back as
    fp32). `extra_files` (e.g. a golden warm-up input) are written beside the model and covered by
    the checksums."""
    directory = Path(directory)
    skip = _package_weight_prefixes(model)
    tensors = stored_tensors(model, half)
    config = {
        "format_version": FORMAT_VERSION,
        "kind": kind_of(model),
        "config": asdict(model.config),
        "weights_from_package": list(skip),
        "metadata": metadata or {},
    }
    with replacing_directory(directory) as staged:
        write_bytes(staged / WEIGHTS, safetensors_bytes(tensors))
        for name, vocabulary in vocabularies.items():
            vocabulary.save(staged / f"vocab.{name}.json")
        write_text(staged / "config.json", json.dumps(config, indent=2, ensure_ascii=False))
        for name, content in (extra_files or {}).items():
            write_bytes(staged / name, content)
        write_checksums(staged)
    return directory


def stored_tensors(model: nn.Module, half: bool = False) -> dict[str, Tensor]:
    """The state dict as `save_model` stores it: on the CPU, contiguous, fp16 floats when `half`,
    without a frozen backbone its pip package ships; a tied weight (one tensor under two names)
    gets a copy of its own, as safetensors stores no shared memory (loading ties it again)."""
    skip, seen = _package_weight_prefixes(model), set()
    tensors = {}
    for name, t in model.state_dict().items():
        if name.startswith(skip):
            continue
        t = (t.half() if half and t.is_floating_point() else t).detach().cpu().contiguous()
        if t.data_ptr() in seen:
            t = t.clone()
        seen.add(t.data_ptr())
        tensors[name] = t
    return tensors


def load_model(directory: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Rebuild the exact model saved in `directory` (checksums verified), in eval mode on `device`."""
    directory = Path(directory)
    verify_checksums(directory)
    config = json.loads((directory / "config.json").read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory}: unsupported format_version {config.get('format_version')}")
    model_class, config_class = MODEL_KINDS[config["kind"]]
    model = model_class(config_from_dict(config_class, config["config"]))
    tensors = load_file(str(directory / WEIGHTS))
    state = {
        name: tensors[name].to(t.dtype) if name in tensors else t
        for name, t in model.state_dict().items()
    }
    missing = [
        n
        for n in model.state_dict()
        if n not in tensors and not n.startswith(tuple(config["weights_from_package"]))
    ]
    if missing or set(tensors) - set(state):
        raise ValueError(f"{directory}: weights do not match the config (missing {missing[:5]})")
    model.load_state_dict(state)
    vocabularies = {
        path.name[len("vocab.") : -len(".json")]: Vocabulary.load(path)
        for path in sorted(directory.glob("vocab.*.json"))
    }
    return LoadedModel(config["kind"], model.to(device).eval(), vocabularies, config["metadata"])


def config_from_dict(config_class: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) frozen config dataclass from `asdict` output."""
    hints = typing.get_type_hints(config_class)
    values = {}
    for f in dataclasses.fields(config_class):
        if f.name not in data:
            continue
        value = data[f.name]
        if dataclasses.is_dataclass(hints[f.name]) and isinstance(value, dict):
            value = config_from_dict(hints[f.name], value)
        values[f.name] = value
    return config_class(**values)


def _package_weight_prefixes(model: nn.Module) -> tuple[str, ...]:
    encoder = getattr(model, "encoder", None)
    config = getattr(encoder, "config", None)
    if getattr(config, "backbone", None) == "efficientnet-lite0" and not config.trainable:
        return ("encoder.backbone.",)
    return ()


def write_checksums(directory: Path) -> None:
    """Record the sha256 of every file in `directory` in checksums.json."""
    sums = {
        p.name: sha256_file(p)
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != CHECKSUMS
    }
    write_text(directory / CHECKSUMS, json.dumps(sums, indent=2))


def verify_checksums(directory: str | Path) -> None:
    """Raise ChecksumError unless every file listed in checksums.json is present and unchanged."""
    directory = Path(directory)
    listing = directory / CHECKSUMS
    if not listing.is_file():
        hint = missing_directory_hint(directory) if not directory.exists() else ""
        raise ChecksumError(f"{directory}: {CHECKSUMS} is missing; re-export the model{hint}")
    try:
        recorded = json.loads(listing.read_text(encoding="utf-8"))
        expected_sums = {str(name): str(digest) for name, digest in recorded.items()}
    except (ValueError, AttributeError) as error:
        raise ChecksumError(f"{listing}: unreadable ({error}); re-export the model") from None
    for name, expected in expected_sums.items():
        path = directory / name
        if not path.is_file() or sha256_file(path) != expected:
            raise ChecksumError(
                f"{path}: file is missing or its sha256 differs from the one recorded at export; "
                "re-export the model (or copy it again)"
            )
