"""Truncated backpropagation through time over parallel text streams, evaluation in bits per character."""

from __future__ import annotations

import math
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.decoders import DecoderState
from models.language_model import CharLanguageModel, detach_state

LN2 = math.log(2.0)


def to_streams(ids: Sequence[int] | Tensor, batch_size: int) -> Tensor:
    """Cut a text's ids (N,) into `batch_size` contiguous streams (B, N // B); the tail is dropped."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    length = ids.numel() // batch_size
    if length < 2:
        raise ValueError(f"{ids.numel()} characters are too few for {batch_size} streams")
    return ids[: batch_size * length].view(batch_size, length)  # (B, L)


def chunks(streams: Tensor, bptt: int | None, offset: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """(inputs, targets) pairs of shape (B, <=T): consecutive windows, targets shifted by one.

    `bptt` None is full BPTT: the whole stream is one window. `offset` skips the first characters
    (a different offset each epoch moves the window boundaries).
    """
    length = streams.size(1) - 1
    for start in _starts(streams, bptt, offset):
        end = min(start + (bptt or length), length)
        yield streams[:, start:end], streams[:, start + 1 : end + 1]


def chunk_count(streams: Tensor, bptt: int | None, offset: int = 0) -> int:
    """How many windows `chunks` yields."""
    return len(_starts(streams, bptt, offset))


def _starts(streams: Tensor, bptt: int | None, offset: int) -> range:
    length = streams.size(1) - 1
    return range(offset, length, bptt or length)


@dataclass(frozen=True)
class ChunkResult:
    """What one forward+backward over a chunk produced."""

    loss: float  # mean cross-entropy in nats per character
    grad_norm: float  # total gradient norm before clipping
    characters: int


def train_chunk(
    model: CharLanguageModel,
    inputs: Tensor,
    targets: Tensor,
    state: DecoderState,
    optimizer: torch.optim.Optimizer,
    clip_norm: float,
) -> tuple[ChunkResult, DecoderState]:
    """One forward and backward over inputs/targets (B, T); returns the next state, detached."""
    logits, state = model(inputs, state)  # (B, T, V)
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = nn.utils.clip_grad_norm_(model.parameters(), clip_norm if clip_norm > 0 else math.inf)
    optimizer.step()
    return ChunkResult(loss.item(), norm.item(), targets.numel()), detach_state(state)


def train_streams(
    model: CharLanguageModel,
    streams: Tensor,
    optimizer: torch.optim.Optimizer,
    bptt: int | None,
    clip_norm: float,
    offset: int = 0,
    after_chunk: Callable[[ChunkResult], bool] | None = None,
) -> list[ChunkResult]:
    """One pass over the streams (B, L): the state flows from chunk to chunk, cut from the graph.

    `after_chunk` sees each chunk's result and may end the pass early by returning True.
    """
    model.train()
    state = model.init_state(streams.size(0))
    results = []
    for inputs, targets in chunks(streams, bptt, offset):
        result, state = train_chunk(model, inputs, targets, state, optimizer, clip_norm)
        results.append(result)
        if after_chunk is not None and after_chunk(result):
            break
    return results


@torch.inference_mode()
def evaluate_bpc(model: CharLanguageModel, streams: Tensor, bptt: int = 256) -> float:
    """Bits per character over streams (B, L), the state carried across windows as in training."""
    model.eval()
    state = model.init_state(streams.size(0))
    total, count = 0.0, 0
    for inputs, targets in chunks(streams, bptt):
        logits, state = model(inputs, state)  # (B, T, V)
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


class SavedTensorMeter:
    """Live and peak bytes of the storage autograd keeps for backward (the memory BPTT costs).

    Each saved tensor is boxed while the meter is active. Bytes are those a tensor spans (not its
    whole storage: a chunk is a view of the text); the same span saved many times (a weight at every
    step) counts once, until backward frees the last box holding it.
    """

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self._boxes: Counter[tuple[int, int]] = Counter()  # (address, bytes) -> live boxes
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)

    def _pack(self, tensor: Tensor) -> _Saved:
        saved = _Saved(tensor)
        span = (tensor.data_ptr(), tensor.numel() * tensor.element_size())
        if self._boxes[span] == 0:
            self.live += span[1]
            self.peak = max(self.peak, self.live)
        self._boxes[span] += 1
        weakref.finalize(saved, self._release, span)
        return saved

    def _release(self, span: tuple[int, int]) -> None:
        self._boxes[span] -= 1
        if self._boxes[span] == 0:
            del self._boxes[span]
            self.live -= span[1]

    @staticmethod
    def _unpack(saved: _Saved) -> Tensor:
        return saved.tensor


class _Saved:
    """A saved tensor in a box, so that its release can be observed."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor
