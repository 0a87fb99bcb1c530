"""The shipped character language model loads, passes its golden check and keeps its units."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_model
from models.language_model import CharLanguageModel, generate
from models.search import SearchOptions
from models.units import inspect, unit_names

SHIPPED = Path(__file__).resolve().parents[1] / "pretrained" / "charlm"


@pytest.fixture(scope="module")
def shipped():  # type: ignore[no-untyped-def]
    if not (SHIPPED / "config.json").is_file():
        pytest.skip("pretrained/charlm is not there")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model(SHIPPED)  # checksums verified
    torch.set_num_threads(threads)


def test_the_shipped_model_reproduces_its_golden_output(shipped) -> None:  # type: ignore[no-untyped-def]
    golden = json.loads((SHIPPED / "golden.json").read_text())
    assert isinstance(shipped.model, CharLanguageModel)
    output = generate(shipped.model, shipped.vocabularies["text"], golden["input"],
                      SearchOptions(**golden["options"]))  # fmt: skip
    assert output == golden["output"]


def test_the_shipped_model_has_a_word_unit(shipped) -> None:  # type: ignore[no-untyped-def]
    text = "Some words, and some (nested) spaces: 'quoted' too.\n" * 4
    found = inspect(shipped.model, shipped.vocabularies["text"], text, property="in_word", top=1)
    assert found.units[0].unit in unit_names(shipped.model)
    assert abs(found.units[0].correlation) > 0.5
