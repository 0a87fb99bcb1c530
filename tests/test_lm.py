"""Character language model: truncated BPTT, carried state, priming, sampling and save/load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from models.checkpoint import load_model, save_model, verify_checksums
from models.decoders import DecoderState
from models.language_model import (
    MAX_SEED_CHARS,
    CharLanguageModel,
    CharLMConfig,
    generate,
    generate_hypotheses,
)
from models.search import SearchOptions
from models.tokenizers import CharTokenizer
from models.vocabulary import END, PAD, START, Vocabulary
from training import train_lm
from training.distributed import Distributed
from training.language_modeling import LanguageModelTask, LMSettings
from training.loop import Trainer
from training.memory import SavedTensorMeter
from training.state import CHECKPOINT
from training.tbptt import LN2, evaluate_bpc, to_streams

CPU = torch.device("cpu")

TEXT = 'The quick brown fox jumps over the lazy dog.\n("Quoted", she said.)\n' * 4


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]


@pytest.fixture()
def vocab() -> Vocabulary:
    return Vocabulary.build([TEXT], CharTokenizer())


def small_model(vocab: Vocabulary, cell: str = "lstm", seed: int = 0) -> CharLanguageModel:
    torch.manual_seed(seed)
    model = CharLanguageModel(CharLMConfig(len(vocab), 8, 16, cell, 2, 0.0))
    with torch.no_grad():
        model.decoder.output.bias[END] = -100.0  # the text has no END: keep greedy runs full length
    return model


def lm_settings(directory: Path, text: str, **overrides: Any) -> LMSettings:
    """A tiny run on `text` (its last 5% validates) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "text.txt").write_text(text)
    values: dict[str, Any] = dict(
        data=str(directory / "text.txt"), output_dir=str(directory), name="run", batch_size=4,
        bptt=20, eval_batch_size=2, hidden_size=16, embed_size=8, num_layers=2, dropout=0.0,
        lr=1e-2, warmup_steps=0, epochs=1, patience=100, golden_length=10, seed=0,
        progress=False,
    )  # fmt: skip
    return LMSettings(**{**values, **overrides})


def lm_trainer(settings: LMSettings, model: CharLanguageModel | None = None) -> Trainer:
    """The shared loop on the language-modelling task (optionally with another model)."""
    task = LanguageModelTask(settings, Distributed(), CPU)
    if model is not None:
        task.model = model
    return Trainer(task, settings, Distributed(), CPU)


def peak_saved_bytes(directory: Path, chars: int, full_bptt: bool) -> int:
    text = (TEXT * (chars // len(TEXT) + 1))[:chars]
    trainer = lm_trainer(lm_settings(directory, text, full_bptt=full_bptt))
    with SavedTensorMeter() as meter:
        trainer.train_epoch()
    assert meter.live == 0  # backward freed every graph, the carried state holds none
    return meter.peak


def test_truncated_bptt_memory_stays_flat_as_text_grows(tmp_path: Path) -> None:
    short, long = (
        peak_saved_bytes(tmp_path / "a", 800, False),
        peak_saved_bytes(tmp_path / "b", 8000, False),
    )
    assert long <= 1.05 * short
    # the same measurement grows with the text under full BPTT, so it does catch a leak of graph
    full_short = peak_saved_bytes(tmp_path / "c", 800, True)
    full_long = peak_saved_bytes(tmp_path / "d", 8000, True)
    assert full_long > 5 * full_short


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_truncated_bptt_lowers_the_loss(tmp_path: Path, cell: str) -> None:
    settings = lm_settings(tmp_path, TEXT * 2, cell=cell, bptt=16, epochs=7)
    lm_trainer(settings).run()
    losses = [r["train_loss"] for r in read_metrics(tmp_path / "run") if "train_loss" in r]
    assert len(losses) == 7 and losses[-1] < 0.8 * losses[0]


def test_hidden_state_is_carried_detached_and_reset_each_epoch(tmp_path: Path) -> None:
    settings = lm_settings(tmp_path, TEXT * 5, epochs=2)
    trainer = lm_trainer(settings)
    calls: list[tuple[DecoderState | None, DecoderState]] = []  # (state before, state after)

    def record(module: nn.Module, args: tuple, output: tuple) -> None:  # type: ignore[type-arg]
        if module.training:
            calls.append((args[1], output[1]))

    trainer.task.model.register_forward_hook(record)
    trainer.run()
    sizes = [len(trainer.task.batches("train", epoch)) for epoch in range(2)]
    assert len(calls) == sum(sizes) and min(sizes) > 3
    for i, (before, _) in enumerate(calls):
        if i in (0, sizes[0]):
            assert before is None  # each epoch starts from the initial state
            continue
        previous = calls[i - 1][1]
        for key in ("h", "c"):
            assert previous.recurrent[key].grad_fn is not None
            assert torch.equal(before.recurrent[key], previous.recurrent[key].detach())
            assert before.recurrent[key].grad_fn is None  # cut from the previous chunk's graph
            assert before.recurrent[key].abs().sum() > 0


def test_windowed_evaluation_equals_one_pass(vocab: Vocabulary) -> None:
    model = small_model(vocab)
    streams = to_streams(vocab.encode(TEXT), 3)
    assert evaluate_bpc(model, streams, window=7) == pytest.approx(
        evaluate_bpc(model, streams, 10**6)
    )


def test_loop_validation_is_one_pass_in_bits_per_character(tmp_path: Path) -> None:
    trainer = lm_trainer(lm_settings(tmp_path, TEXT * 200, eval_batch_size=3))
    task = trainer.task
    assert len(task.batches("valid", 0)) > 2  # several windows, the state carried across them
    one_pass = evaluate_bpc(task.model, task.streams["valid"], 10**6)
    assert trainer.validation_loss() / LN2 == pytest.approx(one_pass, rel=1e-6)


def test_greedy_continuation_is_what_teacher_forcing_predicts(vocab: Vocabulary) -> None:
    model = small_model(vocab).eval()
    seed = "The quick"
    continuation = generate(model, vocab, seed, SearchOptions(max_length=12))
    assert len(continuation) == 12
    logits, _ = model(torch.tensor([vocab.encode(seed + continuation)]))  # (1, T, V)
    logits[..., [PAD, START]] = float("-inf")
    predicted = logits[0, len(seed) - 1 : -1].argmax(-1).tolist()
    assert vocab.decode(predicted) == continuation


def test_sampling_is_reproducible_with_a_seed(vocab: Vocabulary) -> None:
    model = small_model(vocab).eval()

    def sample(seed: int) -> str:
        options = SearchOptions(
            method="sample", max_length=40, temperature=1.5, top_k=10, seed=seed
        )
        return generate(model, vocab, "The ", options)

    assert sample(3) == sample(3)
    assert sample(3) != sample(4)
    hypotheses = generate_hypotheses(
        model, vocab, "", SearchOptions(method="sample", n_best=3, max_length=10, seed=1)
    )
    assert len(hypotheses) == 3 and all(len(h.tokens) == 10 for h in hypotheses)


def test_beam_search_runs_on_a_primed_state(vocab: Vocabulary) -> None:
    model = small_model(vocab).eval()
    options = SearchOptions(method="beam", beam_size=3, n_best=2, max_length=8)
    hypotheses = generate_hypotheses(model, vocab, "The", options)
    greedy = generate(model, vocab, "The", SearchOptions(max_length=8))
    assert len(hypotheses) == 2 and hypotheses[0].score >= hypotheses[1].score
    assert len(greedy) == 8


def test_generation_bounds_are_enforced(vocab: Vocabulary) -> None:
    model = small_model(vocab)
    with pytest.raises(ValueError, match="seed text"):
        generate(model, vocab, "x" * (MAX_SEED_CHARS + 1), SearchOptions())
    with pytest.raises(ValueError, match="max_length"):
        generate(model, vocab, "x", SearchOptions(max_length=10**6))


@pytest.mark.parametrize("half", [False, True])
def test_save_load_round_trip(vocab: Vocabulary, tmp_path, half: bool) -> None:  # type: ignore[no-untyped-def]
    model = small_model(vocab, "gru").eval()
    save_model(tmp_path, model, {"text": vocab}, {"note": "test"}, half=half)
    loaded = load_model(tmp_path)
    assert loaded.kind == "char_lm" and loaded.vocabularies["text"] == vocab
    ids = torch.tensor([vocab.encode(TEXT[:50])])
    expected, actual = model(ids)[0], loaded.model(ids)[0]
    if half:
        torch.testing.assert_close(actual, expected, atol=1e-2, rtol=1e-2)
    else:
        assert torch.equal(actual, expected)
        options = SearchOptions(max_length=20)
        assert generate(loaded.model, vocab, "The", options) == generate(
            model, vocab, "The", options
        )


def test_training_cli_writes_metrics_best_model_and_golden(tmp_path) -> None:  # type: ignore[no-untyped-def]
    text_file = tmp_path / "text.txt"
    text_file.write_text(TEXT * 5)
    args = train_lm.get_args_parser().parse_args(
        ["--preset", "tiny", "--data", str(text_file), "--output-dir", str(tmp_path),
         "--name", "run", "--max-train-chars", "0", "--hidden-size", "16", "--embed-size", "8",
         "--batch-size", "4", "--bptt", "20", "--eval-batch-size", "2", "--half",
         "--golden-length", "15", "--measure-memory", "--no-progress"]
    )  # fmt: skip
    progress = train_lm.main(args)
    epochs = [r for r in read_metrics(tmp_path / "run") if "valid_bpc" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert progress.best_metric == min(r["valid_loss"] for r in epochs)
    assert epochs[0]["valid_bpc"] == pytest.approx(epochs[0]["valid_loss"] / LN2)
    assert epochs[0]["peak_saved_mb"] > 0 and epochs[0]["grad_norm_max"] > 0
    verify_checksums(tmp_path / "run" / "best")
    golden = json.loads((tmp_path / "run" / "best" / "golden.json").read_text())
    loaded = load_model(tmp_path / "run" / "best")
    output = generate(loaded.model, loaded.vocabularies["text"], golden["input"],
                      SearchOptions(**golden["options"]))  # fmt: skip
    assert output == golden["output"] and len(output) == 15


def test_training_resumes_from_its_checkpoint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    text_file = tmp_path / "text.txt"
    text_file.write_text(TEXT * 5)
    flags = ["--preset", "tiny", "--data", str(text_file), "--output-dir", str(tmp_path),
             "--name", "run", "--max-train-chars", "0", "--hidden-size", "8", "--embed-size", "4",
             "--batch-size", "4", "--bptt", "20", "--eval-batch-size", "2", "--no-progress"]  # fmt: skip
    parser = train_lm.get_args_parser()
    assert train_lm.main(parser.parse_args([*flags, "--epochs", "1"])).epoch == 1
    resumed = train_lm.main(parser.parse_args([*flags, "--epochs", "2", "--resume"]))
    lines = read_metrics(tmp_path / "run")
    assert resumed.epoch == 2 and [r["epoch"] for r in lines if "valid_bpc" in r] == [1, 2]


def test_resume_mid_epoch_gives_the_same_weights_as_one_run(tmp_path: Path) -> None:
    """N steps in one go == N/2 steps, stop, resume for N/2 more (across an epoch boundary)."""
    (tmp_path / "text.txt").write_text(TEXT * 5)
    flags = ["--preset", "tiny", "--data", str(tmp_path / "text.txt"), "--max-train-chars", "0",
             "--hidden-size", "8", "--embed-size", "4", "--batch-size", "4", "--bptt", "20",
             "--eval-batch-size", "2", "--dropout", "0.2", "--warmup-steps", "7",
             "--schedule", "constant", "--epochs", "3", "--log-every", "1", "--no-progress"]  # fmt: skip
    parser = train_lm.get_args_parser()

    def run(name: str, steps: int, *more: str) -> None:
        args = [*flags, "--output-dir", str(tmp_path), "--name", name, "--max-steps", str(steps)]
        train_lm.main(parser.parse_args([*args, *more]))

    run("whole", 24)
    run("halves", 12)
    first = torch.load(tmp_path / "halves" / CHECKPOINT, weights_only=True)
    assert first["progress"]["epoch"] == 0 and first["carry"]  # stopped mid-epoch, state kept
    run("halves", 24, "--resume")
    whole, halves = (
        torch.load(tmp_path / n / CHECKPOINT, weights_only=True) for n in ("whole", "halves")
    )
    assert whole["progress"]["step"] == halves["progress"]["step"] == 24
    assert whole["progress"]["epoch"] >= 1  # the run crossed an epoch boundary
    for name, tensor in whole["model"].items():
        assert torch.equal(tensor, halves["model"][name]), name
    losses = [
        {r["step"]: r["loss"] for r in read_metrics(tmp_path / n) if "loss" in r}
        for n in ("whole", "halves")
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 24


def test_help_works_and_shows_the_presets_values(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        train_lm.get_args_parser().parse_args(["--preset", "tiny", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "the last 5% validating) (default: 'data/fortunes')" in " ".join(text.split())
    assert "units per layer (default: 64)" in text  # lm_tiny.yaml, not the dataclass's 256
