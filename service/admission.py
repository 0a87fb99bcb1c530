"""The door: at most `limit` API calls in flight per worker; the next one is refused at once, with
429 and Retry-After, before any of its body is read and before BentoML's own middleware runs.

Why in front of BentoML's middleware: `add_asgi_middleware` places ours inside BentoML's request
metrics, OpenTelemetry spans, access log and timeout, which cost about 0.6 ms of the worker's GIL
per request, refused or not (the guard answered alone in about 0.03 ms). At twice the capacity,
half the requests are refused, so refusals at that price took the time the served requests
needed (docs/service.md, Overload). BentoML has no hook for a middleware outside its own, so
`Admission` is registered like the others and, when the app starts (the ASGI lifespan, which
passes through every middleware with the Starlette app in its scope), puts itself in front of
that app's whole middleware stack. Without a lifespan (an app called without starting it) it
counts and refuses where it was registered, which works the same, at the higher price.

With `ages`, the door also closes admitted calls' connections that outlived their maximum age
(service/connections.py), so that keep-alive clients spread over the workers again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from service.connections import ConnectionAges, closing_connection
from service.errors import RequestError
from service.guard import ASGIApp, Receive, Scope, Send
from service.metrics import metrics

RETRY_AFTER_S = 1
SLOT = "seqserve.admission"  # scope key, set at the door: the slot's release, or None (uncounted)
Release = Callable[[], None]


class Admission:
    """Counts POST requests to `routes` while they are read, queued, computed and answered, and
    refuses one that would make `limit + 1` with `refusal` (an ASGI app) without reading it.
    With `ages`, an admitted call on a connection past its age closes it with the answer."""

    def __init__(
        self,
        app: ASGIApp,
        routes: Sequence[str],
        limit: int,
        refusal: ASGIApp,
        ages: ConnectionAges | None = None,
    ) -> None:
        self.app, self.routes, self.limit, self.refusal = app, frozenset(routes), limit, refusal
        self.ages = ages
        self.in_flight = 0
        self.in_front = False  # standing in front of the whole middleware stack

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and not self.in_front:
            self._stand_in_front(scope.get("app"))
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif SLOT not in scope:  # started without a lifespan: the door is here
            await self.admit(self.app, scope, receive, send)
        else:  # admitted in front; the slot is free as soon as the app behind is done, because
            # BentoML's timeout middleware, in between, holds a request that its client left
            # without an answer until the timeout (65 s)
            release = scope[SLOT]
            try:
                await self.app(scope, receive, send)
            finally:
                if release is not None:
                    release()

    async def admit(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """Run `app` on the request, counted, or answer `refusal` when `limit` are in flight."""
        if scope.get("method") != "POST" or scope.get("path") not in self.routes:
            scope[SLOT] = None
            await app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            scope[SLOT] = None
            await self.refusal(scope, receive, send)
            return
        scope[SLOT] = release = self._take_slot(scope["path"])
        if self.ages is not None and self.ages.due(scope):
            send = closing_connection(send)
        try:
            await app(scope, receive, send)
        finally:
            release()

    def _take_slot(self, route: str) -> Release:
        """Count one request in; the returned function counts it out, once."""
        self.in_flight += 1
        gauge = metrics().in_flight.labels(route)
        gauge.inc()
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self.in_flight -= 1
                gauge.dec()

        return release

    def _stand_in_front(self, app: object) -> None:
        """Wrap the middleware stack of `app` (the Starlette app BentoML built, which has built
        its stack before the lifespan reaches us) in this door."""
        stack = getattr(app, "middleware_stack", None)
        if stack is None:
            return

        async def door(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await stack(scope, receive, send)
                return
            await self.admit(stack, scope, receive, send)

        app.middleware_stack = door  # type: ignore[attr-defined]
        self.in_front = True


def too_many_requests(limit: int) -> RequestError:
    """The refusal at the door, in the one error shape."""
    return RequestError(
        f"{limit} requests are in flight on this worker, its limit; retry in {RETRY_AFTER_S} s",
        code="too_many_requests",
        status=429,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def refusal_app(limit: int) -> ASGIApp:
    """An ASGI app answering `too_many_requests(limit)` without reading the request."""

    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        await too_many_requests(limit).response()(scope, receive, send)

    return refuse
