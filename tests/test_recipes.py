"""The recipes of docs/training.md run as written: users' caption and pair files -> prepared data ->
trained, evaluated, exported model -> `bentoml serve` -> answers over HTTP.

The commands come from the doc's `recipe-*` code blocks, so a recipe that breaks fails here; only
`--preset fast` becomes `--preset tiny` (seconds, not minutes). The data are generated in the same
shapes (tests/synthetic.py); every command runs in a fresh process, in a scratch folder."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.serving import start_server
from tests.synthetic import english_french_pairs, write_coco_shaped
from training import train_captioner

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "training.md"
pytestmark = pytest.mark.usefixtures("stored_models")  # the tiny default models in the store


def recipe(name: str) -> tuple[list[list[str]], dict[str, str]]:
    """The python commands of code block `recipe-<name>`, and the serve line's environment."""
    block = re.search(rf"```bash recipe-{name}\n(.*?)```", DOC.read_text(), re.S)
    assert block, f"{DOC} has no `recipe-{name}` block"
    commands, env = [], {}
    for line in block.group(1).splitlines():
        words = shlex.split(line)
        if words[0] == "python":
            preset = words.index("--preset") if "--preset" in words else None
            if preset is not None and words[preset + 1] == "fast":
                words[preset + 1] = "tiny"
            commands.append([sys.executable, *words[1:]])
        else:  # NAME=value ... bentoml serve
            assert "bentoml" in words and "serve" in words, line
            env = dict(w.split("=", 1) for w in words if "=" in w)
    return commands, env


def run_all(commands: list[list[str]], cwd: Path) -> None:
    """Each command in `cwd`, with the checkout importable; the output of a failure is shown."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SEQSERVE_TORCH_THREADS": "1"}
    for command in commands:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
        shown = " ".join(command[1:])
        assert done.returncode == 0, f"{shown} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch folder holding what the recipes start from: coco/ and pairs.tsv."""
    folder = tmp_path_factory.mktemp("recipes")
    write_coco_shaped(folder / "coco", n_images=240, seed=3)
    lines = [f"{en}\t{fr}\n" for en, fr in english_french_pairs()]
    (folder / "pairs.tsv").write_text("".join(lines), encoding="utf-8")
    return folder


def test_both_recipes_end_to_end(workdir: Path, tmp_path: Path) -> None:
    """Prepare, train, evaluate, export both; one server answers with both new models."""
    captioner, caption_env = recipe("captioner")
    translator, translate_env = recipe("translator")
    run_all(captioner + translator, workdir)
    assert (workdir / "runs" / "coco_captioner" / "eval_test.json").is_file()

    home = Path(os.environ["BENTOML_HOME"])
    with start_server(home, tmp_path / "serve.log", {**caption_env, **translate_env}) as server:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as client:
            models = {m["name"]: m for m in client.get("/models").json()["models"]}
            assert models["captioner_coco"]["kind"] == "captioner"
            assert models["captioner_coco"]["uncertainty_fitted"]  # calibrate ran
            french = models["translator_en_fr"]
            assert (french["source_language"], french["target_language"]) == ("en", "fr")
            assert "translator" in models  # the default stays, served beside it

            image = next((workdir / "coco" / "val2014").glob("*.jpg"))
            answer = client.post("/caption", files={"image": (image.name, image.read_bytes())})
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"].startswith("captioner_coco:")
            words = answer.json()["caption"].split()
            assert words and set(words) <= shapes_vocabulary(workdir / "coco" / "captions.tsv")

            body = {"sentences": ["the red cat sleeps ."], "model": "translator_en_fr"}
            answer = client.post("/translate", json=body)
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"].startswith("translator_en_fr:")
            french = set("".join(fr for _, fr in english_french_pairs()))
            translation = answer.json()["translations"][0]["translation"]
            assert translation and set(translation) <= french  # tiny model: letters, not words


def shapes_vocabulary(tsv: Path) -> set[str]:
    """Every word of the synthetic captions (the header line's included: harmless)."""
    return {w for line in tsv.read_text().splitlines() for w in line.split("\t")[-1].split()}


@pytest.mark.parametrize("preset", ["fast", "coco"])
def test_coco_shaped_data_trains_with_the_presets_that_claim_it(
    preset: str, workdir: Path, tmp_path: Path
) -> None:
    """The real presets on the COCO-shaped files as published (no prepare step), two steps each."""
    coco = workdir / "coco"
    flags = ["--preset", preset, "--dataset", str(coco / "dataset_coco.json")]
    flags += ["--images", str(coco), "--output-dir", str(tmp_path), "--name", preset]
    flags += ["--max-steps", "2", "--epochs", "1", "--metric-subset", "8", "--no-progress"]
    flags += ["--feature-cache", str(tmp_path / "cache"), "--threads", "1"]
    progress = train_captioner.main(train_captioner.get_args_parser().parse_args(flags))
    assert progress.step == 2
    assert (tmp_path / preset / "best" / "config.json").is_file()
