"""A meter of the bytes autograd keeps for backward: what backpropagation through a sequence costs."""

from __future__ import annotations

import weakref
from collections import Counter

import torch
from torch import Tensor


class SavedTensorMeter:
    """Live and peak bytes of the storage autograd keeps for backward.

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
