"""Exported models and the model store lose nothing: damaged files are refused in one line by
every command that reads them, and two imports at once store each model once, whole."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from models.checkpoint import save_model, verify_checksums
from tests import faults
from tests.helpers import random_translator, toy_vocabulary
from training import calibrate, evaluate, export
from training.errors import run_main

pytestmark = pytest.mark.faults


def exported(folder: Path) -> Path:
    """A small model directory as `training.export` writes one (checksums included)."""
    vocabulary = toy_vocabulary()
    vocabularies = {"source": vocabulary, "target": vocabulary}
    return save_model(folder, random_translator(), vocabularies, {"settings": {"name": "toy"}})


def truncate_weights(model: Path) -> str:
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return f"{weights}: file is missing or its sha256 differs"


def alter_vocabulary(model: Path) -> str:
    """A token renamed: still valid JSON, but not what was exported."""
    path = model / "vocab.target.json"
    path.write_text(path.read_text().replace('"a"', '"b2"', 1))
    return f"{path}: file is missing or its sha256 differs"


def truncate_checksums(model: Path) -> str:
    listing = model / "checksums.json"
    listing.write_text(listing.read_text()[:20])
    return f"{listing}: unreadable"


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], object], Callable[[Path], list[str]]]] = {
    "evaluate": (evaluate.main, lambda model: ["--model", str(model)]),
    "export": (export.main, lambda model: ["save", "--model", str(model), "--name", "toy"]),
    "calibrate": (calibrate.main, lambda model: ["--model", str(model)]),
    "import-shipped": (
        export.main,
        lambda model: ["import-shipped", "--shipped-dir", str(model.parent)],
    ),
}


@pytest.mark.parametrize("damage", [truncate_weights, alter_vocabulary, truncate_checksums])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_damaged_model_is_refused_in_one_line_by_every_command(
    tmp_path: Path, command: str, damage: Callable[[Path], str]
) -> None:
    model = exported(tmp_path / "shipped" / "toy")
    expected = damage(model)
    main, flags = COMMANDS[command]
    parser = calibrate if command == "calibrate" else evaluate if command == "evaluate" else export
    with pytest.raises(SystemExit) as stopped:
        run_main(main, parser.get_args_parser().parse_args(flags(model)))
    message = str(stopped.value.code)
    assert message.startswith(f"error: {expected}") and "\n" not in message
    assert "re-export" in message


def test_two_imports_at_once_store_each_model_once_and_whole(tmp_path: Path) -> None:
    shipped = tmp_path / "pretrained"
    for name in ("alpha", "beta"):
        exported(shipped / name)
    (shipped / ".alpha.tmp").mkdir()  # an export killed part way: not a model
    home = tmp_path / "bentoml"
    children = [faults.start_child(faults.import_shipped, home, shipped, 0.5) for _ in range(2)]
    assert [faults.finish(child) for child in children] == [0, 0]
    for name in ("alpha", "beta"):
        versions = [p for p in (home / "models" / name).iterdir() if p.is_dir()]
        assert len(versions) == 1, f"{name}: {len(versions)} copies in the store"
        verify_checksums(versions[0])
        stored = json.loads((versions[0] / "checksums.json").read_text())
        assert stored == json.loads((shipped / name / "checksums.json").read_text())
    assert sorted(p.name for p in (home / "models").iterdir()) == ["alpha", "beta"]
