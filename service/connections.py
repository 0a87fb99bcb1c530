"""A maximum connection age, so that keep-alive connections spread over the workers again.

BentoML's workers share one listening socket (BentoML issue #5426), and a keep-alive connection
stays with the worker that accepted it: in 4 runs of 32 clients against a freshly started service
the two workers held 1/31, 6/26, 10/22 and 1/31 of the connections to the end, and one worker
answers about half of what two do (bench/README.md, "Connections on one worker"). Like gRPC's
MAX_CONNECTION_AGE, a connection older than the age (with jitter, so that connections opened
together do not all close together) gets its next answer with `Connection: close`; the client's
next connection goes to whichever worker accepts it first, the less busy one. The door (service/admission.py) applies it to the API calls it admits.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from service.guard import Message, Scope, Send

JITTER = 0.2  # each connection's age is drawn from [1 - JITTER, 1 + JITTER] x the setting
FORGET_AFTER = 4  # x the age: a connection not seen for that long is taken as closed


class ConnectionAges:
    """When each live connection (client address and port) was first seen on this worker."""

    def __init__(self, max_age_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s, self.clock = max_age_s, clock
        self.closes_at: dict[tuple[str, int], tuple[float, float]] = {}  # -> (close at, last seen)

    def due(self, scope: Scope) -> bool:
        """Whether the answer to this call should close its connection (which is then
        forgotten: a later connection from the same port starts a new age)."""
        client = scope.get("client")
        if not client:
            return False
        now = self.clock()
        key = (client[0], client[1])
        found = self.closes_at.get(key)
        if found is None:
            if len(self.closes_at) >= 1024:
                self._forget_idle(now)
            age = self.max_age_s * random.uniform(1 - JITTER, 1 + JITTER)
            self.closes_at[key] = (now + age, now)
            return False
        if now >= found[0]:
            del self.closes_at[key]
            return True
        self.closes_at[key] = (found[0], now)
        return False

    def _forget_idle(self, now: float) -> None:
        """Drop connections not seen for FORGET_AFTER ages (their clients closed them)."""
        horizon = now - FORGET_AFTER * self.max_age_s
        self.closes_at = {k: v for k, v in self.closes_at.items() if v[1] >= horizon}


def closing_connection(send: Send) -> Send:
    """`send`, with `Connection: close` added to the answer (uvicorn then closes the connection
    once the answer is out)."""

    async def closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [*message.get("headers", ()), (b"connection", b"close")]
            message = {**message, "headers": headers}
        await send(message)

    return closing
