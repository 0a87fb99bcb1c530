"""Model cards name the licences of the data the model was trained on, read from its manifest."""

from __future__ import annotations

import json
from pathlib import Path

from training.model_card import data_licences


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
