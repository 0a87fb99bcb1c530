"""Export into a temporary BentoML store, golden warm-up files, and idempotent import-shipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from models.checkpoint import load_model, verify_checksums
from models.inference import caption_images, translate
from models.search import SearchOptions
from training import train_captioner, train_translator

ROOT = Path(__file__).resolve().parents[1]
# bentoml reads BENTOML_HOME once per process: run the store side in a fresh one.
SCRIPT = """
import json, sys
from pathlib import Path
from training import export
parse = export.get_args_parser().parse_args
out, cache = Path(sys.argv[1]), sys.argv[2]
tags = []
for name, model in zip(("translator", "captioner"), sys.argv[3:]):
    tags += export.main(parse(["save", "--model", model, "--ship-dir", str(out / "shipped" / name), "--feature-cache", cache]))
again = export.main(parse(["import-shipped", "--shipped-dir", str(out / "shipped")]))
import bentoml
stored = {name: [str(m.tag) for m in bentoml.models.list(name)] for name in ("translator", "captioner")}
paths = {name: bentoml.models.get(name + ":latest").path for name in stored}
print(json.dumps({"tags": tags, "again": again, "stored": stored, "paths": paths}))
"""


def train_tiny(module, out: Path, *flags: str) -> str:
    args = module.get_args_parser().parse_args(
        ["--preset", "tiny", "--output-dir", str(out), "--no-progress", "--epochs", "1", *flags]
    )
    module.main(args)
    return str(next(out.glob("*_tiny")) / "best")


def test_export_golden_files_and_idempotent_import(tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    translator = train_tiny(train_translator, tmp_path / "t")
    captioner = train_tiny(train_captioner, tmp_path / "c", "--feature-cache", cache)
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), cache, translator, captioner],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=180,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(report["again"]) == sorted(report["tags"])  # the second import skipped both
    assert all(len(tags) == 1 for tags in report["stored"].values())
    for name, path in report["paths"].items():
        store_dir = Path(path)
        verify_checksums(store_dir)
        golden = json.loads((store_dir / "golden.json").read_text())
        assert golden["options"]["method"] == "greedy"
        assert golden_output(store_dir, name, golden) == golden["output"]
    assert (Path(report["paths"]["captioner"]) / "golden.png").is_file()


def golden_output(directory: Path, kind: str, golden: dict) -> str:
    """Recompute the golden output the way the service does at start-up."""
    from PIL import Image

    loaded = load_model(directory)
    options = SearchOptions(**golden["options"])
    if kind == "translator":
        best = translate(loaded.model, loaded.vocabularies["source"], [golden["input"]], options)
        return loaded.vocabularies["target"].decode(best[0][0].tokens)
    with Image.open(directory / golden["input"]) as image:
        pixels = loaded.model.encoder.preprocess(image).unsqueeze(0)
    best = caption_images(loaded.model, pixels, options)
    return loaded.vocabularies["caption"].decode(best[0][0].tokens)
