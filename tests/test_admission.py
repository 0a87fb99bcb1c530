"""The door (service/admission.py): over the in-flight limit a call is refused with 429 and
Retry-After before any of its body is read, in front of every other middleware once the app has
started; the slot comes back however the admitted call ends. Mechanism only, no timings: the
goodput it buys under overload is measured by `make test-load`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from service.access import RequestIds
from service.admission import Admission, refusal_app
from service.connections import ConnectionAges, closing_connection
from service.settings import Settings
from tests.serving import Server, start_server

ROUTES = ["/translate"]
JSON = [(b"content-type", b"application/json")]


def http_scope(path: str = "/translate", method: str = "POST") -> dict:
    return {"type": "http", "method": method, "path": path, "headers": JSON}


def door(app, limit: int = 1) -> Admission:
    return Admission(app, ROUTES, limit, RequestIds(refusal_app(limit), ROUTES))


async def call(app, scope: dict, receive=None) -> tuple[list[dict], int]:
    """The messages `app` sends, and how many times it called receive."""
    sent, reads = [], 0

    async def counting_receive() -> dict:
        nonlocal reads
        reads += 1
        return await receive() if receive else {"type": "http.request", "body": b"{}"}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, counting_receive, send)
    return sent, reads


def test_over_the_limit_a_call_is_refused_without_reading_its_body() -> None:
    release = asyncio.Event()

    async def slow(scope, receive, send) -> None:
        await receive()
        await release.wait()
        await PlainTextResponse("done")(scope, receive, send)

    async def never_sent() -> dict:  # an upload whose body never arrives
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def scenario() -> tuple:
        gate = door(slow, limit=1)
        first = asyncio.create_task(call(gate, http_scope()))
        await asyncio.sleep(0.01)
        refused = await asyncio.wait_for(call(gate, http_scope(), never_sent), timeout=5)
        release.set()
        return refused, await first, gate.in_flight

    (sent, reads), (first_sent, _), left = asyncio.run(scenario())
    assert reads == 0  # refused before the body was asked for
    start, body = sent
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    error = json.loads(body["body"])["error"]
    assert start["status"] == 429 and headers["retry-after"] == "1"
    assert error["code"] == "too_many_requests" and error["request_id"] == headers["x-request-id"]
    assert first_sent[0]["status"] == 200 and left == 0


def test_the_slot_comes_back_when_the_call_fails() -> None:
    async def failing(scope, receive, send) -> None:
        raise RuntimeError("boom")

    gate = door(failing, limit=1)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            asyncio.run(call(gate, http_scope()))
    assert gate.in_flight == 0


@pytest.mark.parametrize(
    "scope", [http_scope("/livez", "GET"), http_scope("/translate", "OPTIONS"), {"type": "x"}]
)
def test_probes_preflights_and_other_scopes_pass_uncounted(scope: dict) -> None:
    async def ok(scope, receive, send) -> None:
        await PlainTextResponse("ok")(scope, receive, send)

    sent, _ = asyncio.run(call(door(ok, limit=0), scope))
    assert sent[0]["status"] == 200


class Before:
    """Stands for BentoML's metrics, tracing, access log and timeout, which come before our
    middleware: notes the calls that reach it and, like BentoML's timeout middleware with a
    call that sent no answer, can hold a call after the app behind it is done."""

    def __init__(self, app, seen: list[str], hold: asyncio.Event | None = None) -> None:
        self.app, self.seen, self.hold = app, seen, hold

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            self.seen.append(scope["path"])
        await self.app(scope, receive, send)
        if scope["type"] == "http" and self.hold is not None:
            await self.hold.wait()


@contextlib.asynccontextmanager
async def started(
    before: dict, release: asyncio.Event
) -> AsyncIterator[tuple[Starlette, Admission]]:
    """A Starlette app, started (its lifespan run): `Before` with `before`, then the door with
    a limit of 1, then POST /translate, which answers once `release` is set."""

    async def translate(request):
        await release.wait()
        return PlainTextResponse("done")

    gate: list[Admission] = []

    def admission(app, **options) -> Admission:
        gate.append(Admission(app, **options))
        return gate[0]

    options = {"routes": ROUTES, "limit": 1, "refusal": RequestIds(refusal_app(1), ROUTES)}
    app = Starlette(
        routes=[Route("/translate", translate, methods=["POST"])],
        middleware=[Middleware(Before, **before), Middleware(admission, **options)],
    )
    lifespan: asyncio.Queue = asyncio.Queue()
    up = asyncio.Event()

    async def lifespan_send(message: dict) -> None:
        if message["type"] == "lifespan.startup.complete":
            up.set()

    await lifespan.put({"type": "lifespan.startup"})
    running = asyncio.create_task(app({"type": "lifespan"}, lifespan.get, lifespan_send))
    await up.wait()
    yield app, gate[0]
    await lifespan.put({"type": "lifespan.shutdown"})
    await running


FULL_SCOPE = {**http_scope(), "query_string": b"", "root_path": ""}


def test_at_startup_the_door_moves_in_front_of_the_middleware_before_it() -> None:
    """A refused call never reaches `Before`; an admitted one passes it and is counted once
    (with a limit of 1, a second count would refuse it)."""
    seen: list[str] = []

    async def scenario() -> tuple:
        release = asyncio.Event()
        async with started({"seen": seen}, release) as (app, _):
            held = asyncio.create_task(call(app, dict(FULL_SCOPE)))
            await asyncio.sleep(0.01)
            refused, _ = await call(app, dict(FULL_SCOPE))
            passed = list(seen)
            release.set()
            admitted, _ = await held
        return refused, passed, admitted

    refused, passed, admitted = asyncio.run(scenario())
    assert refused[0]["status"] == 429 and passed == ["/translate"]  # the held call only
    assert admitted[0]["status"] == 200


def test_the_slot_is_free_once_the_app_behind_is_done_though_before_holds_it() -> None:
    async def scenario() -> tuple[int, int]:
        release, hold = asyncio.Event(), asyncio.Event()
        async with started({"seen": [], "hold": hold}, release) as (app, gate):
            release.set()
            held = asyncio.create_task(call(app, dict(FULL_SCOPE)))
            await asyncio.sleep(0.05)
            while_held = gate.in_flight
            hold.set()
            await held
        return while_held, gate.in_flight

    assert asyncio.run(scenario()) == (0, 0)


def test_the_default_limit_is_two_full_batches_within_the_api_threads() -> None:
    defaults = Settings()
    assert defaults.in_flight_limit() == min(defaults.api_threads, 2 * defaults.max_batch_sentences)
    assert Settings(api_threads=1000).in_flight_limit() == 2 * defaults.max_batch_sentences
    assert Settings(api_threads=1000, max_batch_images=100).in_flight_limit() == 200
    assert Settings(api_threads=8).in_flight_limit() == 8
    assert Settings(max_in_flight=7).in_flight_limit() == 7


# -- over real HTTP: `bentoml serve` with a limit of one call in flight ------------------------


@pytest.fixture(scope="module")
def one_slot_server(stored_models, tmp_path_factory) -> Iterator[Server]:
    home = Path(os.environ["BENTOML_HOME"])  # the session's store (tests/conftest.py)
    log = tmp_path_factory.mktemp("admission") / "serve.log"
    with start_server(home, log, {"SEQSERVE_MAX_IN_FLIGHT": "1"}) as server:
        server.wait_ready()
        yield server


def unfinished_upload(server: Server, request_id: str) -> socket.socket:
    """A POST /translate that announces 100,000 bytes and sends 10 of them."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(
        b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"X-Request-ID: {request_id}\r\nContent-Length: 100000\r\n\r\n".encode()
        + b'{"sentence'
    )
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one HTTP/1.1 answer."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536) or b""
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(status_line.split()[1]), headers, body


@pytest.mark.service
def test_an_upload_that_never_finishes_is_refused_at_once(one_slot_server: Server) -> None:
    server = one_slot_server
    since = server.log_size()
    held = unfinished_upload(server, "held-upload")  # admitted: the guard waits for its body
    with httpx.Client(base_url=server.url, timeout=10) as client:
        in_flight = 'seqserve_requests_in_flight{route="/translate"} 1.0'
        for _ in range(500):  # until the held upload is in flight
            if in_flight in client.get("/metrics").text:
                break
            time.sleep(0.01)
        refused = unfinished_upload(server, "refused-upload")
        status, headers, body = read_answer(refused)  # no more of its body sent: answered anyway
        error = json.loads(body)["error"]
        assert status == 429 and headers["retry-after"] == "1"
        assert error["code"] == "too_many_requests" and error["request_id"] == "refused-upload"
        assert headers["x-request-id"] == "refused-upload"
        refused.close()
        held.close()  # its slot comes back when its client goes away
        for _ in range(100):
            after = client.post(
                "/translate", json={"sentences": ["the cat"]}, headers={"X-Request-ID": "after"}
            )
            if after.status_code == 200:
                break
            time.sleep(0.05)
        assert after.status_code == 200
    # in front of BentoML's access log: the answer after it has its line, the refusal has none
    server.wait_for_log("request_id=after", since)
    assert "request_id=refused-upload" not in server.log_text()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def on(client: tuple[str, int]) -> dict:
    return {**http_scope(), "client": client}


def test_a_connection_past_its_age_is_closed_once_and_then_starts_again() -> None:
    clock = Clock()
    ages = ConnectionAges(5.0, clock)
    a, b = ("10.0.0.1", 40000), ("10.0.0.1", 40001)
    assert not ages.due(on(a))  # first seen: its age starts
    clock.now += 3.9  # under 5 s - 20% jitter
    assert not ages.due(on(a)) and not ages.due(on(b))
    clock.now += 2.2  # a: 6.1 s, past 5 s + 20%; b: 2.2 s
    assert ages.due(on(a)) and not ages.due(on(b))
    assert not ages.due(on(a))  # a new connection from the same port starts a new age
    assert not ages.due({**http_scope(), "client": None})  # no client address: left alone


def test_connections_not_seen_for_long_are_forgotten() -> None:
    clock = Clock()
    ages = ConnectionAges(1.0, clock)
    for port in range(1024):
        ages.due(on(("10.0.0.2", port)))
    clock.now += 10  # every one of them idle for 10 ages
    ages.due(on(("10.0.0.3", 1)))
    assert list(ages.closes_at) == [("10.0.0.3", 1)]


def test_an_admitted_call_past_its_age_answers_with_connection_close() -> None:
    async def answer(scope, receive, send) -> None:
        await PlainTextResponse("ok")(scope, receive, send)

    clock = Clock()
    gate = Admission(answer, ROUTES, 4, refusal_app(4), ages=ConnectionAges(1.0, clock))

    def headers(path: str = "/translate") -> dict[bytes, bytes]:
        sent, _ = asyncio.run(call(gate, {**on(("10.0.0.1", 5)), "path": path}))
        return dict(sent[0]["headers"])

    assert b"connection" not in headers()
    clock.now += 2
    assert b"connection" not in headers("/healthz")  # only the API calls the door counts
    assert headers()[b"connection"] == b"close"
    assert b"connection" not in headers()  # the next connection starts its age


def test_closing_connection_leaves_the_body_and_the_apps_message_alone() -> None:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    closing = closing_connection(send)
    start = {"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]}
    asyncio.run(closing(start))
    asyncio.run(closing({"type": "http.response.body", "body": b"ok"}))
    assert sent[0]["headers"] == [(b"x-a", b"1"), (b"connection", b"close")]
    assert start["headers"] == [(b"x-a", b"1")]
    assert sent[1] == {"type": "http.response.body", "body": b"ok"}


def test_connection_ages_apply_only_with_two_or_more_workers() -> None:
    assert Settings(workers=2).connection_age_s() == 5.0
    assert Settings(workers=1).connection_age_s() == 0.0
    assert Settings(workers=4, max_connection_age_s=0).connection_age_s() == 0.0
