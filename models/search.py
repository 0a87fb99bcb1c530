"""The one decoding module: batched greedy search, sampling and beam search over any stepper."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from models.decoders import DecoderState
from models.vocabulary import END, PAD, START

Method = Literal["greedy", "beam", "sample"]
_NEG_INF = float("-inf")


class Stepper(Protocol):
    """Anything with the decoder stepping interface."""

    def step(self, prev_tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]: ...


@dataclass(frozen=True)
class SearchOptions:
    """How to decode. `max_length` counts generated tokens, END included."""

    method: Method = "greedy"
    beam_size: int = 5
    n_best: int = 1
    max_length: int = 50
    min_length: int = 1  # END is forbidden before this many tokens: never empty by default
    never_first: tuple[int, ...] = ()  # ids that cannot open the output (a caption's punctuation)
    length_penalty: float = 1.0  # GNMT alpha: score = log_prob / ((5 + length) / 6) ** alpha
    no_repeat_ngram_size: int = 0  # 0 disables the block
    temperature: float = 1.0
    top_k: int = 0  # 0 samples from the whole vocabulary
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.method not in ("greedy", "beam", "sample"):
            raise ValueError(f"method must be greedy, beam or sample, got {self.method!r}")
        if self.beam_size < 1 or self.max_length < 1 or self.n_best < 1:
            raise ValueError("beam_size, max_length and n_best must be at least 1")
        if self.method == "beam" and self.n_best > self.beam_size:
            raise ValueError("n_best cannot exceed beam_size")
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")


@dataclass
class Hypothesis:
    """One decoded sequence. `tokens` exclude START and END; `token_log_probs` include END."""

    tokens: list[int]
    score: float  # length-normalised log-probability
    log_prob: float
    token_log_probs: list[float]
    truncated: bool  # END was never produced
    attention: Tensor | None = None  # (len(token_log_probs), S)


def normalized_score(log_prob: float, length: int, alpha: float) -> float:
    """GNMT length normalisation (Wu et al. 2016); alpha 0 leaves the log-probability as is."""
    return log_prob / (((5.0 + length) / 6.0) ** alpha) if alpha else log_prob


@torch.no_grad()
def decode(
    stepper: Stepper, state: DecoderState, options: SearchOptions, max_lengths: Tensor | None = None
) -> list[list[Hypothesis]]:
    """Decode a batch of B inputs; returns, per input, its hypotheses best first.

    `max_lengths` (B,) overrides `options.max_length` per input (e.g. from source lengths).
    Sampling returns `n_best` independent samples per input, best first.
    """
    batch = state.batch_size
    limits = _limits(options, max_lengths, batch, next(iter(state.recurrent.values())).device)
    if options.method == "beam":
        return beam_search(stepper, state, options, limits)
    copies = options.n_best if options.method == "sample" else 1
    if copies > 1:
        state, limits = state.expand(copies), limits.repeat_interleave(copies)
    rows = sequential_search(stepper, state, options, limits)
    grouped = [rows[i * copies : (i + 1) * copies] for i in range(batch)]
    return [sorted(group, key=lambda h: h.score, reverse=True) for group in grouped]


def _limits(
    options: SearchOptions, max_lengths: Tensor | None, batch: int, device: torch.device
) -> Tensor:
    limits = torch.full((batch,), options.max_length, dtype=torch.long, device=device)
    if max_lengths is not None:
        limits = torch.minimum(limits, max_lengths.to(device=device, dtype=torch.long).clamp(min=1))
    return limits  # (B,)


def sequential_search(
    stepper: Stepper, state: DecoderState, options: SearchOptions, limits: Tensor
) -> list[Hypothesis]:
    """Greedy or sampled decoding of N rows at once: one forward per step for the whole batch."""
    rows, device = limits.size(0), limits.device
    prev = torch.full((rows,), START, dtype=torch.long, device=device)
    seeds = _row_seeds(options, rows, device) if options.method == "sample" else None
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    tokens, token_lps, attentions = [], [], []
    for t in range(int(limits.max())):
        log_probs, state = stepper.step(prev, state)  # (N, V)
        history = _history(tokens, options, prev)
        log_probs = _constrain(log_probs, t, history, options)
        if seeds is None:
            choice = log_probs.argmax(dim=-1)  # (N,)
        else:
            choice = _sample(log_probs, seeds, t, options)
        choice = choice.masked_fill(finished, PAD)
        tokens.append(choice)
        token_lps.append(log_probs.gather(1, choice.unsqueeze(1)).squeeze(1))
        if state.attention is not None:
            attentions.append(state.attention)
        finished = finished | (choice == END) | (t + 1 >= limits)
        if bool(finished.all()):
            break
        prev = choice
    attention = torch.stack(attentions, dim=1) if attentions else None  # (N, T, S)
    return _rows_to_hypotheses(
        torch.stack(tokens, 1), torch.stack(token_lps, 1), attention, options
    )


def _history(tokens: list[Tensor], options: SearchOptions, prev: Tensor) -> Tensor:
    """The tokens so far (N, t), built only when the n-gram block needs them."""
    if tokens and options.no_repeat_ngram_size > 0:
        return torch.stack(tokens, dim=1)
    return prev.new_empty((prev.size(0), 0))


def _rows_to_hypotheses(
    tokens: Tensor, token_lps: Tensor, attention: Tensor | None, options: SearchOptions
) -> list[Hypothesis]:
    hypotheses = []
    for row, (ids, lps) in enumerate(zip(tokens.tolist(), token_lps.tolist(), strict=True)):
        # PAD is never generated (see _constrain), so it only fills rows that already stopped
        length = ids.index(END) + 1 if END in ids else len([i for i in ids if i != PAD])
        hypotheses.append(
            _hypothesis(
                ids[:length],
                lps[:length],
                attention[row, :length] if attention is not None else None,
                options,
            )
        )
    return hypotheses


def _hypothesis(
    ids: list[int], lps: list[float], attention: Tensor | None, options: SearchOptions
) -> Hypothesis:
    truncated = not ids or ids[-1] != END
    log_prob = float(sum(lps))
    return Hypothesis(
        tokens=ids if truncated else ids[:-1],
        score=normalized_score(log_prob, len(lps), options.length_penalty),
        log_prob=log_prob,
        token_log_probs=lps,
        truncated=truncated,
        attention=attention.detach().cpu() if attention is not None else None,
    )


def beam_search(
    stepper: Stepper, state: DecoderState, options: SearchOptions, limits: Tensor
) -> list[list[Hypothesis]]:
    """Batched beam search: B inputs x K beams run as B*K rows in one forward per step.

    Hypotheses that produce END are set aside; an input is done once it has K finished ones that
    no live beam can beat, or at its length limit (its live beams are then kept as truncated).
    A done input leaves the batch, so later steps only compute the inputs still searching.
    Returns the n-best per input.
    """
    batch, k, device = limits.size(0), options.beam_size, limits.device
    state = state.expand(k)  # rows b*K + j
    scores = torch.full((batch, k), _NEG_INF, device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep one so the first step does not repeat it
    prev = torch.full((batch * k,), START, dtype=torch.long, device=device)
    history = prev.new_empty((batch * k, 0))
    history_lps = scores.new_empty((batch * k, 0))
    attention: Tensor | None = None
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    active = list(range(batch))  # the input behind each of the B' rows groups still searching
    for t in range(int(limits.max())):
        live = len(active)
        log_probs, state = stepper.step(prev, state)  # (B'*K, V)
        log_probs = _constrain(log_probs, t, history, options)
        vocab = log_probs.size(1)
        candidates = (scores.view(-1, 1) + log_probs).view(live, k * vocab)
        top_scores, top_index = candidates.topk(2 * k, dim=1)  # (B', 2K)
        offsets = (torch.arange(live, device=device) * k).unsqueeze(1)  # (B', 1)
        top_rows = top_index // vocab + offsets  # (B', 2K) source row of each candidate
        top_tokens = top_index % vocab
        top_lps = log_probs.view(-1)[top_rows * vocab + top_tokens]  # (B', 2K)
        at_limit = t + 1 >= limits  # (B',)
        step = _Step(
            history, history_lps, attention, state.attention, top_rows, top_tokens, top_lps
        )

        is_end = (top_tokens == END) & torch.isfinite(top_scores)
        ends = is_end & (torch.arange(2 * k, device=device) < k)
        _set_aside(finished, active, step, ends, options)
        alive_scores, alive_pos = top_scores.masked_fill(is_end, _NEG_INF).topk(k, dim=1)  # (B', K)
        if bool(at_limit.any()):
            cut = torch.zeros_like(top_scores, dtype=torch.bool).scatter(1, alive_pos, True)
            _set_aside(
                finished,
                active,
                step,
                cut & at_limit.unsqueeze(1) & torch.isfinite(top_scores),
                options,
            )
        done = at_limit | _cannot_improve(
            [finished[i] for i in active], alive_scores[:, 0], t + 2, options
        )
        keep = (~done).nonzero().squeeze(1)  # (B'',) inputs still searching
        if keep.numel() == 0:
            break
        rows = top_rows.gather(1, alive_pos)[keep].view(-1)  # (B''*K,)
        prev = top_tokens.gather(1, alive_pos)[keep].view(-1)
        history = torch.cat([history[rows], prev.unsqueeze(1)], dim=1)
        history_lps = torch.cat(
            [history_lps[rows], top_lps.gather(1, alive_pos)[keep].view(-1, 1)], dim=1
        )
        attention = step.attention_for(rows)
        scores = alive_scores[keep]
        shrunk = keep.numel() < live
        if shrunk:
            active = [active[i] for i in keep.tolist()]
            limits = limits[keep]
        state = state.select(rows, include_static=shrunk)  # static rows of kept inputs only
    return [sorted(f, key=lambda h: h.score, reverse=True)[: options.n_best] for f in finished]


def _cannot_improve(
    finished: list[list[Hypothesis]], best_alive: Tensor, length: int, options: SearchOptions
) -> Tensor:
    """(B,) true where K hypotheses are finished and the best live beam, ended at the shortest
    length it can still reach, would not beat the K-th of them (live scores only fall)."""
    k = options.beam_size
    kth = [
        sorted((h.score for h in f), reverse=True)[k - 1] if len(f) >= k else float("-inf")
        for f in finished
    ]
    kth_scores = torch.tensor(kth, device=best_alive.device)
    bound = best_alive / (((5.0 + length) / 6.0) ** options.length_penalty)
    return bound <= kth_scores


@dataclass(frozen=True)
class _Step:
    """The beam bookkeeping of one step, to turn chosen candidates into hypotheses."""

    history: Tensor  # (B*K, t)
    history_lps: Tensor  # (B*K, t)
    attention: Tensor | None  # (B*K, t, S)
    step_attention: Tensor | None  # (B*K, S)
    rows: Tensor  # (B, 2K)
    tokens: Tensor  # (B, 2K)
    lps: Tensor  # (B, 2K)

    def attention_for(self, rows: Tensor) -> Tensor | None:
        """Attention history (N, t+1, S) of the given source rows, this step appended."""
        if self.step_attention is None:
            return None
        now = self.step_attention[rows].unsqueeze(1)
        return now if self.attention is None else torch.cat([self.attention[rows], now], dim=1)


def _set_aside(
    finished: list[list[Hypothesis]],
    active: list[int],
    step: _Step,
    chosen: Tensor,
    options: SearchOptions,
) -> None:
    """Turn the chosen (B', 2K) candidates into finished hypotheses of their inputs
    (`active[b]` is the input behind row group b)."""
    for b, j in chosen.nonzero().tolist():
        row = int(step.rows[b, j])
        ids = [*step.history[row].tolist(), int(step.tokens[b, j])]
        lps = [*step.history_lps[row].tolist(), float(step.lps[b, j])]
        attention = step.attention_for(step.rows[b, j].view(1))
        finished[active[b]].append(
            _hypothesis(ids, lps, attention[0] if attention is not None else None, options)
        )


def _constrain(log_probs: Tensor, t: int, history: Tensor, options: SearchOptions) -> Tensor:
    """Forbid PAD and START always, END before `min_length`, `never_first` at the first step, and
    tokens that repeat an n-gram.

    Works in place on the step's fresh (N, V) output: writing a few columns instead of copying
    the whole vocabulary-sized tensor every step. PAD, START, END are ids 0, 1, 2
    (tests/test_search.py holds them there), so the columns are a slice, cheaper than a list index.
    """
    log_probs[:, : (END + 1 if t < options.min_length else START + 1)] = _NEG_INF
    if t == 0 and options.never_first:
        log_probs[:, list(options.never_first)] = _NEG_INF
    n = options.no_repeat_ngram_size
    if n > 0 and history.size(1) >= n - 1:
        log_probs = log_probs.masked_fill(
            _repeated_ngram_mask(history, n, log_probs.size(1)), _NEG_INF
        )
    return log_probs


def _repeated_ngram_mask(history: Tensor, n: int, vocab: int) -> Tensor:
    """(N, V) true for tokens that would complete an n-gram already in each row's history (N, T)."""
    banned = torch.zeros((history.size(0), vocab), dtype=torch.long, device=history.device)
    if n == 1:
        return banned.scatter_(1, history, 1).bool()
    if history.size(1) < n:
        return banned.bool()
    windows = history.unfold(1, n, 1)  # (N, W, n)
    suffix = history[:, history.size(1) - n + 1 :].unsqueeze(1)  # (N, 1, n-1)
    matches = (windows[:, :, :-1] == suffix).all(dim=-1).long()  # (N, W)
    return banned.scatter_add_(1, windows[:, :, -1], matches).bool()


def _row_seeds(options: SearchOptions, rows: int, device: torch.device) -> Tensor:
    """One seed per row; copies of an input (n_best samples) get consecutive seeds."""
    if options.seed is None:
        return torch.randint(0, 2**31 - 1, (rows,), device=device)
    copies = options.n_best
    return options.seed + torch.arange(rows, device=device) % copies  # (N,)


def _sample(log_probs: Tensor, seeds: Tensor, t: int, options: SearchOptions) -> Tensor:
    """Gumbel-max sampling with temperature and top-k: (N, V) -> (N,).

    The noise is a hash of (row seed, step, token id), so a row's sample depends only on its own
    seed and distribution, not on the other rows in the batch.
    """
    logits = log_probs / options.temperature
    if 0 < options.top_k < logits.size(1):
        kth = logits.topk(options.top_k, dim=-1).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, _NEG_INF)
    uniform = _hash_uniform(seeds, t, logits.size(1))  # (N, V) in (0, 1)
    return (logits - torch.log(-torch.log(uniform))).argmax(dim=-1)


def _hash_uniform(seeds: Tensor, t: int, vocab: int) -> Tensor:
    """Counter-based uniform noise in (0, 1): murmur3's 32-bit finaliser over (seed, t, token)."""
    mask = 0xFFFFFFFF
    token = torch.arange(vocab, device=seeds.device, dtype=torch.long)
    x = (seeds.long().unsqueeze(1) * 0x9E3779B1 + t * 0x85EBCA77 + token * 0xC2B2AE3D) & mask
    for shift, multiplier in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
        x = ((x ^ (x >> shift)) * multiplier) & mask
    x = x ^ (x >> 16)
    return (x.double() + 0.5) / 2**32
