"""Server-sent events: how a streaming API frames its events, and answers its errors.

A streaming API method is an async generator of SSE events (BentoML then answers
`text/event-stream` and its client iterates). A refusal before the first event is answered like
any other: its status, headers and the one JSON error shape. After the first event the status
is sent, so a failure ends the stream with an `error` event carrying the same JSON.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from service.errors import RequestError, error_body, internal_error

logger = logging.getLogger("bentoml.seqserve")
StreamingApi = Callable[..., AsyncIterator[str]]


def sse_event(event: str, data: dict[str, Any]) -> str:
    """One server-sent event: `event: <name>`, one `data:` line of JSON, a blank line."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def streams_errors(api: StreamingApi) -> StreamingApi:
    """Wrap a streaming API method (an async generator taking `ctx: bentoml.Context` first):
    a RequestError before the first event becomes the request's status and JSON error body
    (the guard then answers it as application/json); later ones, and bugs, an `error` event."""

    @functools.wraps(api)
    async def wrapper(self: Any, ctx: Any, *args: Any, **kwargs: Any) -> AsyncIterator[str]:
        started = False
        try:
            async for event in api(self, ctx, *args, **kwargs):
                started = True
                yield event
        except RequestError as error:
            if started:
                yield sse_event("error", error_body(error))
                return
            ctx.response.status_code = error.status
            for name, value in error.headers.items():
                ctx.response.headers[name] = value
            yield json.dumps(error_body(error))
        except Exception:
            logger.exception("unexpected error while streaming %s", api.__name__)
            failure = internal_error()
            if not started:
                ctx.response.status_code = failure.status
                yield json.dumps(error_body(failure))
                return
            yield sse_event("error", error_body(failure))

    return wrapper
