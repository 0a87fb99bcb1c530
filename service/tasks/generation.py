"""Generating text with the character language model: the batch job, its run on the batch
worker, and /generate_stream's server-sent events as the characters are chosen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from models.decoders import DecoderState
from models.language_model import CharLanguageModel, generate_hypotheses
from models.search import Hypothesis, SearchOptions
from service.artifacts import ServedModel
from service.errors import RequestError
from service.responses import GenerateResponse
from service.runtime import BatchFamily, Runtime
from service.streaming import sse_event
from service.tasks.decoding import ms_since

# one event of /generate_stream, as the OpenAPI document states it (SSE events as objects)
STREAM_EVENT_SCHEMA = {
    "type": "object",
    "description": 'a server-sent event: `text` events ({"text": "..."}) as the characters '
    "are chosen, then `done` (what /generate answers) or `error` (the error body)",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["text", "done", "error"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"type": "object"},
        },
    },
}


@dataclass(frozen=True)
class GenerateJob:
    seed_text: str
    options: SearchOptions
    # told each character id as the search chooses it (greedy and sampling; from the batch
    # worker's thread), for /generate_stream
    on_token: Callable[[int], None] | None = None
    rows: ClassVar[int] = 1


def generation_options(
    decoding: str, length: int, temperature: float, top_k: int, seed: int | None, beam_size: int
) -> SearchOptions:
    """/generate's fields -> SearchOptions; fields the method does not use keep their defaults."""
    if decoding == "sample":
        return SearchOptions(
            "sample", max_length=length, temperature=temperature, top_k=top_k, seed=seed
        )
    if decoding == "beam":
        return SearchOptions("beam", beam_size=beam_size, max_length=length)
    return SearchOptions("greedy", max_length=length)


def generate_batch(served: ServedModel, jobs: Sequence[GenerateJob]) -> list[Any]:
    return [
        generate_hypotheses(
            _Reporting(served.model, job.on_token) if job.on_token else served.model,
            served.target,
            job.seed_text,
            job.options,
        )
        for job in jobs
    ]


class _Reporting:
    """The language model as `generate_hypotheses` uses it, telling `on_token` every character
    the search chooses: greedy and sampled search feed each choice back as the next step's
    input (the first step's input is the seed's last character, already known)."""

    def __init__(self, model: CharLanguageModel, on_token: Callable[[int], None]) -> None:
        self._model, self._on_token, self._stepped = model, on_token, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def step(self, prev_tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        if self._stepped:
            self._on_token(int(prev_tokens[0]))
        self._stepped = True
        return self._model.step(prev_tokens, state)


async def stream_events(
    runtime: Runtime, served: ServedModel, text: str, options: SearchOptions
) -> AsyncIterator[str]:
    """/generate's continuation of `text` as server-sent events: `text` events as the search
    chooses characters (greedy, sample; beam search knows its best text only at the end), then
    a `done` event holding what /generate answers. When the client goes away this generator is
    closed, which gives the job up: a queued job is dropped, a running search stops."""
    started = time.perf_counter()
    loop, arrived = asyncio.get_running_loop(), asyncio.Queue[int | None]()

    def on_token(token: int) -> None:  # on the batch worker's thread
        loop.call_soon_threadsafe(arrived.put_nowait, token)

    job = GenerateJob(text, options, on_token if options.method != "beam" else None)
    family = BatchFamily("generate", served.configured, 1, generate_batch)
    future = runtime.batcher.submit(family, job, request=object())
    future.add_done_callback(lambda _: loop.call_soon_threadsafe(arrived.put_nowait, None))
    deadline = time.monotonic() + runtime.settings.request_timeout_s
    sent = ""
    try:
        while (tokens := await _chosen(arrived, deadline, runtime)) is not None:
            sent += served.target.decode(tokens)
            yield sse_event("text", {"text": served.target.decode(tokens)})
        best = hypotheses_of(future)[0]
        whole = served.target.decode(best.tokens)
        if whole[len(sent) :]:  # the last character: no step ever fed it back
            yield sse_event("text", {"text": whole[len(sent) :]})
        done = GenerateResponse(
            seed_text=text,
            text=whole,
            log_prob=best.log_prob,
            model=served.tag,
            time_ms=ms_since(started),
        )
        yield sse_event("done", done.model_dump())
    finally:  # finished, failed, timed out, or closed because the client went away
        runtime.batcher.give_up([future])


async def _chosen(
    arrived: asyncio.Queue[int | None], deadline: float, runtime: Runtime
) -> list[int] | None:
    """The characters chosen since the last call (at least one), or None once the search has
    ended; 504 past the deadline."""
    try:
        first = await asyncio.wait_for(arrived.get(), max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        raise runtime.timed_out() from None
    tokens = [first]
    while tokens[-1] is not None and not arrived.empty():
        tokens.append(arrived.get_nowait())
    if tokens[-1] is None:
        arrived.put_nowait(None)  # the end, seen by the next call after these characters
        tokens.pop()
    return [token for token in tokens if token is not None] or None


def hypotheses_of(future: Future) -> list[Hypothesis]:
    """A finished generation job's hypotheses; a bound the model refuses (ValueError) is 400."""
    try:
        return future.result(timeout=0)
    except ValueError as error:
        raise RequestError(str(error)) from None
