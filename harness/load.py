"""One load client (aiohttp): closed-loop clients or an open-loop arrival rate, every answer kept."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

# Below the server's keep-alive timeout (uvicorn: 5 s): a connection the server may be closing
# is never reused, so a POST cannot race the close (that race once gave a transport error).
KEEPALIVE_S = 2.0
BOUNDARY = "harnessboundary7d93"


@dataclass(frozen=True)
class Request:
    """One pre-encoded call (a POST unless `method` says otherwise), so that the client does
    little work per call."""

    path: str
    body: bytes
    content_type: str
    method: str = "POST"


def json_request(path: str, payload: Any) -> Request:
    return Request(path, json.dumps(payload).encode(), "application/json")


def translate_request(sentences: list[str], options: dict | None = None) -> Request:
    """POST /translate of `sentences` (the service's defaults without `options`)."""
    payload: dict[str, Any] = {"sentences": sentences}
    if options is not None:
        payload["options"] = options
    return json_request("/translate", payload)


def caption_request(
    image: bytes,
    options: dict | None = None,
    filename: str = "image.jpg",
    content_type: str = "image/jpeg",
) -> Request:
    """POST /caption: a multipart form with the image and, if given, the options field."""
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n".encode()
        + image
        + b"\r\n"
    ]
    if options is not None:
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="options"\r\n\r\n'
            f"{json.dumps(options)}\r\n".encode()
        )
    body = b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()
    return Request("/caption", body, f"multipart/form-data; boundary={BOUNDARY}")


def has_error_shape(body: bytes) -> bool:
    """The service's one error body: {"error": {"code": str, "message": str, ...}}."""
    try:
        error = json.loads(body)["error"]
        return isinstance(error["code"], str) and isinstance(error["message"], str)
    except (ValueError, TypeError, KeyError):
        return False


@dataclass(frozen=True)
class Answer:
    """One request: when it was sent and answered (time.perf_counter), and how."""

    sent: float
    answered: float
    status: int | str  # the HTTP status, or the transport error ("TypeName: message")
    body_ok: bool  # 200, or an error answer in the JSON error shape

    @property
    def latency_ms(self) -> float:
        return (self.answered - self.sent) * 1000


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p95, p99 (nearest rank) and the count."""
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"p50": at(0.5), "p95": at(0.95), "p99": at(0.99), "n": len(ordered)}


@dataclass
class Tally:
    """The answers of one run, and when it started (time.perf_counter)."""

    started: float = field(default_factory=time.perf_counter)
    answers: list[Answer] = field(default_factory=list)

    def between(self, start: float = -math.inf, end: float = math.inf) -> Tally:
        """The answers that arrived in [start, end)."""
        return Tally(start, [a for a in self.answers if start <= a.answered < end])

    def statuses(self) -> Counter:
        return Counter(a.status for a in self.answers)

    def ok(self) -> list[Answer]:
        return [a for a in self.answers if a.status == 200]

    def errors_without_shape(self) -> int:
        """HTTP error answers whose body is not the JSON error shape."""
        return sum(isinstance(a.status, int) and not a.body_ok for a in self.answers)

    def summary(self, seconds: float) -> dict[str, Any]:
        """Answers of 200 per second over `seconds`, their latency percentiles, other statuses."""
        latencies = [a.latency_ms for a in self.ok()]
        errors = Counter(str(a.status) for a in self.answers if a.status != 200)
        return {
            "throughput": len(latencies) / seconds,
            "latency_ms": percentiles(latencies) if latencies else {},
            "errors": dict(errors),
        }


async def send(session: aiohttp.ClientSession, url: str, request: Request) -> Answer:
    """Send one request; a transport error is an answer too."""
    sent = time.perf_counter()
    headers = {"Content-Type": request.content_type}
    try:
        async with session.request(
            request.method, url + request.path, data=request.body, headers=headers
        ) as reply:
            body = await reply.read()
    except (aiohttp.ClientError, TimeoutError) as error:
        return Answer(sent, time.perf_counter(), f"{type(error).__name__}: {error}"[:120], False)
    ok = reply.status == 200 or has_error_shape(body)
    return Answer(sent, time.perf_counter(), reply.status, ok)


def session(connections: int, timeout_s: float) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, keepalive_timeout=KEEPALIVE_S)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


async def closed_loop(
    url: str,
    requests: Sequence[Request],
    clients: int,
    seconds: float = math.inf,
    count: int | None = None,
    timeout_s: float = 120.0,
) -> Tally:
    """`clients` clients, each sending its next request when its last one answered, until
    `seconds` have passed or `count` requests were sent; the k-th request sent is
    requests[k % len(requests)]."""
    if count is None and math.isinf(seconds):
        raise ValueError("closed_loop needs `seconds` or `count`")
    tally, sent = Tally(), 0
    deadline = tally.started + seconds
    async with session(clients, timeout_s) as client:

        async def user() -> None:
            nonlocal sent
            while time.perf_counter() < deadline and (count is None or sent < count):
                request = requests[sent % len(requests)]
                sent += 1
                tally.answers.append(await send(client, url, request))

        await asyncio.gather(*(user() for _ in range(clients)))
    return tally


async def open_loop(
    url: str,
    requests: Sequence[Request],
    rate: float,
    seconds: float,
    connections: int = 256,
    timeout_s: float = 120.0,
) -> Tally:
    """Requests started at `rate` per second for `seconds` whatever the answers (an arrival
    process), over at most `connections` connections; waits for the last answers."""
    tally, pending, sent = Tally(), set(), 0
    async with session(connections, timeout_s) as client:
        while (now := time.perf_counter()) - tally.started < seconds:
            while sent < (now - tally.started) * rate:
                task = asyncio.create_task(send(client, url, requests[sent % len(requests)]))
                task.add_done_callback(lambda done: tally.answers.append(done.result()))
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += 1
            await asyncio.sleep(0.005)
        if pending:
            await asyncio.wait(pending)
    return tally
