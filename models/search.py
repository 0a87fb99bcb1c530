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
    """Greedy or sampled decoding of N rows at once: one forward per step for the rows still
    decoding. A row that produces END or reaches its limit leaves the batch (its state rows are
    dropped), so a batch costs about the sum of its rows' lengths, not N times the longest."""
    rows, device = limits.size(0), limits.device
    steps = int(limits.max())
    prev = torch.full((rows,), START, dtype=torch.long, device=device)
    seeds = _row_seeds(options, rows, device) if options.method == "sample" else None
    live = torch.arange(rows, device=device)  # (A,) the original row of each row still decoding
    tokens = torch.full((steps, rows), PAD, dtype=torch.long, device=device)  # PAD after the end
    token_lps = torch.zeros((steps, rows), device=device)
    attention: Tensor | None = None  # (T, N, S) once the stepper reports attention
    for t in range(steps):
        log_probs, state = stepper.step(prev, state)  # (A, V)
        history = _history(tokens[:t], live, options)
        log_probs = _constrain(log_probs, t, history, options)
        if seeds is None:
            choice = log_probs.argmax(dim=-1)  # (A,)
        else:
            choice = _sample(log_probs, seeds, t, options)
        tokens[t, live] = choice
        token_lps[t, live] = log_probs.gather(1, choice.unsqueeze(1)).squeeze(1)
        if state.attention is not None:
            if attention is None:
                attention = state.attention.new_zeros((steps, rows, state.attention.size(1)))
            attention[t, live] = state.attention
        going = (choice != END) & (t + 1 < limits)  # (A,)
        still = int(going.sum())
        if still == 0:
            steps = t + 1
            break
        if still < live.size(0):  # some rows are done: the others go on without them
            keep = going.nonzero().squeeze(1)
            live, limits, choice = live[keep], limits[keep], choice[keep]
            seeds = seeds[keep] if seeds is not None else None
            state = state.select(keep, include_static=True)
        prev = choice
    return _rows_to_hypotheses(
        tokens[:steps].T,
        token_lps[:steps].T,
        attention[:steps].transpose(0, 1) if attention is not None else None,
        options,
    )


def _history(tokens: Tensor, live: Tensor, options: SearchOptions) -> Tensor:
    """The live rows' tokens so far (A, t) from `tokens` (t, N), built only when the n-gram
    block needs them."""
    if tokens.size(0) and options.no_repeat_ngram_size > 0:
        return tokens[:, live].T
    return tokens.new_empty((live.size(0), 0))


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
    beams = _Beams(prev.new_empty((batch * k, 0)), scores.new_empty((batch * k, 0)), None)
    inputs = _Inputs.start(limits, k)
    offsets = torch.arange(batch, device=device).unsqueeze(1) * k  # (B, 1) first row per input
    may_end = torch.arange(2 * k, device=device) < k  # (2K,) an END past the K best is dropped
    for t in range(max(inputs.limits)):
        log_probs, state = stepper.step(prev, state)  # (B'*K, V)
        log_probs = _constrain(log_probs, t, beams.tokens, options)
        top = _Candidates.best(log_probs, scores, offsets, state.attention)
        is_end = (top.tokens == END) & torch.isfinite(top.scores)
        inputs.set_aside(beams, top, is_end & may_end, options)
        alive_scores, alive_pos = top.scores.masked_fill(is_end, _NEG_INF).topk(k, dim=1)  # (B', K)
        at_limit = inputs.at_limit(t)
        if at_limit is not None:  # the live beams of inputs at their limit end here, truncated
            cut = torch.zeros_like(is_end).scatter(1, alive_pos, True)
            chosen = cut & at_limit.unsqueeze(1) & torch.isfinite(top.scores)
            inputs.set_aside(beams, top, chosen, options)
        done = inputs.cannot_improve(alive_scores[:, 0], t + 2, options)
        done = done if at_limit is None else done | at_limit
        rows, prev, lps = (x.gather(1, alive_pos) for x in (top.rows, top.tokens, top.lps))
        scores = alive_scores
        if bool(done.any()):  # some inputs leave the batch
            keep = (~done).nonzero().squeeze(1)  # (B'',) inputs still searching
            if keep.numel() == 0:
                break
            rows, prev, lps, scores = rows[keep], prev[keep], lps[keep], scores[keep]
            kept = keep.tolist()
            inputs.keep(kept)
            state = _keep_inputs(state, kept, k)
        rows, prev = rows.view(-1), prev.view(-1)  # (B''*K,)
        beams = beams.extend(rows, prev, lps.view(-1), top.attention)
        state = state.select(rows)
    return [
        sorted(f, key=lambda h: h.score, reverse=True)[: options.n_best] for f in inputs.finished
    ]


def _keep_inputs(state: DecoderState, kept: list[int], k: int) -> DecoderState:
    """The static rows of row groups `kept` (ascending), K rows each, moved to the front of their
    own tensors: the expanded state's, which are the search's own copies.

    In place, because a fresh copy of the captioner's memory (80 MB at batch 64 x beam 5) is mostly
    page faults, about 50 ms, where moving the kept rows forward takes a few.
    """
    static: dict[str, Tensor] = {}
    for name, tensor in state.static.items():
        groups = tensor.view(-1, k, *tensor.shape[1:])  # (B', K, ...)
        for new, old in enumerate(kept):
            if new != old:  # old > new: the two groups do not overlap
                groups[new] = groups[old]
        static[name] = tensor[: len(kept) * k]
    return DecoderState(state.recurrent, static, state.attention)


@dataclass
class _Inputs:
    """The inputs still searching, one group of K rows each, and every input's finished ones."""

    finished: list[list[Hypothesis]]  # per input of the batch
    active: list[int]  # (B',) the input behind each row group
    limits: list[int]  # (B',) on the host too, so that a step that is no input's last needs no sync
    limit_rows: Tensor  # (B',)
    kth: Tensor  # (B',) score of the K-th best finished hypothesis; -inf until there are K
    beam_size: int

    @classmethod
    def start(cls, limits: Tensor, beam_size: int) -> _Inputs:
        batch = limits.size(0)
        return cls(
            [[] for _ in range(batch)],
            list(range(batch)),
            limits.tolist(),
            limits,
            torch.full((batch,), _NEG_INF, device=limits.device),
            beam_size,
        )

    def at_limit(self, t: int) -> Tensor | None:
        """(B',) true where step t is the input's last; None where it is no input's last."""
        return t + 1 >= self.limit_rows if t + 1 >= min(self.limits) else None

    def cannot_improve(self, best_alive: Tensor, length: int, options: SearchOptions) -> Tensor:
        """(B',) true where K hypotheses are finished and the best live beam (B',), ended at the
        shortest length it can still reach, would not beat the K-th of them (live scores only fall)."""
        return best_alive / (((5.0 + length) / 6.0) ** options.length_penalty) <= self.kth

    def set_aside(
        self, beams: _Beams, top: _Candidates, chosen: Tensor, options: SearchOptions
    ) -> None:
        """Turn the chosen (B', 2K) candidates into finished hypotheses of their inputs."""
        pairs = chosen.nonzero()  # (M, 2) row group, candidate
        if len(pairs) == 0:
            return
        group, j = pairs.unbind(1)
        paths = beams.extend(
            top.rows[group, j], top.tokens[group, j], top.lps[group, j], top.attention
        )
        groups = group.tolist()
        for i, (b, ids, lps) in enumerate(
            zip(groups, paths.tokens.tolist(), paths.lps.tolist(), strict=True)
        ):
            attention = paths.attention[i] if paths.attention is not None else None
            self.finished[self.active[b]].append(_hypothesis(ids, lps, attention, options))
        k = self.beam_size
        full = [b for b in sorted(set(groups)) if len(self.finished[self.active[b]]) >= k]
        if full:
            kth = [
                sorted((h.score for h in self.finished[self.active[b]]), reverse=True)[k - 1]
                for b in full
            ]
            self.kth[full] = torch.tensor(kth, device=self.kth.device)

    def keep(self, kept: list[int]) -> None:
        """Keep the row groups `kept` (ascending), the others' inputs being done."""
        self.active = [self.active[b] for b in kept]
        self.limits = [self.limits[b] for b in kept]
        self.limit_rows, self.kth = self.limit_rows[kept], self.kth[kept]


@dataclass(frozen=True)
class _Candidates:
    """The 2K best continuations of each input still searching, best first."""

    scores: Tensor  # (B', 2K)
    rows: Tensor  # (B', 2K) the row each extends
    tokens: Tensor  # (B', 2K)
    lps: Tensor  # (B', 2K) the token's own log-probability
    attention: Tensor | None  # (B'*K, S) every row's attention weights at this step

    @classmethod
    def best(
        cls, log_probs: Tensor, scores: Tensor, offsets: Tensor, attention: Tensor | None
    ) -> _Candidates:
        """The 2K best continuations of each input's K rows with `scores` (B', K), taken over
        all its K*V at once; `log_probs` (B'*K, V), `offsets` (B, 1) the first row b*K."""
        live, k = scores.shape
        vocab = log_probs.size(1)
        candidates = (scores.view(-1, 1) + log_probs).view(live, k * vocab)
        top_scores, top_index = candidates.topk(2 * k, dim=1)  # (B', 2K)
        rows = top_index // vocab + offsets[:live]
        lps = log_probs.view(live, k * vocab).gather(1, top_index)
        return cls(top_scores, rows, top_index % vocab, lps, attention)


@dataclass(frozen=True)
class _Beams:
    """What each live row has produced so far."""

    tokens: Tensor  # (N, t)
    lps: Tensor  # (N, t)
    attention: Tensor | None  # (N, t, S)

    def extend(
        self, rows: Tensor, tokens: Tensor, lps: Tensor, step_attention: Tensor | None
    ) -> _Beams:
        """The paths of `rows` (N',) followed by `tokens` and `lps` (N',) and by those rows of
        this step's attention (N, S)."""
        attention = None
        if step_attention is not None:
            now = step_attention[rows].unsqueeze(1)  # (N', 1, S)
            attention = now if self.attention is None else torch.cat([self.attention[rows], now], 1)
        return _Beams(
            torch.cat([self.tokens[rows], tokens.unsqueeze(1)], dim=1),
            torch.cat([self.lps[rows], lps.unsqueeze(1)], dim=1),
            attention,
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
