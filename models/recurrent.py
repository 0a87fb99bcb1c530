"""A stack of recurrent layers (vanilla RNN, GRU or LSTM) whose state is batch-first and inspectable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

CellType = Literal["rnn", "gru", "lstm"]
_LAYERS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
_CELLS = {"rnn": torch.rnn_tanh_cell, "gru": torch.gru_cell, "lstm": torch.lstm_cell}
_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
# below this share of real steps in a padded batch, packed rows encode faster on the CPU than the
# padded batch in oneDNN's LSTM (test sentences, batches of 8 to 64: `python -m bench.encode`)
_UNPACKED_FILL = 0.4


@dataclass(frozen=True)
class RecurrentConfig:
    """Shape of a recurrent stack."""

    input_size: int
    hidden_size: int
    cell: CellType = "lstm"
    num_layers: int = 1
    dropout: float = 0.0  # between stacked layers, as in nn.LSTM
    bidirectional: bool = False
    learned_init: bool = False  # a trained initial state instead of zeros

    def __post_init__(self) -> None:
        if self.cell not in _LAYERS:
            raise ValueError(f"cell must be one of {sorted(_LAYERS)}, got {self.cell!r}")
        if self.num_layers < 1:
            raise ValueError("num_layers must be at least 1")

    @property
    def output_size(self) -> int:
        return self.hidden_size * (2 if self.bidirectional else 1)


# State: {"h": (B, L*D, H)} and for LSTM also {"c": (B, L*D, H)}; D = 2 when bidirectional.
RecurrentState = dict[str, Tensor]


class RecurrentCore(nn.Module):
    """nn.RNN / nn.GRU / nn.LSTM with a batch-first state dict and an optional learned initial state."""

    def __init__(self, config: RecurrentConfig) -> None:
        super().__init__()
        self.config = config
        self.rnn = _LAYERS[config.cell](
            input_size=config.input_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            bidirectional=config.bidirectional,
            batch_first=True,
            **({"nonlinearity": "tanh"} if config.cell == "rnn" else {}),
        )
        directions = 2 if config.bidirectional else 1
        shape = (config.num_layers * directions, config.hidden_size)
        self.init_h = nn.Parameter(torch.zeros(shape), requires_grad=config.learned_init)
        if self.is_lstm:
            self.init_c = nn.Parameter(torch.zeros(shape), requires_grad=config.learned_init)

    @property
    def is_lstm(self) -> bool:
        return self.config.cell == "lstm"

    def initial_state(self, batch_size: int) -> RecurrentState:
        """Zero (or learned) state for `batch_size` rows: h (and c) of shape (B, L*D, H)."""
        state = {"h": self.init_h.unsqueeze(0).expand(batch_size, -1, -1)}
        if self.is_lstm:
            state["c"] = self.init_c.unsqueeze(0).expand(batch_size, -1, -1)
        return state

    def forward(
        self, inputs: Tensor, state: RecurrentState | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, RecurrentState]:
        """Run over inputs (B, T, I) -> outputs (B, T, D*H) and the final state.

        With `lengths` (B,), padded positions are skipped, so each row's final state is the state
        after its own last real step (and outputs past that are zero).
        """
        if state is None:
            state = self.initial_state(inputs.size(0))
        if inputs.size(1) == 1 and lengths is None and self._steps_by_cell:
            return self._one_step(inputs[:, 0], state)
        hx = self._to_layer_major(state)
        if lengths is None:
            outputs, hx = self.rnn(inputs, hx)
        else:
            packed = pack_padded_sequence(
                inputs, lengths.cpu(), batch_first=True, enforce_sorted=False
            )
            packed_out, hx = self.rnn(packed, hx)
            outputs, _ = pad_packed_sequence(
                packed_out, batch_first=True, total_length=inputs.size(1)
            )
        return outputs, self._to_batch_major(hx)

    def outputs_and_final_h(self, inputs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """What `forward(inputs, lengths=lengths)` gives an encoder: outputs (B, T, D*H), zero
        past each row's length, and the final h (B, L*D, H) (no c: it is not in the outputs).

        An LSTM on the CPU out of training runs without packing: each direction of each layer
        goes over the padded batch in one call, the backward one over each row reversed within
        its length, so torch can use oneDNN's LSTM; on packed rows of unequal length it steps
        through a loop of small matrix products instead (1.5x slower at batch 8: `python -m
        bench.encode`). Same numbers within float rounding. Rows all of full length need no
        packing and run as one call. Batches that are mostly padding (real steps under
        _UNPACKED_FILL of the padded batch), other cells, training and CUDA (where cuDNN takes
        packed rows as they are) pack.
        """
        batch, steps = inputs.shape[:2]
        lengths = lengths.to(inputs.device)
        full = bool((lengths == steps).all())
        sparse = int(lengths.sum()) < _UNPACKED_FILL * batch * steps
        if full or sparse or self.training or not self.is_lstm or inputs.device.type != "cpu":
            outputs, state = self(inputs, lengths=None if full else lengths)
            return outputs, state["h"]
        positions = torch.arange(steps, device=inputs.device)
        valid = positions < lengths.unsqueeze(1)  # (B, T)
        # within-length reversal: t -> length-1-t for real positions, pads stay where they are
        reverse = torch.where(valid, lengths.unsqueeze(1) - 1 - positions, positions)  # (B, T)
        rows, ends = torch.arange(batch, device=inputs.device), lengths - 1
        initial = self.initial_state(batch)
        directions = 2 if self.config.bidirectional else 1
        x, finals = inputs, []
        for layer in range(self.config.num_layers):
            outputs = []
            for direction in range(directions):
                k = layer * directions + direction
                suffix = "_reverse" if direction else ""
                weights = [getattr(self.rnn, f"{name}_l{layer}{suffix}") for name in _WEIGHTS]
                hx = [initial[key][:, k].unsqueeze(0).contiguous() for key in ("h", "c")]
                seq = _time_gather(x, reverse) if direction else x
                out = torch.lstm(seq, hx, weights, True, 1, 0.0, False, False, True)[0]
                finals.append(out[rows, ends])  # (B, H): after each row's last real step
                outputs.append(_time_gather(out, reverse) if direction else out)
            x = torch.cat(outputs, dim=-1)  # (B, T, D*H)
        return x.masked_fill(~valid.unsqueeze(-1), 0.0), torch.stack(finals, dim=1)

    @property
    def _steps_by_cell(self) -> bool:
        """Whether one step may skip nn.RNNBase: unidirectional, and no dropout between layers."""
        return not self.config.bidirectional and (not self.training or self.config.num_layers == 1)

    def _one_step(self, x: Tensor, state: RecurrentState) -> tuple[Tensor, RecurrentState]:
        """One time step (B, I) layer by layer with the fused cell functions, on nn.LSTM's own
        weights. Same numbers as the full layer (within float rounding), but without its per-call
        set-up, which dominates a one-row step (figures: bench/README.md, "One decoding step")."""
        cell = _CELLS[self.config.cell]
        hs, cs = [], []
        for layer in range(self.config.num_layers):
            weights = [getattr(self.rnn, f"{name}_l{layer}") for name in _WEIGHTS]
            if self.is_lstm:
                h, c = cell(x, (state["h"][:, layer], state["c"][:, layer]), *weights)
                cs.append(c)
            else:
                h = cell(x, state["h"][:, layer], *weights)
            hs.append(h)
            x = h
        stepped = {"h": torch.stack(hs, dim=1)}  # (B, L, H)
        if self.is_lstm:
            stepped["c"] = torch.stack(cs, dim=1)
        return x.unsqueeze(1), stepped

    def _to_layer_major(self, state: RecurrentState) -> Tensor | tuple[Tensor, Tensor]:
        h = state["h"].transpose(0, 1).contiguous()  # (L*D, B, H)
        if self.is_lstm:
            return h, state["c"].transpose(0, 1).contiguous()
        return h

    def _to_batch_major(self, hx: Tensor | tuple[Tensor, Tensor]) -> RecurrentState:
        if isinstance(hx, tuple):
            return {"h": hx[0].transpose(0, 1), "c": hx[1].transpose(0, 1)}  # (B, L*D, H)
        return {"h": hx.transpose(0, 1)}


def _time_gather(x: Tensor, index: Tensor) -> Tensor:
    """x (B, T, F) with each row's time steps taken in the order of index (B, T)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.size(-1)))
