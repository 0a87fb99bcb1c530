"""`training.evaluate` on tiny models: greedy and beam side by side, baselines, JSON report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training import evaluate, train_captioner, train_translator
from training.settings import SettingsError


def tiny(module, out: Path, *flags: str) -> Path:
    args = module.get_args_parser().parse_args(
        ["--preset", "tiny", "--output-dir", str(out), "--no-progress", "--epochs", "1", *flags]
    )
    module.main(args)
    return next(out.glob("*_tiny")) / "best"


def run_evaluate(*flags: str) -> dict:
    return evaluate.main(
        evaluate.get_args_parser().parse_args(["--methods", "greedy,beam3", "--limit", "6", *flags])
    )


def test_translator_report_has_scores_signatures_and_baseline(tmp_path: Path) -> None:
    model = tiny(train_translator, tmp_path)
    output = tmp_path / "eval.json"
    run_evaluate("--model", str(model), "--baseline", str(model), "--output", str(output))
    report = json.loads(output.read_text())
    assert report["kind"] == "translator" and report["examples"] == 6
    for results in (report["results"], report["baseline"]["results"]):
        assert set(results) == {"greedy", "beam3"}
        assert {"bleu", "chrf", "bleu_signature", "chrf_signature"} <= set(results["greedy"])
    assert (
        results["greedy"]["bleu"] == report["results"]["greedy"]["bleu"]
    )  # same model, same score
    assert {"input", "references", "greedy", "beam3"} <= set(report["samples"][0])
    bf16 = run_evaluate("--model", str(model), "--autocast", "bf16", "--output", str(output))
    assert bf16["autocast"] == "bf16" and 0 <= bf16["results"]["greedy"]["bleu"] <= 100


def test_captioner_report_has_bleu_cider_and_nearest_neighbour(tmp_path: Path) -> None:
    model = tiny(train_captioner, tmp_path, "--feature-cache", str(tmp_path / "cache"))
    report = run_evaluate(
        "--model", str(model), "--split", "valid", "--feature-cache", str(tmp_path / "cache")
    )
    assert (model.parent / "eval_valid.json").is_file()
    expected = {"bleu1", "bleu2", "bleu3", "bleu4", "cider"}
    assert expected <= set(report["results"]["beam3"])
    assert expected <= set(report["baseline"]["results"]["greedy"])


def test_captioner_scores_by_group_add_up_to_the_split(tmp_path: Path) -> None:
    model = tiny(train_captioner, tmp_path, "--feature-cache", str(tmp_path / "cache"))
    flags = ["--model", str(model), "--split", "valid", "--feature-cache", str(tmp_path / "cache")]
    one_group = run_evaluate(*flags, "--group-by", "split")["groups"]
    assert one_group["field"] == "split" and list(one_group["scores"]) == ["val"]
    whole = run_evaluate(*flags)
    scores = one_group["scores"]["val"]
    assert scores["examples"] == whole["examples"]
    for method in ("greedy", "beam3"):
        expected = {k: v for k, v in whole["results"][method].items() if k != "seconds"}
        assert scores[method] == expected
    assert scores["nearest_neighbour"] == whole["baseline"]["results"]["greedy"]
    by_name = run_evaluate(*flags, "--group-by", "filename")["groups"]["scores"]
    assert len(by_name) == whole["examples"]  # one image a group
    assert all(group["examples"] == 1 for group in by_name.values())


def test_grouping_by_a_field_no_entry_has_is_refused(tmp_path: Path) -> None:
    model = tiny(train_captioner, tmp_path, "--feature-cache", str(tmp_path / "cache"))
    flags = ["--model", str(model), "--split", "valid", "--feature-cache", str(tmp_path / "cache")]
    with pytest.raises(SettingsError, match="no image entry of .* has that field"):
        run_evaluate(*flags, "--group-by", "colour")
