"""Unit recording, text properties, the correlation search and `inspect`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.language_model import CharLanguageModel, CharLMConfig
from models.tokenizers import CharTokenizer
from models.units import (
    MAX_INSPECT_CHARS,
    PROPERTIES,
    UnitRecording,
    bracket_depth,
    correlations,
    in_quotes,
    in_word,
    inspect,
    line_position,
    record_units,
    top_units,
    unit_names,
)
from models.vocabulary import Vocabulary

TEXT = 'He said "no (not [yet]) way" twice.\n%\nA second line\'s "quote\n\nends" here.\n'


@pytest.fixture()
def vocab() -> Vocabulary:
    return Vocabulary.build([TEXT], CharTokenizer())


def model_for(vocab: Vocabulary, cell: str) -> CharLanguageModel:
    torch.manual_seed(0)
    return CharLanguageModel(CharLMConfig(len(vocab), 8, 6, cell, 2)).eval()


def values_at(values: np.ndarray, text: str, chars: str) -> list[float]:
    return [float(v) for v, ch in zip(values, text, strict=True) if ch in chars]


def test_properties_on_a_hand_checked_string() -> None:
    text = 'a "b(c[d])" e\nfg'
    assert in_quotes(text).tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert bracket_depth(text).tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 1, 0, 0, 0, 0, 0, 0, 0]
    assert line_position(text).tolist()[-4:] == [13, 0, 1, 2]
    assert in_word("it's a b2").tolist() == [1, 1, 1, 1, 0, 1, 0, 1, 1]


def test_a_paragraph_break_closes_an_unbalanced_quote() -> None:
    values = in_quotes('x "open\n\ny')
    assert values[-1] == 0 and values[3] == 1
    assert in_quotes("“curly” x").tolist() == [1, 1, 1, 1, 1, 1, 0, 0, 0]


def test_search_finds_a_planted_unit() -> None:
    rng = np.random.default_rng(0)
    characters = list((TEXT * 20)[:1000])
    for name, compute in PROPERTIES.items():
        values = compute(characters)
        activations = rng.normal(size=(len(characters), 300)).astype(np.float32)
        activations[:, 123] = -values + rng.normal(scale=0.3 * values.std(), size=len(characters))
        recording = UnitRecording(characters, activations, [f"u{i}" for i in range(300)])
        best = top_units(recording, values, k=3)
        assert best[0].index == 123 and best[0].correlation < -0.9, name
        assert abs(best[1].correlation) < 0.2


def test_correlations_match_numpy_and_ignore_constant_units() -> None:
    rng = np.random.default_rng(1)
    activations = rng.normal(size=(50, 4))
    activations[:, 2] = 1.0
    values = rng.normal(size=50)
    r = correlations(activations, values)
    assert r[2] == 0.0
    assert r[0] == pytest.approx(np.corrcoef(activations[:, 0], values)[0, 1])


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_recording_matches_the_teacher_forced_state(vocab: Vocabulary, cell: str) -> None:
    model = model_for(vocab, cell)
    recording = record_units(model, vocab, TEXT)
    states = 2 if cell == "lstm" else 1
    assert recording.activations.shape == (len(TEXT), states * 2 * 6)
    assert recording.names == unit_names(model) and recording.names[6] == "h1.0"
    for t in (0, 1, 10, 41, len(TEXT) - 1):
        with torch.no_grad():
            _, state = model(torch.tensor([vocab.encode(TEXT[: t + 1])]))
        expected = torch.cat([v.reshape(-1) for v in state.recurrent.values()]).numpy()
        np.testing.assert_allclose(recording.activations[t], expected, atol=1e-5)


def test_inspect_by_units_and_by_property(vocab: Vocabulary) -> None:
    model = model_for(vocab, "lstm")
    chosen = inspect(model, vocab, TEXT, units=["c1.3", "h0.0"])
    assert [u.unit for u in chosen.units] == ["c1.3", "h0.0"]
    assert chosen.characters == list(TEXT) and len(chosen.units[0].activations) == len(TEXT)
    assert chosen.units[0].correlation is None
    found = inspect(model, vocab, TEXT, property="in_quotes", top=4)
    assert len(found.units) == 4
    scores = [abs(u.correlation) for u in found.units]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": ""}, "1 to"),
        ({"text": "x" * (MAX_INSPECT_CHARS + 1)}, "1 to"),
        ({"units": None}, "either units or property"),
        ({"units": ["h9.0"]}, "unknown units"),
        ({"units": [f"h0.{i % 6}" for i in range(40)]}, "units, got 40"),
        ({"units": None, "property": "sarcasm"}, "unknown property"),
        ({"units": None, "property": "in_quotes", "text": "no quotes"}, "never changes"),
        ({"units": None, "property": "in_word", "top": 0}, "top must be"),
    ],
)
def test_inspect_rejects_bad_requests(vocab: Vocabulary, kwargs: dict, message: str) -> None:
    request = {"text": TEXT, "units": ["h0.0"], **kwargs}
    with pytest.raises(ValueError, match=message):
        inspect(model_for(vocab, "lstm"), vocab, **request)
