"""`bentoml build` works offline and yields a container recipe with the pinned CUDA torch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bentoml_build_packs_code_models_and_pins(stored_models, tmp_path: Path) -> None:
    import bentoml

    built = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag"],
        cwd=ROOT,
        env=os.environ,  # conftest's temporary BENTOML_HOME holds the tiny models
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    tag = re.search(r"seqserve:\w+", built.stdout).group(0)
    bento = bentoml.get(tag)
    manifest = yaml.safe_load((Path(bento.path) / "bento.yaml").read_text())
    assert manifest["service"] == "service.service:SeqServe"
    assert {m["tag"] for m in manifest["models"]} == {
        stored_models.captioner,
        stored_models.translator,
        stored_models.language_model,  # optional, packed because the store has it
        stored_models.captioner_de,  # optional as well (language=de)
    }
    assert manifest["services"][0]["config"]["resources"] == {"gpu": 1.0}
    source = Path(bento.path) / "src"
    assert (source / "service" / "service.py").is_file() and (
        source / "models" / "search.py"
    ).is_file()
    assert not (source / "tests").exists() and not (source / "data").exists()

    requirements = (Path(bento.path) / "env" / "python" / "requirements.txt").read_text().split()
    assert "torch==2.14.1" in requirements  # PyPI's Linux wheel of 2.14.1 is the CUDA 13 build
    assert "bentoml==1.4.40" in requirements

    bentoml.container.get_containerfile(tag, str(tmp_path))
    (dockerfile,) = tmp_path.glob("*.dockerfile")
    text = dockerfile.read_text()
    assert "FROM python:3.11-slim" in text
    assert "pip install -r $BENTO_PATH/env/python/requirements.txt" in text
    assert 'ENTRYPOINT [ "/home/bentoml/bento/env/docker/entrypoint.sh" ]' in text
    assert "EXPOSE 3000" in text
