"""Tiny training runs: loss goes down, checkpoints load and decode, resume is exact, clipping holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch
import yaml
from PIL import Image

from models.checkpoint import load_model
from models.inference import caption_images, translate
from models.search import SearchOptions
from training import train_captioner, train_lm, train_translator
from training.distributed import Distributed
from training.loop import Trainer
from training.settings import preset_path, resolve_settings
from training.translation import TranslationTask, TranslatorSettings

FIXTURES = Path(__file__).parent / "fixtures" / "training"


def run_translator(out: Path, *flags: str) -> list[dict]:
    """Train the tiny translator into `out`; return its metrics log."""
    args = train_translator.get_args_parser().parse_args(
        ["--preset", "tiny", "--output-dir", str(out), "--no-progress", *flags]
    )
    train_translator.main(args)
    name = flags[flags.index("--name") + 1] if "--name" in flags else "translator_tiny"
    return read_metrics(out / name)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def step_losses(metrics: list[dict]) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics if "loss" in m}


@pytest.fixture(scope="module")
def translator_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("runs")
    return out / "translator_tiny", run_translator(out)


def test_tiny_translator_lowers_validation_loss_and_decodes(translator_run) -> None:
    run_dir, metrics = translator_run
    valid = [m["valid_loss"] for m in metrics if "valid_loss" in m]
    assert valid[-1] < valid[0]
    loaded = load_model(run_dir / "best")
    hypotheses = translate(
        loaded.model, loaded.vocabularies["source"], ["the nuts and bolts"], SearchOptions()
    )
    assert isinstance(loaded.vocabularies["target"].decode(hypotheses[0][0].tokens), str)


def test_resume_gives_the_same_next_losses(translator_run, tmp_path: Path) -> None:
    _, uninterrupted = translator_run
    first = run_translator(tmp_path, "--epochs", "1")
    resumed = run_translator(tmp_path, "--epochs", "2", "--resume")
    assert len(resumed) > len(first)  # the log was continued, not restarted
    expected, got = step_losses(uninterrupted), step_losses(resumed)
    assert got.keys() == expected.keys()
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6)


def test_gradient_clipping_bounds_the_global_norm(tmp_path: Path) -> None:
    parser = train_translator.get_args_parser()
    args = parser.parse_args(
        ["--preset", "tiny", "--output-dir", str(tmp_path), "--clip-norm", "0.01"]
    )
    settings = resolve_settings(TranslatorSettings, "translator", args)
    device = torch.device("cpu")
    task = TranslationTask(settings, Distributed(), device)
    trainer = Trainer(task, settings, Distributed(), device)
    batch = task.batch("train", list(range(8)), device)
    stats = trainer.train_step(batch)
    grads = [p.grad for p in task.model.parameters() if p.grad is not None]
    clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert stats["grad_norm"] > 0.01  # the logged norm is the one before clipping
    assert float(clipped) <= 0.01 * (1 + 1e-4)


def test_tiny_captioner_trains_saves_and_captions(tmp_path: Path) -> None:
    args = train_captioner.get_args_parser().parse_args(
        [
            "--preset",
            "tiny",
            "--output-dir",
            str(tmp_path),
            "--feature-cache",
            str(tmp_path / "cache"),
            "--no-progress",
        ]
    )
    train_captioner.main(args)
    metrics = read_metrics(tmp_path / "captioner_tiny")
    valid = [m["valid_loss"] for m in metrics if "valid_loss" in m]
    assert valid[-1] < valid[0]
    loaded = load_model(tmp_path / "captioner_tiny" / "best")
    image_path = next((FIXTURES / "emoji" / "images").rglob("*.png"))
    with Image.open(image_path) as image:
        pixels = loaded.model.encoder.preprocess(image).unsqueeze(0)
    hypotheses = caption_images(loaded.model, pixels, SearchOptions(max_length=8))
    assert len(hypotheses[0][0].tokens) <= 8


def test_sentencepiece_vocabulary_round_trips_unseen_characters_without_unk() -> None:
    from models.vocabulary import SPECIALS, UNK, Vocabulary
    from training.translation import train_sentencepiece

    texts = (FIXTURES / "de-en" / "train.de").read_text(encoding="utf-8").splitlines()
    vocabulary = Vocabulary.from_sentencepiece(train_sentencepiece(texts, 400, "unigram"))
    assert tuple(vocabulary.tokens[:4]) == SPECIALS
    sentence = "Grüße aus Köln ☃ – Ωmega 東京"
    ids = vocabulary.encode(sentence)
    assert UNK not in ids  # byte fallback spells unseen characters as byte pieces
    assert vocabulary.decode(ids) == sentence


@pytest.mark.parametrize(
    ("module", "kind"),
    [(train_captioner, "captioner"), (train_translator, "translator"), (train_lm, "lm")],
)
@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_help_shows_the_defaults_a_run_would_use(
    module: ModuleType, kind: str, preset: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        module.get_args_parser().parse_args(["--preset", preset, "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split()).split("options:")[1]  # unwrapped
    values = yaml.safe_load(preset_path(preset, kind).read_text())
    settings = resolve_settings(
        module.COMMAND.settings_class, kind, argparse.Namespace(preset=preset)
    )
    for name in ("lr", "epochs", "batch_size", "threads"):
        flag_help = text.split(f"--{name.replace('_', '-')} ", 1)[1]
        assert f"(default: {getattr(settings, name)!r})" in flag_help.split(" --")[0], name
    assert f"(default: {values['lr']!r})" in text  # the preset's value, not the dataclass's


def _captioner_flags(tmp_path: Path, *flags: str) -> list[str]:
    cache = str(tmp_path / "cache")
    return ["--preset", "tiny", "--output-dir", str(tmp_path), "--feature-cache", cache, *flags]


def test_empty_split_says_which_filter_emptied_it(tmp_path: Path) -> None:
    """Issue 13: a style filter that drops every image ends in words, not a metric's traceback."""
    flags = _captioner_flags(tmp_path, "--styles", "twitter", "--no-progress")
    with pytest.raises(SystemExit) as stopped:
        train_captioner.COMMAND.run(flags)
    message = str(stopped.value)
    assert "train split is empty" in message and "--styles twitter" in message
    assert "dataset_emoji.json" in message


def test_show_attend_tell_trains_with_its_penalty_and_reloads(tmp_path: Path) -> None:
    flags = ["--attention", "additive", "--attention-input", "--attention-penalty", "1.0"]
    args = train_captioner.get_args_parser().parse_args(
        _captioner_flags(tmp_path, *flags, "--max-steps", "4", "--no-progress")
    )
    train_captioner.main(args)
    loaded = load_model(tmp_path / "captioner_tiny" / "best")
    assert loaded.model.config.decoder.attention_input
    losses = step_losses(read_metrics(tmp_path / "captioner_tiny"))
    assert losses and all(loss == loss for loss in losses.values())  # logged and finite


def test_calibration_fits_the_captioners_confidence_and_domain(tmp_path: Path) -> None:
    from training import calibrate

    args = train_captioner.get_args_parser().parse_args(
        _captioner_flags(tmp_path, "--max-steps", "6", "--no-progress")
    )
    train_captioner.main(args)
    best = tmp_path / "captioner_tiny" / "best"
    flags = ["--model", str(best), "--feature-cache", str(tmp_path / "cache")]
    report = calibrate.main(
        calibrate.get_args_parser().parse_args([*flags, "--components", "4", "--no-photos"])
    )
    assert 0 <= report["ece_test"] <= 1 and 0 <= report["auroc_noise"] <= 1
    loaded = load_model(best)  # checksums rewritten with the fitted buffers
    assert loaded.model.uncertainty is not None
    assert torch.isfinite(loaded.model.uncertainty.threshold)
    assert json.loads((best.parent / "calibration.json").read_text()) == report
    assert loaded.metadata["calibration"] == report
