"""Several translators decoded as one: every step averages their next-token probabilities."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from models.decoders import DecoderState, RecurrentDecoder
from models.translator import Translator
from models.vocabulary import Vocabulary

_SEPARATOR = "/"  # between a member's index and its own state key: "0/h", "1/keys"


class EnsembleDecoder:
    """The members' decoders as one stepper for `models.search`: one forward per member per step.

    The members' states travel in one DecoderState, each key prefixed with its member's index,
    so search expands, reorders and selects every member's rows exactly as it does one model's.
    """

    def __init__(self, decoders: Sequence[RecurrentDecoder]) -> None:
        self.decoders = list(decoders)

    @property
    def embedding(self) -> nn.Embedding:
        """The first member's embedding: the first module every step runs (the service hooks it
        to stop a batch nobody waits for)."""
        return self.decoders[0].embedding

    def step(self, prev_tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """prev_tokens (N,) -> log of the members' mean probability (N, V), and the next state."""
        steps = [
            decoder.step(prev_tokens, member)
            for decoder, member in zip(
                self.decoders, split_state(state, len(self.decoders)), strict=True
            )
        ]
        log_probs = mean_probability([lp for lp, _ in steps])
        return log_probs, merge_states([s for _, s in steps])


class TranslatorEnsemble(nn.Module):
    """Translators over the same vocabularies (e.g. one recipe, several seeds) as one translator:
    `init_state`, `decoder.step` and `max_lengths` stand where a Translator's do."""

    def __init__(self, members: Sequence[Translator]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        sizes = {(m.config.encoder.vocab_size, m.config.decoder.vocab_size) for m in members}
        if len(sizes) > 1:
            raise ValueError(
                f"ensemble members differ in (source, target) vocabulary size: {sizes}"
            )
        self.members = nn.ModuleList(members)
        self.decoder = EnsembleDecoder([m.decoder for m in members])

    def init_state(self, source: Tensor, lengths: Tensor) -> DecoderState:
        """Every member encodes the padded batch source (B, S), lengths (B,)."""
        return merge_states([member.init_state(source, lengths) for member in self.members])

    def max_lengths(self, lengths: Tensor) -> Tensor:
        """The tightest of the members' output length limits (B,): no member decodes past its own."""
        limits = torch.stack([member.max_lengths(lengths) for member in self.members])  # (M, B)
        return limits.min(dim=0).values


def mean_probability(log_probs: Sequence[Tensor]) -> Tensor:
    """Members' log-probabilities, each (..., V) -> log of their mean probability (..., V).

    The arithmetic mean of probabilities (fairseq's and joeynmt's ensembles): a distribution as it
    stands, with no renormalisation, and a token that one member rules out is not vetoed as it is
    under a mean of log-probabilities. For one member it is that member's output, bit for bit:
    logsumexp over one value returns it and log(1) is 0.
    """
    stacked = torch.stack(list(log_probs))  # (M, ..., V)
    return torch.logsumexp(stacked, dim=0) - math.log(len(log_probs))


def mean_attention(weights: Sequence[Tensor | None]) -> Tensor | None:
    """The mean of the attending members' step weights (N, S) over the one padded source; None
    when no member attends. Members without attention have no alignment to add."""
    attending = [w for w in weights if w is not None]
    return torch.stack(attending).mean(dim=0) if attending else None  # (N, S)


def merge_states(states: Sequence[DecoderState]) -> DecoderState:
    """Members' states -> one DecoderState, keys prefixed "<member>/"; attention is their mean."""
    return DecoderState(
        {f"{i}{_SEPARATOR}{k}": v for i, s in enumerate(states) for k, v in s.recurrent.items()},
        {f"{i}{_SEPARATOR}{k}": v for i, s in enumerate(states) for k, v in s.static.items()},
        mean_attention([s.attention for s in states]),
    )


def split_state(state: DecoderState, count: int) -> list[DecoderState]:
    """The inverse of `merge_states`, without the attention (a step does not read it)."""
    recurrent: list[dict[str, Tensor]] = [{} for _ in range(count)]
    static: list[dict[str, Tensor]] = [{} for _ in range(count)]
    for merged, parts in ((state.recurrent, recurrent), (state.static, static)):
        for key, value in merged.items():
            index, _, name = key.partition(_SEPARATOR)
            parts[int(index)][name] = value
    return [DecoderState(r, s) for r, s in zip(recurrent, static, strict=True)]


def check_members_agree(what: str, values: Mapping[str, object]) -> None:
    """ValueError naming each member (name -> value) whose `what` differs from the first
    member's, and how."""
    (first, expected), *others = values.items()
    differences = [
        f"{name} {_difference(expected, value)} {first}"
        for name, value in others
        if value != expected
    ]
    if differences:
        raise ValueError(f"ensemble members differ in their {what}: {'; '.join(differences)}")


def _difference(expected: object, value: object) -> str:
    """How `value` differs from `expected`, as "<value's side> vs" the first member."""
    if not (isinstance(expected, Vocabulary) and isinstance(value, Vocabulary)):
        return f"has {value!r}, vs {expected!r} in"
    if value.tokenizer.to_dict() != expected.tokenizer.to_dict():
        kinds = value.tokenizer.kind, expected.tokenizer.kind
        return f"tokenizes differently ({kinds[0]} vs {kinds[1]}, or its settings) from"
    if len(value) != len(expected):
        return f"has {len(value)} tokens, vs {len(expected)} in"
    at = next(
        i for i, (a, b) in enumerate(zip(value.tokens, expected.tokens, strict=True)) if a != b
    )
    return f"has token {value.tokens[at]!r} at id {at}, vs {expected.tokens[at]!r} in"
