"""The one recurrent decoder (captioner, translator, language model) and its stepping interface."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from models.attention import AttentionType, build_attention
from models.recurrent import CellType, RecurrentConfig, RecurrentCore, RecurrentState
from models.vocabulary import PAD


@dataclass(frozen=True)
class DecoderConfig:
    """Shape and conditioning of a recurrent decoder.

    Conditioning on a summary vector `context` (image or source sentence):
    `init_from_context` sets the initial state from it (Show and Tell, seq2seq bridge);
    `inject_context` also feeds it with every input token (the W_ih injection).
    `attention` attends over a memory grid (feature grid or encoder outputs) with the current
    top hidden state as the query, Luong style: the output layer sees tanh(W[h; context]).
    `attention_input` attends *before* each step instead, with the previous top hidden state as
    the query, and feeds the gated context beta * z into the recurrent input (Show, Attend and
    Tell, Xu et al. 2015: beta = sigmoid(w^T h)); the output layer still sees [h; z].
    `tie_embeddings` makes the output layer read the target embedding matrix (Press and Wolf 2017);
    when hidden_size != embed_size a linear bridge brings the pre-softmax vector to embed_size.
    """

    vocab_size: int
    embed_size: int = 128
    hidden_size: int = 256
    cell: CellType = "lstm"
    num_layers: int = 1
    dropout: float = 0.1
    attention: AttentionType = "none"
    attention_size: int = 128
    memory_size: int = 0  # size of one memory vector; 0 when there is no memory
    context_size: int = 0  # size of the summary vector; 0 when there is none
    init_from_context: bool = True
    inject_context: bool = False
    learned_init: bool = False
    attention_input: bool = False
    tie_embeddings: bool = False  # absent from configs saved before it: loads as untied

    def __post_init__(self) -> None:
        if self.attention != "none" and self.memory_size <= 0:
            raise ValueError("attention needs memory_size > 0")
        if self.attention_input and self.attention == "none":
            raise ValueError("attention_input needs an attention type (additive or multiplicative)")
        if (self.init_from_context or self.inject_context) and self.context_size <= 0:
            object.__setattr__(self, "init_from_context", False)
            object.__setattr__(self, "inject_context", False)


@dataclass(frozen=True)
class Memory:
    """What a decoder conditions on, for a batch of B inputs."""

    context: Tensor | None = None  # (B, C) summary vector
    grid: Tensor | None = None  # (B, S, M) vectors to attend over
    mask: Tensor | None = None  # (B, S) true at real positions


@dataclass(frozen=True)
class DecoderState:
    """Everything a decoding step needs, batch-first so search can reshuffle rows.

    `recurrent` changes every step and follows beams when they are reordered; `static` is fixed
    per input (memory, attention keys, mask, injected context) and is only expanded, never reordered.
    """

    recurrent: RecurrentState
    static: dict[str, Tensor] = field(default_factory=dict)
    attention: Tensor | None = None  # (N, S) weights of the last step, when the model attends

    @property
    def batch_size(self) -> int:
        return next(iter(self.recurrent.values())).size(0)

    def expand(self, times: int) -> DecoderState:
        """Repeat every row `times` times in place: row b becomes rows b*times .. b*times+times-1."""
        return DecoderState(
            {k: v.repeat_interleave(times, dim=0) for k, v in self.recurrent.items()},
            {k: v.repeat_interleave(times, dim=0) for k, v in self.static.items()},
        )

    def select(self, rows: Tensor, include_static: bool = False) -> DecoderState:
        """Keep `rows` (N',) of the recurrent state (and of the static part when it differs per row)."""
        static = self.static
        if include_static:
            static = {k: v.index_select(0, rows) for k, v in static.items()}
        return DecoderState({k: v.index_select(0, rows) for k, v in self.recurrent.items()}, static)


class RecurrentDecoder(nn.Module):
    """Embedding -> recurrent stack -> (attention) -> vocabulary logits."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embedding = nn.Embedding(c.vocab_size, c.embed_size, padding_idx=PAD)
        inject = c.embed_size if c.inject_context else 0
        attended = c.memory_size if c.attention_input else 0
        self.rnn = RecurrentCore(
            RecurrentConfig(
                c.embed_size + inject + attended,
                c.hidden_size,
                c.cell,
                c.num_layers,
                c.dropout,
                learned_init=c.learned_init,
            )
        )
        states = 2 if c.cell == "lstm" else 1
        self.init_proj = (
            nn.Linear(c.context_size, states * c.num_layers * c.hidden_size)
            if c.init_from_context
            else None
        )
        self.inject_proj = nn.Linear(c.context_size, c.embed_size) if c.inject_context else None
        self.attention = build_attention(
            c.attention, c.hidden_size, c.memory_size, c.attention_size
        )
        self.combine = (
            nn.Linear(c.hidden_size + c.memory_size, c.hidden_size, bias=False)
            if self.attention is not None
            else None
        )
        self.gate = nn.Linear(c.hidden_size, 1) if c.attention_input else None
        self.dropout = nn.Dropout(c.dropout)
        self.bridge, self.output = _output_layer(self.embedding, c)

    def init_state(self, memory: Memory | None, batch_size: int | None = None) -> DecoderState:
        """The state before the first token, conditioned on `memory` (None for a language model)."""
        memory = memory or Memory()
        if batch_size is None:
            batch_size = _batch_size_of(memory)
        recurrent = self.rnn.initial_state(batch_size)
        if self.init_proj is not None:
            recurrent = self._state_from_context(memory.context)
        static: dict[str, Tensor] = {}
        if self.inject_proj is not None:
            static["inject"] = self.inject_proj(memory.context)  # (B, E)
        if self.attention is not None:
            grid = memory.grid
            mask = (
                memory.mask
                if memory.mask is not None
                else grid.new_ones(grid.shape[:2], dtype=torch.bool)
            )
            static.update(memory=grid, keys=self.attention.prepare(grid), mask=mask)
        return DecoderState(recurrent, static)

    def _state_from_context(self, context: Tensor) -> RecurrentState:
        c = self.config
        projected = torch.tanh(self.init_proj(context))  # (B, S*L*H)
        parts = projected.view(context.size(0), -1, c.num_layers, c.hidden_size).unbind(1)
        return dict(
            zip(("h", "c"), (p.contiguous() for p in parts), strict=False)
        )  # (B, L, H) each

    def forward(
        self, tokens: Tensor, state: DecoderState
    ) -> tuple[Tensor, DecoderState, Tensor | None]:
        """Teacher-forced pass: tokens (B, T) -> logits (B, T, V), next state, attention (B, T, S)."""
        x = self.dropout(self.embedding(tokens))  # (B, T, E)
        if "inject" in state.static:
            x = torch.cat(
                [x, state.static["inject"].unsqueeze(1).expand(-1, x.size(1), -1)], dim=-1
            )
        if self.gate is not None:
            hidden, recurrent, context, weights = self._attend_then_step(x, state)
        else:
            hidden, recurrent = self.rnn(x, state.recurrent)  # (B, T, H)
            context = weights = None
            if self.attention is not None:
                s = state.static
                context, weights = self.attention(
                    hidden, s["keys"], s["memory"], s["mask"]
                )  # (B, T, M), (B, T, S)
        if context is not None:
            hidden = torch.tanh(self.combine(torch.cat([hidden, context], dim=-1)))  # (B, T, H)
        logits = self.output(self.bridge(self.dropout(hidden)))  # (B, T, V)
        return logits, replace(state, recurrent=recurrent, attention=None), weights

    def _attend_then_step(
        self, x: Tensor, state: DecoderState
    ) -> tuple[Tensor, RecurrentState, Tensor, Tensor]:
        """Show, Attend and Tell over inputs x (B, T, I): each step's query is the previous top
        hidden state, so the steps run one at a time. Returns hidden (B, T, H), the final state,
        contexts (B, T, M) and weights (B, T, S)."""
        s = state.static
        recurrent = state.recurrent
        hidden, contexts, weights = [], [], []
        for t in range(x.size(1)):
            query = recurrent["h"][:, -1:]  # (B, 1, H): top layer
            context, weight = self.attention(query, s["keys"], s["memory"], s["mask"])
            gated = torch.sigmoid(self.gate(query)) * context  # (B, 1, M)
            out, recurrent = self.rnn(torch.cat([x[:, t : t + 1], gated], dim=-1), recurrent)
            hidden.append(out)
            contexts.append(context)
            weights.append(weight)
        return torch.cat(hidden, 1), recurrent, torch.cat(contexts, 1), torch.cat(weights, 1)

    def step(self, prev_tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """One decoding step: prev_tokens (N,) -> log-probabilities (N, V) and the next state."""
        logits, state, weights = self.forward(prev_tokens.unsqueeze(1), state)
        log_probs = torch.log_softmax(
            logits[:, 0].float(), dim=-1
        )  # (N, V), fp32 even under autocast
        attention = weights[:, 0].float() if weights is not None else None  # (N, S)
        return log_probs, replace(state, attention=attention)


def _output_layer(embedding: nn.Embedding, c: DecoderConfig) -> tuple[nn.Module, nn.Linear]:
    """The bridge (H -> E, or nothing) and the vocabulary projection; tied, the projection's
    weight *is* the embedding matrix (one parameter, one storage)."""
    if not c.tie_embeddings:
        return nn.Identity(), nn.Linear(c.hidden_size, c.vocab_size)
    bridge = (
        nn.Linear(c.hidden_size, c.embed_size, bias=False)
        if c.hidden_size != c.embed_size
        else nn.Identity()
    )
    output = nn.Linear(c.embed_size, c.vocab_size)
    # N(0, 1) rows, as nn.Embedding starts, would make the first logits ~sqrt(E) times too large
    nn.init.normal_(embedding.weight, std=c.embed_size**-0.5)
    with torch.no_grad():
        embedding.weight[PAD].zero_()
    output.weight = embedding.weight
    return bridge, output


def _batch_size_of(memory: Memory) -> int:
    for tensor in (memory.context, memory.grid):
        if tensor is not None:
            return tensor.size(0)
    raise ValueError("batch_size is required when the memory is empty")
