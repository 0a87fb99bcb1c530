"""The recurrent core and the shared decoder: every cell type, stacked layers, packed lengths."""

from __future__ import annotations

import pytest
import torch

from models import recurrent
from models.attention import doubly_stochastic_penalty
from models.decoders import DecoderConfig, Memory, RecurrentDecoder
from models.recurrent import RecurrentConfig, RecurrentCore


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_core_runs_forward_and_backward(cell: str, layers: int) -> None:
    core = RecurrentCore(RecurrentConfig(6, 10, cell, layers, dropout=0.2, learned_init=True))
    outputs, state = core(torch.randn(4, 7, 6))
    assert outputs.shape == (4, 7, 10)
    assert state["h"].shape == (4, layers, 10)
    assert ("c" in state) == (cell == "lstm")
    (outputs.sum() + state["h"].sum()).backward()
    assert all(p.grad is not None for p in core.parameters() if p.requires_grad)
    assert core.init_h.grad is not None  # the learned initial state trains


def test_zero_initial_state_is_not_trained() -> None:
    core = RecurrentCore(RecurrentConfig(3, 5, "lstm"))
    assert not core.init_h.requires_grad and torch.equal(core.init_h, torch.zeros_like(core.init_h))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize(("layers", "bidirectional"), [(1, True), (2, True), (2, False)])
def test_encoder_outputs_unpacked_equal_the_packed_ones(
    cell: str, layers: int, bidirectional: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`outputs_and_final_h` (an LSTM on the CPU out of training: one call per direction over the
    padded rows) gives what the packed forward gives: outputs zero past each row's length, and
    each direction's h after the row's own last real step."""
    monkeypatch.setattr(recurrent, "_UNPACKED_FILL", 0.0)  # whatever the fill, LSTMs go unpacked
    torch.manual_seed(1)
    config = RecurrentConfig(6, 9, cell, layers, bidirectional=bidirectional, learned_init=True)
    core = RecurrentCore(config).eval()
    with torch.no_grad():
        core.init_h.normal_()  # a learned initial state must be used by both paths
    inputs, lengths = torch.randn(5, 8, 6), torch.tensor([8, 3, 1, 6, 8])
    expected_outputs, expected = core(inputs, lengths=lengths)
    outputs, final_h = core.outputs_and_final_h(inputs, lengths)
    torch.testing.assert_close(outputs, expected_outputs)
    torch.testing.assert_close(final_h, expected["h"])
    assert not outputs[1, 3:].any() and not outputs[2, 1:].any()
    same, _ = core(inputs[:2, :4])  # rows all of full length: one unpacked call
    torch.testing.assert_close(
        core.outputs_and_final_h(inputs[:2, :4], torch.tensor([4, 4]))[0], same
    )


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lengths_give_each_row_its_own_final_state(bidirectional: bool) -> None:
    torch.manual_seed(0)
    core = RecurrentCore(RecurrentConfig(3, 5, "gru", 2, bidirectional=bidirectional)).eval()
    short = torch.randn(1, 3, 3)
    padded = torch.cat([short, torch.randn(1, 4, 3)], dim=1)  # garbage after the real steps
    _, alone = core(short)
    _, packed = core(padded, lengths=torch.tensor([3]))
    torch.testing.assert_close(packed["h"], alone["h"])


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("layers", [1, 3])
def test_one_step_by_cells_equals_the_full_layer(cell: str, layers: int) -> None:
    """A single time step takes the cell-by-cell path; it must match nn.RNNBase exactly enough."""
    torch.manual_seed(0)
    core = RecurrentCore(RecurrentConfig(6, 10, cell, layers)).eval()
    state = {k: torch.randn(4, layers, 10) for k in (("h", "c") if cell == "lstm" else ("h",))}
    x = torch.randn(4, 1, 6)
    out, stepped = core(x, state)
    hx = core._to_layer_major(state)
    expected_out, expected_hx = core.rnn(x, hx)  # the library layer, bypassing the fast path
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(stepped, core._to_batch_major(expected_hx))


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize(
    ("attention", "attention_input"),
    [("none", False), ("additive", False), ("multiplicative", False), ("additive", True)],
)
def test_stepping_equals_teacher_forcing(cell: str, attention: str, attention_input: bool) -> None:
    """step() one token at a time gives the same log-probs as one teacher-forced pass."""
    torch.manual_seed(0)
    config = DecoderConfig(
        11,
        6,
        8,
        cell,
        2,
        0.0,
        attention,
        5,
        memory_size=7,
        context_size=7,
        inject_context=True,
        attention_input=attention_input,
    )
    decoder = RecurrentDecoder(config).eval()
    memory = Memory(
        context=torch.randn(3, 7),
        grid=torch.randn(3, 4, 7),
        mask=torch.ones(3, 4, dtype=torch.bool),
    )
    tokens = torch.randint(4, 11, (3, 5))
    logits, _, _ = decoder(tokens, decoder.init_state(memory))
    state = decoder.init_state(memory)
    for t in range(tokens.size(1)):
        log_probs, state = decoder.step(tokens[:, t], state)
        torch.testing.assert_close(log_probs, torch.log_softmax(logits[:, t], dim=-1))
        assert (state.attention is None) == (attention == "none")


def test_attention_ignores_padded_memory() -> None:
    torch.manual_seed(0)
    config = DecoderConfig(9, 4, 6, "lstm", attention="additive", memory_size=5, context_size=5)
    decoder = RecurrentDecoder(config).eval()
    grid = torch.randn(1, 3, 5)
    mask = torch.tensor([[True, True, False]])
    changed = grid.clone()
    changed[0, 2] = 100.0  # only the masked position differs
    context = torch.randn(1, 5)
    a, s1 = decoder.step(torch.tensor([1]), decoder.init_state(Memory(context, grid, mask)))
    b, s2 = decoder.step(torch.tensor([1]), decoder.init_state(Memory(context, changed, mask)))
    torch.testing.assert_close(a, b)
    assert s1.attention[0, 2] == 0 and torch.isclose(s1.attention.sum(), torch.tensor(1.0))


def test_show_attend_tell_context_enters_the_recurrent_input() -> None:
    """With attention_input the memory changes the hidden state itself, not only the output."""
    torch.manual_seed(0)
    config = DecoderConfig(
        9,
        4,
        6,
        "lstm",
        attention="additive",
        memory_size=5,
        context_size=5,
        init_from_context=False,
        attention_input=True,
    )
    decoder = RecurrentDecoder(config).eval()
    context, mask = torch.zeros(1, 5), torch.ones(1, 3, dtype=torch.bool)
    states = [
        decoder.step(torch.tensor([1]), decoder.init_state(Memory(context, grid, mask)))[1]
        for grid in (torch.zeros(1, 3, 5), torch.randn(1, 3, 5))
    ]
    assert not torch.allclose(states[0].recurrent["h"], states[1].recurrent["h"])


def test_doubly_stochastic_penalty() -> None:
    """Zero when every position gets exactly one unit of attention over the real steps."""
    eye = torch.eye(3).unsqueeze(0)  # (1, T=3, S=3): step t looks only at position t
    assert doubly_stochastic_penalty(eye, torch.ones(1, 3, dtype=torch.bool)).item() == 0.0
    one_step = torch.tensor([[True, False, False]])  # only the first step is real
    assert doubly_stochastic_penalty(eye, one_step).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="attention_input needs"):
        DecoderConfig(9, attention_input=True)
