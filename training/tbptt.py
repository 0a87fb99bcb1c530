"""Truncated backpropagation through time: text as parallel streams, windows as batches, bits per character."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.decoders import DecoderState
from models.language_model import CharLanguageModel
from training.loop import Carry

LN2 = math.log(2.0)


def to_streams(ids: Sequence[int] | Tensor, batch_size: int) -> Tensor:
    """Cut a text's ids (N,) into `batch_size` contiguous streams (B, N // B); the tail is dropped."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    length = ids.numel() // batch_size
    if length < 2:
        raise ValueError(f"{ids.numel()} characters are too few for {batch_size} streams")
    return ids[: batch_size * length].view(batch_size, length)  # (B, L)


def window_batches(streams: Tensor, window: int | None, offset: int = 0) -> list[list[int]]:
    """One pass over streams (B, L) as consecutive windows, each a batch of one id per stream.

    An id names a stream's row and the window's first position: `start * B + row` (so a batch can
    be split over processes by rows like any batch of examples). `window` None is full BPTT (one
    window); `offset` skips the first characters, so that window borders move between epochs.
    """
    rows, length = streams.shape
    starts = range(offset, length - 1, window or length - 1)
    return [[start * rows + row for row in range(rows)] for start in starts]


def window_batch(streams: Tensor, ids: Sequence[int], window: int | None) -> tuple[Tensor, Tensor]:
    """The inputs and the targets (shifted by one) of the windows `ids` name: (B', T), (B', T)."""
    rows, length = streams.shape
    start = ids[0] // rows  # every id of a batch shares its window
    end = min(start + (window or length - 1), length - 1)
    selected = streams[torch.tensor([i % rows for i in ids]), start : end + 1]  # (B', T + 1)
    return selected[:, :-1], selected[:, 1:]


class CarriedStateLM(nn.Module):
    """The LM as the training loop runs it: a window and the state the previous one left."""

    def __init__(self, model: CharLanguageModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, carry: Carry) -> tuple[Tensor, Carry]:
        """tokens (B, T) and the recurrent state (empty: start of a pass; h and c (B, L, H))
        -> logits (B, T, V) and the state after the window.

        The next carry is detached: the next window starts from this state, but its gradients
        stop at its own first character (that is what keeps the memory to one window's worth).
        """
        state = DecoderState(dict(carry)) if carry else None
        logits, state = self.model(tokens, state)
        return logits, {name: value.detach() for name, value in state.recurrent.items()}


@torch.inference_mode()
def evaluate_bpc(model: CharLanguageModel, streams: Tensor, window: int = 256) -> float:
    """Bits per character over streams (B, L), the state carried across windows as in training."""
    model.eval()
    carried, carry = CarriedStateLM(model), {}
    total, count = 0.0, 0
    for ids in window_batches(streams, window):
        inputs, targets = window_batch(streams, ids, window)
        logits, carry = carried(inputs, carry)  # (B, T, V)
        loss = nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), reduction="sum"
        )
        total, count = total + float(loss), count + targets.numel()
    return total / count / LN2


def unigram_bpc(train_ids: Sequence[int], eval_ids: Sequence[int], vocab_size: int) -> float:
    """Bits per character of add-one-smoothed character frequencies from the training text."""
    counts = Counter(train_ids)
    total = len(train_ids) + vocab_size
    bits = sum(-math.log2((counts[i] + 1) / total) for i in eval_ids)
    return bits / len(eval_ids)
