"""Export trained models to the BentoML store (with a golden warm-up example), and import the
shipped defaults from `pretrained/` into it, idempotently.

    python -m training.export save --model runs/captioner_default/best --ship-dir pretrained/captioner
    python -m training.export import-shipped
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

from models.atomic import write_text
from models.checkpoint import CHECKSUMS, LoadedModel, load_model, save_model, verify_checksums
from models.inference import caption_images, translate
from models.search import SearchOptions
from training.errors import run_main
from training.evaluate import decode, load_eval_data, max_length_of, score
from training.model_card import CARD, data_summary, model_card, training_summary

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "pretrained"
GOLDEN = "golden.json"
GOLDEN_IMAGE = "golden.png"


def as_stored_in_half(loaded: LoadedModel, directory: Path) -> LoadedModel:
    """The model exactly as the service will load it from fp16 weights (`save_model(half=True)`);
    the frozen pretrained backbone is not stored and stays the package's fp32 weights."""
    save_model(directory, loaded.model, loaded.vocabularies, loaded.metadata, half=True)
    return load_model(directory)


def half_check(
    loaded: LoadedModel, half: LoadedModel, limit: int, feature_cache: str
) -> dict[str, Any]:
    """Greedy outputs on the validation split from the fp32 and the fp16-stored weights."""
    data = load_eval_data(loaded, "valid", limit, feature_cache)
    options = SearchOptions("greedy", max_length=max_length_of(loaded))
    before, after = decode(loaded, data, options), decode(half, data, options)
    same = sum(a == b for a, b in zip(before, after, strict=True))
    return {
        "examples": len(before),
        "identical_outputs": same,
        "fp32": score(loaded.kind, before, data),
        "fp16": score(loaded.kind, after, data),
    }


def golden_example(
    loaded: LoadedModel, feature_cache: str
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A held-out test input and the model's exact greedy output, computed as the service will."""
    options = {"method": "greedy", "max_length": max_length_of(loaded)}
    search = SearchOptions(**options)  # type: ignore[arg-type]
    data = load_eval_data(loaded, "test", 200, feature_cache)
    if loaded.kind == "translator":
        short = [s for s in data.inputs if 4 <= len(s.split()) <= 12] or data.inputs
        sentence = short[0]
        hypotheses = translate(loaded.model, loaded.vocabularies["source"], [sentence], search)
        output = loaded.vocabularies["target"].decode(hypotheses[0][0].tokens)
        return {"input": sentence, "options": options, "output": output}, {}
    # a test image the model captions right, when there is one: a readable warm-up
    outputs = decode(loaded, data, search)
    hits = [
        i for i, (o, refs) in enumerate(zip(outputs, data.references, strict=True)) if o in refs
    ]
    path = Path(data.inputs[hits[0] if hits else 0])
    with Image.open(path) as image:
        pixels = loaded.model.encoder.preprocess(image).unsqueeze(0)  # (1, 3, S, S)
    best = caption_images(loaded.model, pixels, search)[0][0]
    output = loaded.vocabularies["caption"].decode(best.tokens)
    golden = {
        "input": GOLDEN_IMAGE,
        "source_image": path.name,
        "options": options,
        "output": output,
    }
    return golden, {GOLDEN_IMAGE: path.read_bytes()}


def export_directory(
    model_dir: Path, out_dir: Path, half: bool, evaluation: Path | None, feature_cache: str
) -> Path:
    """Write the servable directory: weights (fp16 when `half`), vocabularies, golden files."""
    loaded = load_model(model_dir)
    metadata = dict(loaded.metadata)
    metadata["training"] = training_summary(model_dir.parent)
    summary = data_summary(metadata)  # kept, so the card needs no data folder later
    if summary:
        metadata["data"] = {**metadata.get("data", {}), "manifest": summary}
    if half:
        with tempfile.TemporaryDirectory() as tmp:
            stored = as_stored_in_half(loaded, Path(tmp))
        metadata["fp16_check"] = half_check(loaded, stored, 500, feature_cache)
        loaded = stored
    if evaluation is not None and evaluation.is_file():
        report = json.loads(evaluation.read_text())
        metadata["evaluation"] = _evaluation_summary(report)
        others = sorted(evaluation.parent.glob("eval_*.json"))  # the other splits scored beside it
        metadata["evaluations"] = {
            r["split"]: _evaluation_summary(r)
            for r in map(json.loads, (p.read_text() for p in others))
            if "split" in r
        }
    golden, files = golden_example(loaded, feature_cache)
    metadata["golden"] = golden
    files[GOLDEN] = json.dumps(golden, indent=2, ensure_ascii=False).encode()
    save_model(out_dir, loaded.model, loaded.vocabularies, metadata, half=half, extra_files=files)
    return out_dir


def _evaluation_summary(report: dict[str, Any]) -> dict[str, Any]:
    return {k: report[k] for k in ("split", "examples", "results", "baseline") if k in report}


def directory_checksum(directory: Path) -> str:
    """One checksum for a model directory: the sha256 of its checksums.json."""
    return hashlib.sha256((directory / CHECKSUMS).read_bytes()).hexdigest()


def store_metadata(directory: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """BentoML labels and metadata of a model directory, from its config.json."""
    config = json.loads((directory / "config.json").read_text())
    saved = config.get("metadata", {})
    vocab_sizes = {
        p.name[len("vocab.") : -len(".json")]: len(json.loads(p.read_text())["tokens"])
        for p in sorted(directory.glob("vocab.*.json"))
    }
    settings = saved.get("settings", {})
    labels = {"kind": config["kind"], "run": str(settings.get("name", "unknown"))}
    metadata = {
        "checksum": directory_checksum(directory),
        "config": config["config"],
        "vocab_sizes": vocab_sizes,
        "data": saved.get("data", {}),
        "evaluation": saved.get("evaluation", {}),
        "golden": saved.get("golden", {}),
        "fp16_check": saved.get("fp16_check", {}),
    }
    return labels, _without_none(metadata)


def _without_none(value: Any) -> Any:
    """BentoML metadata refuses None: drop such entries (recursively)."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value if v is not None]
    return value


@contextmanager
def store_lock() -> Iterator[None]:
    """Hold an exclusive lock on the BentoML store's folder ($BENTOML_HOME, default ~/bentoml):
    imports run one at a time, so two at once neither both copy a model nor race on its files.
    The kernel drops an flock when its process dies, so a killed import leaves no stale lock."""
    home = Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".seqserve-import.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def import_directory(directory: Path, name: str) -> str:
    """Copy a verified model directory into the store as `name`, unless that exact one is there."""
    verify_checksums(directory)
    labels, metadata = store_metadata(directory)
    with store_lock():
        existing = _stored_with_checksum(name, metadata["checksum"])
        if existing is not None:
            print(f"{name}: {existing} already holds {directory}; skipped")
            return existing
        return _copy_into_store(directory, name, labels, metadata)


def _stored_with_checksum(name: str, checksum: str) -> str | None:
    """The tag of a stored model `name` with this checksum, if there is one."""
    import bentoml
    import bentoml.exceptions

    try:
        existing_models = bentoml.models.list(name)
    except bentoml.exceptions.NotFound:
        existing_models = []
    for existing in existing_models:
        if existing.info.metadata.get("checksum") == checksum:
            return str(existing.tag)
    return None


def _copy_into_store(
    directory: Path, name: str, labels: dict[str, str], metadata: dict[str, Any]
) -> str:
    """A new store model `name` holding the directory's checksummed files (and its card)."""
    import bentoml

    files = [*json.loads((directory / CHECKSUMS).read_text()), CHECKSUMS]
    files += [CARD] if (directory / CARD).is_file() else []  # documentation, not checksummed
    with bentoml.models.create(name, labels=labels, metadata=metadata) as model:
        for file_name in files:
            shutil.copyfile(directory / file_name, Path(model.path) / file_name)
        verify_checksums(Path(model.path))  # the copy, before it is added to the store
    print(f"{name}: imported {directory} as {model.tag}")
    return str(model.tag)


def import_shipped(shipped: Path = SHIPPED_DIR) -> list[str]:
    """Import every `pretrained/<name>/` directory as store model `<name>` (hidden folders, such
    as an interrupted export's `.<name>.tmp`, are not models)."""
    return [
        import_directory(d, d.name)
        for d in sorted(shipped.iterdir())
        if not d.name.startswith(".") and (d / CHECKSUMS).is_file()
    ]


def get_args_parser() -> argparse.ArgumentParser:
    """`save` a trained model into the store (and optionally pretrained/), or `import-shipped`."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    save = commands.add_parser("save", help="export a trained model directory")
    save.add_argument(
        "--model",
        type=Path,
        required=True,
        help="trained model directory, e.g. runs/x/best (required)",
    )
    save.add_argument(
        "--name",
        default=None,
        help="store name (default: the model's kind: captioner or translator)",
    )
    save.add_argument(
        "--half",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="store fp16 weights, after checking greedy outputs on the validation split (default: true)",
    )
    save.add_argument(
        "--evaluation",
        type=Path,
        default=None,
        help="evaluate's JSON report to record (default: <model>/../eval_test.json if present)",
    )
    save.add_argument(
        "--ship-dir",
        type=Path,
        default=None,
        help="also keep the exported directory here, e.g. pretrained/captioner (default: only the store)",
    )
    save.add_argument(
        "--train-command",
        default="see settings in config.json",
        help="the command that trained it, for the model card (default: a pointer to the saved settings)",
    )
    save.add_argument(
        "--feature-cache", default="runs/cache", help="cached image features (default: runs/cache)"
    )
    shipped = commands.add_parser("import-shipped", help="import pretrained/* into the store")
    shipped.add_argument(
        "--shipped-dir",
        type=Path,
        default=SHIPPED_DIR,
        help=f"folder of shipped models (default: {SHIPPED_DIR})",
    )
    return parser


def main(args: argparse.Namespace) -> list[str]:
    """Run the chosen command; returns the store tags written or found."""
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    if args.command == "import-shipped":
        return import_shipped(args.shipped_dir)
    evaluation = args.evaluation or args.model.parent / "eval_test.json"
    with tempfile.TemporaryDirectory() as tmp:
        out = args.ship_dir or Path(tmp) / "model"
        export_directory(args.model, out, args.half, evaluation, args.feature_cache)
        write_text(out / CARD, model_card(out, args.train_command))
        name = args.name or json.loads((out / "config.json").read_text())["kind"]
        return [import_directory(out, name)]


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())
