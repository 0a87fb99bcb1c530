"""`bentoml build` works offline and yields a container recipe with the pinned CUDA torch, and the
built bento serves from outside the checkout as the container would run it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bento_tag(stored_models) -> str:
    """`bentoml build` of the checkout over the tests' store: the new bento's tag."""
    built = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag"],
        cwd=ROOT,
        env=os.environ,  # conftest's temporary BENTOML_HOME holds the tiny models
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return re.search(r"seqserve:\w+", built.stdout).group(0)


@pytest.mark.slow
def test_bentoml_build_packs_code_models_and_pins(
    bento_tag: str, stored_models, tmp_path: Path
) -> None:
    import bentoml

    tag = bento_tag
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


@pytest.mark.slow
def test_built_bento_serves_from_outside_the_checkout(
    bento_tag: str, stored_models, tmp_path: Path
) -> None:
    """`bentoml serve <tag>` as the container's entrypoint runs it, minus the engine: the
    working directory elsewhere and no PYTHONPATH to the checkout, so the code the worker
    imports is the bento's copy. Then a caption and a translation over HTTP."""
    import bentoml

    from harness.server import READY_LINE, Server, free_port, service_workers

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    port = free_port()
    command = ["env", "-C", str(elsewhere), "-u", "PYTHONPATH", sys.executable, "-m", "bentoml",
               "serve", bento_tag, "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    env = {"SEQSERVE_WORKERS": "1", "SEQSERVE_GPUS": "0"}
    with Server.start("bento", command, port, tmp_path / "serve.log", env,
                      ready_line=READY_LINE, workers=service_workers(env)) as server:  # fmt: skip
        server.wait_ready(timeout=180)
        worker = server.worker()
        assert (
            worker is not None and Path(worker.cwd()) == Path(bentoml.get(bento_tag).path) / "src"
        )
        image = (ROOT / "tests" / "fixtures" / "images" / "emoji_cat_face.png").read_bytes()
        caption = httpx.post(f"{server.url}/caption", files={"image": ("cat.png", image, "image/png")},
                             timeout=30)  # fmt: skip
        assert caption.status_code == 200, caption.text
        assert caption.json()["caption"] and caption.json()["model"] == stored_models.captioner
        sentences = list(stored_models.sentences[:2])
        translated = httpx.post(
            f"{server.url}/translate", json={"sentences": sentences}, timeout=30
        )
        assert translated.status_code == 200, translated.text
        answer = translated.json()
        assert [t["source"] for t in answer["translations"]] == sentences
        assert all(t["translation"] for t in answer["translations"])
        assert answer["model"] == stored_models.translator
