"""Stateless soft attention: additive (Bahdanau) and multiplicative (Luong "general") scores."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

AttentionType = Literal["none", "additive", "multiplicative"]


class Attention(nn.Module):
    """Scores queries against a memory; keys are projected once per input by `prepare`."""

    def prepare(self, memory: Tensor) -> Tensor:
        """Project memory (B, S, M) into keys, once per input rather than once per step."""
        raise NotImplementedError

    def score(self, queries: Tensor, keys: Tensor) -> Tensor:
        """Unnormalised scores for queries (B, T, Q) against keys -> (B, T, S)."""
        raise NotImplementedError

    def forward(
        self, queries: Tensor, keys: Tensor, memory: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Attend: queries (B, T, Q), keys, memory (B, S, M), mask (B, S) true where real.

        Returns contexts (B, T, M) and weights (B, T, S) that sum to 1 over real positions.
        """
        scores = self.score(queries, keys)  # (B, T, S)
        scores = scores.masked_fill(~mask.unsqueeze(1), torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1)
        return torch.bmm(weights, memory), weights  # (B, T, M), (B, T, S)


class AdditiveAttention(Attention):
    """Bahdanau et al. (2015): v^T tanh(W_k k + W_q q)."""

    def __init__(self, query_size: int, memory_size: int, attention_size: int) -> None:
        super().__init__()
        self.key_proj = nn.Linear(memory_size, attention_size, bias=False)
        self.query_proj = nn.Linear(query_size, attention_size, bias=False)
        self.v = nn.Linear(attention_size, 1, bias=False)

    def prepare(self, memory: Tensor) -> Tensor:
        return self.key_proj(memory)  # (B, S, A)

    def score(self, queries: Tensor, keys: Tensor) -> Tensor:
        q = self.query_proj(queries).unsqueeze(2)  # (B, T, 1, A)
        return self.v(torch.tanh(q + keys.unsqueeze(1))).squeeze(-1)  # (B, T, S)


class MultiplicativeAttention(Attention):
    """Luong et al. (2015) "general": q^T W k."""

    def __init__(self, query_size: int, memory_size: int) -> None:
        super().__init__()
        self.key_proj = nn.Linear(memory_size, query_size, bias=False)

    def prepare(self, memory: Tensor) -> Tensor:
        return self.key_proj(memory)  # (B, S, Q)

    def score(self, queries: Tensor, keys: Tensor) -> Tensor:
        return torch.bmm(queries, keys.transpose(1, 2))  # (B, T, S)


def build_attention(
    kind: AttentionType, query_size: int, memory_size: int, attention_size: int
) -> Attention | None:
    """The attention module for `kind`, or None for "none"."""
    if kind == "none":
        return None
    if kind == "additive":
        return AdditiveAttention(query_size, memory_size, attention_size)
    if kind == "multiplicative":
        return MultiplicativeAttention(query_size, memory_size)
    raise ValueError(f"attention must be none, additive or multiplicative, got {kind!r}")


def doubly_stochastic_penalty(weights: Tensor, steps: Tensor) -> Tensor:
    """Show, Attend and Tell's regulariser: sum over positions of (1 - attention received)^2.

    weights (B, T, S) of every decoding step, steps (B, T) true at real (non-PAD) steps.
    Pushes the model to look at every grid cell about once over a caption; mean over the batch.
    """
    received = (weights * steps.unsqueeze(-1).to(weights.dtype)).sum(dim=1)  # (B, S)
    return ((1.0 - received) ** 2).sum(dim=-1).mean()
