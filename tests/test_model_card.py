"""Model cards name the licences of the data the model was trained on, read from its manifest."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from models.checkpoint import CHECKSUMS, verify_checksums
from training.model_card import CARD, data_licences, hf_licence, model_card, refresh_card


def test_licences_come_from_the_data_manifest(tmp_path: Path) -> None:
    manifest = {
        "sources": [{"name": "pairs-package", "version": "1.0", "licence": "CC-BY-4.0"}],
        "backgrounds": [{"name": "wall:a", "package": "walls", "version": "2", "licence": "CC0"}],
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    text = data_licences({"dataset": str(tmp_path / "dataset.json")})
    assert "`pairs-package 1.0` (CC-BY-4.0)" in text and "`walls 2` (CC0)" in text
    assert "Ding" not in text and "emoji" not in text  # nothing hard-coded


def test_data_without_a_manifest_says_the_licence_is_unknown(tmp_path: Path) -> None:
    text = data_licences({"data_dir": str(tmp_path)})
    assert text.startswith("unknown") and "manifest.json" in text


def _config(data: dict, settings: dict, kind: str = "translator") -> dict:
    evaluation = {
        "split": "test",
        "examples": 3,
        "results": {"greedy": {"bleu": 12.5, "chrf": 40.1, "seconds": 1.0, "bleu_signature": "s"}},
    }
    return {
        "kind": kind,
        "config": {},
        "metadata": {"settings": settings, "data": data, "evaluation": evaluation},
    }


def _front(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_card_front_matter_comes_from_the_data_and_the_scores(tmp_path: Path) -> None:
    manifest = {"sources": [{"name": "my-pairs", "version": "", "licence": "CC-BY-4.0"}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "config.json").write_text(
        json.dumps(_config({"data_dir": str(tmp_path)}, {"name": "en_fr", "direction": "en-fr"}))
    )
    card = model_card(tmp_path, "python -m training.train_translator")
    front = _front(card)
    assert front["license"] == "cc-by-4.0" and front["datasets"] == ["my-pairs"]
    assert front["language"] == ["en", "fr"] and front["pipeline_tag"] == "translation"
    metrics = front["model-index"][0]["results"][0]["metrics"]
    assert {(m["type"], m["value"]) for m in metrics} == {("bleu", 12.5), ("chrf", 40.1)}
    assert "## Intended use" in card and "## Limitations" in card


def test_mixed_or_missing_licences_are_not_guessed() -> None:
    mixed = {"sources": {"a 1": "MIT", "b 2": "GPL-2+"}}
    assert hf_licence(mixed) == {"license": "other", "license_name": "mixed: GPL-2+, MIT"}
    assert hf_licence({}) == {"license": "unknown"}
    assert hf_licence({"sources": {"x": "Some-Custom"}})["license"] == "other"


def test_refreshing_a_card_keeps_its_prose_and_is_idempotent(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps(_config({}, {"name": "cap", "language": "de"}, kind="captioner"))
    )
    (tmp_path / "MODEL_CARD.md").write_text("# captioner\n\nHand-written words.\n\n## Scores\nx\n")
    first = refresh_card(tmp_path).read_text()
    assert _front(first)["language"] == ["de"] and _front(first)["license"] == "unknown"
    assert "Hand-written words." in first and first.index("## Intended use") < first.index(
        "## Scores"
    )
    assert refresh_card(tmp_path).read_text() == first


def test_every_shipped_model_verifies_and_its_card_can_be_refreshed() -> None:
    """The cards are documentation: refreshing one must never break a model's checksums."""
    shipped = sorted(p for p in (Path(__file__).parents[1] / "pretrained").iterdir() if p.is_dir())
    assert len(shipped) >= 4
    for directory in shipped:
        verify_checksums(directory)
        assert CARD not in json.loads((directory / CHECKSUMS).read_text()), directory
        assert _front((directory / CARD).read_text())["pipeline_tag"]
