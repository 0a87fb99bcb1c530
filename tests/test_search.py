"""The one decoding module: properties of greedy search, beam search and sampling."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from models.decoders import DecoderState
from models.inference import translate
from models.search import SearchOptions, decode
from models.vocabulary import END, PAD, START
from tests.helpers import assert_alone_as_in_a_batch, random_translator, toy_vocabulary

SENTENCES = ["a b c", "d e f g h i j", "k", "l a b c d e"]
MODELS = [("lstm", "additive"), ("gru", "multiplicative"), ("rnn", "none"), ("lstm", "none")]


def run(model, options: SearchOptions, sentences: list[str] = SENTENCES):
    return translate(model, toy_vocabulary(), sentences, options)


class ScriptedStepper:
    """A stepper whose next-token distribution depends only on the step number."""

    def __init__(self, script: list[list[float]]) -> None:
        self.script = torch.log_softmax(torch.tensor(script, dtype=torch.float), dim=-1)  # (T, V)

    def state(self, rows: int) -> DecoderState:
        return DecoderState({"t": torch.zeros(rows, 1, dtype=torch.long)})

    def step(self, prev_tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        t = state.recurrent["t"][:, 0].clamp(max=len(self.script) - 1)
        return self.script[t], DecoderState({"t": state.recurrent["t"] + 1})


# vocabulary of 6: PAD, START, END, UNK, x=4, y=5
ENDS_AT_STEP_3 = [[0, 0, 0, 0, 5, 1], [0, 0, 0, 0, 1, 5], [0, 0, 0, 0, 5, 1], [0, 0, 9, 0, 1, 1]]


@pytest.mark.parametrize(("cell", "attention"), MODELS)
def test_beam_size_one_equals_greedy(cell: str, attention: str) -> None:
    model = random_translator(1, cell, 2, attention)
    greedy = run(model, SearchOptions("greedy", max_length=15))
    beam = run(model, SearchOptions("beam", beam_size=1, max_length=15))
    for g, b in zip(greedy, beam, strict=True):
        assert g[0].tokens == b[0].tokens
        assert g[0].log_prob == pytest.approx(b[0].log_prob, abs=1e-5)
        assert g[0].truncated == b[0].truncated


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
@pytest.mark.parametrize(("cell", "attention"), MODELS)
def test_alone_equals_inside_a_batch_of_mixed_lengths(
    method: str, cell: str, attention: str
) -> None:
    model = random_translator(2, cell, 2, attention)
    options = SearchOptions(method, beam_size=4, n_best=3, max_length=12, seed=7)
    assert_alone_as_in_a_batch(model, options, SENTENCES)


def test_special_ids_are_the_first_three() -> None:
    """_constrain forbids PAD, START (and END) as the column slice [:2] (or [:3])."""
    assert (PAD, START, END) == (0, 1, 2)


def test_decoding_stops_at_end() -> None:
    stepper = ScriptedStepper(ENDS_AT_STEP_3)
    for method in ("greedy", "beam"):
        ((best, *_),) = decode(
            stepper, stepper.state(1), SearchOptions(method, beam_size=2, max_length=10)
        )
        assert best.tokens == [4, 5, 4] and not best.truncated
        assert len(best.token_log_probs) == 4  # three tokens and END


def test_max_length_truncates_and_flags_it() -> None:
    stepper = ScriptedStepper(ENDS_AT_STEP_3)
    for method in ("greedy", "beam", "sample"):
        options = SearchOptions(method, beam_size=2, max_length=2, seed=0)
        ((best, *_),) = decode(stepper, stepper.state(1), options)
        assert best.truncated and len(best.tokens) == 2


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_per_input_max_length(method: str) -> None:
    model = random_translator(3, attention="none")
    limits = torch.tensor([1, 3, 5, 8])
    options = SearchOptions(
        method, beam_size=3, max_length=6, seed=1, min_length=10
    )  # END never allowed
    state = model.init_state(*_source(model))
    results = decode(model.decoder, state, options, limits)
    assert [len(r[0].tokens) for r in results] == [1, 3, 5, 6]
    assert all(r[0].truncated for r in results)


def _source(model) -> tuple[Tensor, Tensor]:
    from models.inference import pad_batch, source_ids

    return pad_batch([source_ids(toy_vocabulary(), s) for s in SENTENCES])


class StaticStepper:
    """A stepper whose distribution comes from its static state alone: each input's own token
    preferences (V,) and the step from which END is likeliest, so that inputs end at different
    steps and leave the batch from its middle."""

    def __init__(self, seed: int, inputs: int, vocab: int = 12) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.preferences = torch.randn(inputs, vocab, generator=generator)  # (B, V)
        self.end_at = torch.randint(1, 8, (inputs, 1), generator=generator)  # (B, 1)

    def state(self, inputs: slice) -> DecoderState:
        rows = self.end_at[inputs].size(0)
        static = {"preferences": self.preferences[inputs], "end_at": self.end_at[inputs]}
        return DecoderState({"t": torch.zeros(rows, 1, dtype=torch.long)}, static)

    def step(self, prev_tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        t, static = state.recurrent["t"], state.static
        logits = static["preferences"].clone()
        logits[:, END] = torch.where(t[:, 0] >= static["end_at"][:, 0], 6.0, -6.0)
        return torch.log_softmax(logits, dim=-1), DecoderState({"t": t + 1}, static)


@pytest.mark.parametrize("method", ["greedy", "sample", "beam"])
def test_inputs_leaving_the_batch_take_their_static_state_along(method: str) -> None:
    """Every search drops a done input's rows, static state included (beam search moves the
    others' in place): every input's hypotheses are exactly those it gets alone."""
    stepper = StaticStepper(seed=11, inputs=9)
    options = SearchOptions(method, beam_size=3, n_best=3, max_length=12, seed=3)
    together = decode(stepper, stepper.state(slice(0, 9)), options)
    for i, hypotheses in enumerate(together):
        (alone,) = decode(stepper, stepper.state(slice(i, i + 1)), options)
        assert [(h.tokens, h.score, h.token_log_probs) for h in hypotheses] == [
            (h.tokens, h.score, h.token_log_probs) for h in alone
        ]
    assert len({len(r[0].token_log_probs) for r in together}) > 2  # they did end apart


class RowCounting(StaticStepper):
    """A StaticStepper that records how many rows each step computes."""

    def __init__(self, seed: int, inputs: int) -> None:
        super().__init__(seed, inputs)
        self.rows: list[int] = []

    def step(self, prev_tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        self.rows.append(prev_tokens.size(0))
        return super().step(prev_tokens, state)


@pytest.mark.parametrize("limit", [12, 4])
def test_greedy_steps_compute_only_the_rows_still_decoding(limit: int) -> None:
    """A row that ends (END, or its length limit) is not computed again: step t computes the
    inputs that have not ended before it, so a batch costs the sum of its lengths."""
    stepper = RowCounting(seed=11, inputs=9)
    decode(stepper, stepper.state(slice(0, 9)), SearchOptions("greedy", max_length=limit))
    ends = [min(int(e), limit - 1) for e in stepper.end_at[:, 0]]  # the step each input ends at
    assert stepper.rows == [sum(end >= t for end in ends) for t in range(max(ends) + 1)]
    assert stepper.rows[-1] < 9


@pytest.mark.parametrize(("cell", "attention"), MODELS)
def test_n_best_is_sorted_and_distinct(cell: str, attention: str) -> None:
    model = random_translator(4, cell, 1, attention)
    for hypotheses in run(model, SearchOptions("beam", beam_size=5, n_best=5, max_length=10)):
        scores = [h.score for h in hypotheses]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hypotheses}) == len(hypotheses) == 5


def test_scores_are_consistent_with_token_log_probs() -> None:
    model = random_translator(5)
    options = SearchOptions("beam", beam_size=3, n_best=3, max_length=10, length_penalty=0.7)
    for hypotheses in run(model, options):
        for h in hypotheses:
            assert h.log_prob == pytest.approx(sum(h.token_log_probs), abs=1e-5)
            length = len(h.token_log_probs)
            assert h.score == pytest.approx(h.log_prob / ((5 + length) / 6) ** 0.7, abs=1e-5)
            assert len(h.token_log_probs) == len(h.tokens) + (0 if h.truncated else 1)


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_min_length_and_special_tokens(method: str) -> None:
    model = random_translator(6)
    options = SearchOptions(method, beam_size=3, max_length=12, min_length=4, seed=3)
    for best, *_ in run(model, options):
        assert len(best.tokens) >= 4
        assert not {PAD, START, END} & set(best.tokens)


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeated_ngrams(method: str, n: int) -> None:
    model = random_translator(7)
    options = SearchOptions(method, beam_size=3, max_length=12, no_repeat_ngram_size=n, seed=2)
    for best, *_ in run(model, options):
        grams = [tuple(best.tokens[i : i + n]) for i in range(len(best.tokens) - n + 1)]
        assert len(grams) == len(set(grams))


def test_sampling_is_reproducible_with_a_seed_and_varies_without() -> None:
    model = random_translator(8)
    options = SearchOptions("sample", n_best=4, max_length=10, seed=123, temperature=2.0)
    first, second = run(model, options), run(model, options)
    assert [[h.tokens for h in r] for r in first] == [[h.tokens for h in r] for r in second]
    other = run(model, SearchOptions("sample", n_best=4, max_length=10, seed=124, temperature=2.0))
    assert [[h.tokens for h in r] for r in first] != [[h.tokens for h in r] for r in other]


def test_sampling_with_top_k_one_is_greedy() -> None:
    model = random_translator(9)
    greedy = run(model, SearchOptions("greedy", max_length=10))
    sampled = run(model, SearchOptions("sample", top_k=1, max_length=10, seed=5, temperature=3.0))
    assert [r[0].tokens for r in greedy] == [r[0].tokens for r in sampled]


def test_sampling_follows_the_distribution() -> None:
    # PAD and START are never generated, so x has weight 3 of 1 (END) + 1 (UNK) + 3 (x) + 1 (y)
    stepper = ScriptedStepper([[0, 0, 0, 0, 1.0986, 0]])
    options = SearchOptions(
        "sample", n_best=4000, max_length=1, min_length=0, seed=0
    )  # seeds 0..3999
    (samples,) = decode(stepper, stepper.state(1), options)
    share = sum(1 for h in samples if h.tokens == [4]) / len(samples)
    assert share == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_attention_rows_align_with_tokens(method: str) -> None:
    model = random_translator(10, attention="multiplicative")
    vocabulary = toy_vocabulary()
    for sentence, (best, *_) in zip(
        SENTENCES, run(model, SearchOptions(method, beam_size=3, max_length=8)), strict=True
    ):
        source_length = len(vocabulary.encode(sentence)) + 1
        assert best.attention.shape[0] == len(best.token_log_probs)
        assert best.attention.shape[1] >= source_length
        torch.testing.assert_close(best.attention.sum(-1), torch.ones(len(best.token_log_probs)))
        assert torch.all(best.attention[:, source_length:] == 0)


def test_invalid_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="n_best"):
        SearchOptions("beam", beam_size=2, n_best=3)
    with pytest.raises(ValueError, match="temperature"):
        SearchOptions("sample", temperature=0)
    with pytest.raises(ValueError, match="method"):
        SearchOptions("nucleus")  # type: ignore[arg-type]


# END is by far the likeliest first token: an untrained-looking model that would answer nothing
ENDS_AT_ONCE = [[0, 0, 12, 0, 1, 2], [0, 0, 12, 0, 2, 1]]


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_default_options_never_answer_empty(method: str) -> None:
    """Issue 12: END cannot be the first token unless min_length is set to 0."""
    stepper = ScriptedStepper(ENDS_AT_ONCE)
    options = SearchOptions(method, beam_size=3, n_best=3, max_length=5, seed=1)
    for hypotheses in decode(stepper, stepper.state(4), options):
        assert all(h.tokens for h in hypotheses)
    allowed = SearchOptions(method, beam_size=3, max_length=5, min_length=0, seed=1)
    assert [] in [h.tokens for r in decode(stepper, stepper.state(4), allowed) for h in r]


# token 3 (say ".") is the likeliest first token, then END
DOT_FIRST = [[0, 0, 1, 12, 2, 0], [0, 0, 12, 0, 2, 1]]


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_never_first_tokens_cannot_open_the_output_but_may_follow(method: str) -> None:
    stepper = ScriptedStepper(DOT_FIRST)
    plain = SearchOptions(method, beam_size=3, max_length=4, seed=1)
    assert decode(stepper, stepper.state(2), plain)[0][0].tokens[0] == 3
    options = SearchOptions(method, beam_size=3, n_best=3, max_length=4, seed=1, never_first=(3,))
    for hypotheses in decode(stepper, stepper.state(2), options):
        assert all(h.tokens and h.tokens[0] != 3 for h in hypotheses)
