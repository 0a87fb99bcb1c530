"""Character language model: truncated BPTT, carried state, priming, sampling and save/load."""

from __future__ import annotations

import json

import pytest
import torch

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
from training.tbptt import SavedTensorMeter, evaluate_bpc, to_streams, train_streams

TEXT = 'The quick brown fox jumps over the lazy dog.\n("Quoted", she said.)\n' * 4


@pytest.fixture()
def vocab() -> Vocabulary:
    return Vocabulary.build([TEXT], CharTokenizer())


def small_model(vocab: Vocabulary, cell: str = "lstm", seed: int = 0) -> CharLanguageModel:
    torch.manual_seed(seed)
    model = CharLanguageModel(CharLMConfig(len(vocab), 8, 16, cell, 2, 0.0))
    with torch.no_grad():
        model.decoder.output.bias[END] = -100.0  # the text has no END: keep greedy runs full length
    return model


def peak_saved_bytes(vocab: Vocabulary, chars: int, bptt: int | None) -> int:
    model = small_model(vocab)
    ids = torch.tensor(vocab.encode(TEXT * (chars // len(TEXT) + 1)))[:chars]
    with SavedTensorMeter() as meter:
        train_streams(
            model, to_streams(ids, 4), torch.optim.SGD(model.parameters(), 0.1), bptt, 1.0
        )
    assert meter.live == 0  # backward freed every graph
    return meter.peak


def test_truncated_bptt_memory_stays_flat_as_text_grows(vocab: Vocabulary) -> None:
    short, long = peak_saved_bytes(vocab, 800, 20), peak_saved_bytes(vocab, 8000, 20)
    assert long <= 1.05 * short
    # the same measurement grows with the text under full BPTT, so it does catch a leak of graph
    full_short, full_long = peak_saved_bytes(vocab, 800, None), peak_saved_bytes(vocab, 8000, None)
    assert full_long > 5 * full_short


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_truncated_bptt_lowers_the_loss(vocab: Vocabulary, cell: str) -> None:
    model = small_model(vocab, cell)
    streams = to_streams(vocab.encode(TEXT * 2), 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = train_streams(model, streams, optimizer, 16, 1.0)
    for _ in range(6):
        last = train_streams(model, streams, optimizer, 16, 1.0)
    mean = [sum(r.loss for r in rs) / len(rs) for rs in (first, last)]
    assert mean[1] < 0.8 * mean[0]


class StateSpy(CharLanguageModel):
    """Records the state each chunk starts from and the state it ends with."""

    def __init__(self, config: CharLMConfig) -> None:
        super().__init__(config)
        self.received: list[DecoderState] = []
        self.returned: list[DecoderState] = []

    def forward(self, tokens, state=None):  # type: ignore[no-untyped-def]
        self.received.append(state)
        logits, state = super().forward(tokens, state)
        self.returned.append(state)
        return logits, state


def test_hidden_state_is_carried_across_chunks_and_detached(vocab: Vocabulary) -> None:
    torch.manual_seed(0)
    spy = StateSpy(CharLMConfig(len(vocab), 8, 16, "lstm", 2, 0.0))
    streams = to_streams(vocab.encode(TEXT), 2)
    train_streams(spy, streams, torch.optim.SGD(spy.parameters(), 0.1), 10, 1.0)
    assert len(spy.received) > 3
    for before, after in zip(spy.returned[:-1], spy.received[1:], strict=True):
        for key in ("h", "c"):
            assert torch.equal(after.recurrent[key], before.recurrent[key].detach())  # not reset
            assert after.recurrent[key].grad_fn is None  # cut from the previous chunk's graph
            assert after.recurrent[key].abs().sum() > 0


def test_windowed_evaluation_equals_one_pass(vocab: Vocabulary) -> None:
    model = small_model(vocab)
    streams = to_streams(vocab.encode(TEXT), 3)
    assert evaluate_bpc(model, streams, bptt=7) == pytest.approx(
        evaluate_bpc(model, streams, 10**6)
    )


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
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    epochs = [r for r in lines if "valid_bpc" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert progress.best_metric == min(r["valid_bpc"] for r in epochs)
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
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert resumed.epoch == 2 and [r["epoch"] for r in lines if "valid_bpc" in r] == [1, 2]
