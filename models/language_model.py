"""Character-level language model: the shared RecurrentDecoder with no memory, primed by seed text."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from models.decoders import DecoderConfig, DecoderState, RecurrentDecoder
from models.recurrent import CellType
from models.search import Hypothesis, SearchOptions, decode
from models.vocabulary import START, Vocabulary

# Bounds of `generate`; the service validates its requests against the same numbers.
MAX_SEED_CHARS = 2000
MAX_GENERATE_CHARS = 2000
MAX_BEAM_SIZE = 8
MAX_SAMPLES = 8
# Where a primed state keeps the seed's last character: the first input of the decoding loop.
_NEXT_INPUT = "next_input"
# An empty seed is read as the start of a text, i.e. what follows a line break.
_EMPTY_SEED = "\n"


@dataclass(frozen=True)
class CharLMConfig:
    """Shape of a character language model (vocab_size counts the four special ids)."""

    vocab_size: int
    embed_size: int = 64
    hidden_size: int = 256
    cell: CellType = "lstm"
    num_layers: int = 2
    dropout: float = 0.1  # on embeddings, between layers and before the output layer

    def decoder_config(self) -> DecoderConfig:
        """The equivalent memory-less decoder."""
        return DecoderConfig(
            vocab_size=self.vocab_size,
            embed_size=self.embed_size,
            hidden_size=self.hidden_size,
            cell=self.cell,
            num_layers=self.num_layers,
            dropout=self.dropout,
        )


class CharLanguageModel(nn.Module):
    """Characters in, next-character logits out; a RecurrentDecoder without memory."""

    def __init__(self, config: CharLMConfig) -> None:
        super().__init__()
        self.config = config
        self.decoder = RecurrentDecoder(config.decoder_config())

    def init_state(self, batch_size: int) -> DecoderState:
        """The state before the first character: h (and c) of shape (B, L, H)."""
        return self.decoder.init_state(None, batch_size)

    def forward(
        self, tokens: Tensor, state: DecoderState | None = None
    ) -> tuple[Tensor, DecoderState]:
        """Teacher-forced pass: tokens (B, T) -> logits (B, T, V) and the state after them."""
        if state is None:
            state = self.init_state(tokens.size(0))
        logits, state, _ = self.decoder(tokens, state)
        return logits, state

    def prime(self, ids: Tensor) -> DecoderState:
        """State after reading ids (B, T>=1) whose last column is still to be fed by `step`."""
        state = self.init_state(ids.size(0))
        if ids.size(1) > 1:
            _, state = self.forward(ids[:, :-1], state)
        return replace(state, static={**state.static, _NEXT_INPUT: ids[:, -1]})

    def step(self, prev_tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """Stepper interface (N,) -> log-probs (N, V); START means "the primed seed character"."""
        primed = state.static.get(_NEXT_INPUT)
        if primed is not None:
            prev_tokens = torch.where(prev_tokens == START, primed, prev_tokens)
        return self.decoder.step(prev_tokens, state)


def detach_state(state: DecoderState) -> DecoderState:
    """The same state cut from the autograd graph (truncated BPTT carries it to the next chunk)."""
    return replace(state, recurrent={k: v.detach() for k, v in state.recurrent.items()})


def check_generation(seed_text: str, options: SearchOptions) -> None:
    """Raise ValueError naming the bound that a generation request exceeds."""
    if len(seed_text) > MAX_SEED_CHARS:
        raise ValueError(f"seed text has {len(seed_text)} characters; at most {MAX_SEED_CHARS}")
    if options.max_length > MAX_GENERATE_CHARS:
        raise ValueError(f"max_length is {options.max_length}; at most {MAX_GENERATE_CHARS}")
    if options.method == "beam" and options.beam_size > MAX_BEAM_SIZE:
        raise ValueError(f"beam_size is {options.beam_size}; at most {MAX_BEAM_SIZE}")
    if options.n_best > MAX_SAMPLES:
        raise ValueError(f"n_best is {options.n_best}; at most {MAX_SAMPLES}")
    if options.top_k < 0:
        raise ValueError(f"top_k is {options.top_k}; use 0 (whole vocabulary) or more")


@torch.inference_mode()
def generate_hypotheses(
    model: CharLanguageModel, vocabulary: Vocabulary, seed_text: str, options: SearchOptions
) -> list[Hypothesis]:
    """Continuations of `seed_text` through `models.search.decode`, best first (n_best of them).

    Bounds: seed at most MAX_SEED_CHARS characters (empty means "start of a text"), max_length
    at most MAX_GENERATE_CHARS, beam_size at most MAX_BEAM_SIZE, n_best at most MAX_SAMPLES.
    Sampling with `options.seed` set is reproducible. Unknown seed characters read as <unk>.
    """
    check_generation(seed_text, options)
    device = next(model.parameters()).device
    ids = vocabulary.encode(seed_text or _EMPTY_SEED)
    state = model.prime(torch.tensor([ids], dtype=torch.long, device=device))  # (1, S)
    return decode(model, state, options)[0]


def generate(
    model: CharLanguageModel, vocabulary: Vocabulary, seed_text: str, options: SearchOptions
) -> str:
    """The best continuation of `seed_text` (without the seed); bounds as `generate_hypotheses`."""
    best = generate_hypotheses(model, vocabulary, seed_text, options)[0]
    return vocabulary.decode(best.tokens)
