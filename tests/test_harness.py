"""The shared harness: the load client against a local aiohttp app, the server wrapper on a toy server."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from harness.load import (
    Tally,
    caption_request,
    closed_loop,
    json_request,
    open_loop,
    translate_request,
)
from harness.server import Server, free_port

ERROR = {"error": {"code": "overloaded", "message": "try again", "field": None}}


async def _caption(request: web.Request) -> web.Response:
    form = await request.post()
    image = form["image"]
    return web.json_response(
        {
            "bytes": len(image.file.read()),
            "filename": image.filename,
            "type": image.content_type,
            "options": json.loads(form["options"]) if "options" in form else None,
        }
    )


async def _translate(request: web.Request) -> web.Response:
    return web.json_response(await request.json())


async def _busy(request: web.Request) -> web.Response:
    return web.json_response(ERROR, status=429)


async def _broken(request: web.Request) -> web.Response:
    return web.Response(status=500, text="Internal Server Error")


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(0.05)
    return web.json_response({})


def serve_app(test: Callable[[str], Awaitable[None]]) -> None:
    """Run `test(url)` with a local app answering /caption, /translate, /busy, /broken, /slow."""

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/caption", _caption)
        app.router.add_post("/translate", _translate)
        app.router.add_post("/busy", _busy)
        app.router.add_post("/broken", _broken)
        app.router.add_post("/slow", _slow)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            await test(f"http://127.0.0.1:{port}")
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_requests_arrive_as_a_server_parses_them() -> None:
    seen: list[dict] = []

    async def test(url: str) -> None:
        import aiohttp

        image = bytes(range(256)) * 3 + b"\r\n--"  # CR, LF and dashes inside the part
        requests = [
            caption_request(image, {"decoding": "beam"}, "a.png", "image/png"),
            caption_request(image),
            translate_request(["a b", "c"], {"max_length": 3}),
        ]
        async with aiohttp.ClientSession() as client:
            for request in requests:
                headers = {"Content-Type": request.content_type}
                async with client.post(url + request.path, data=request.body, headers=headers) as r:
                    seen.append(await r.json())

    serve_app(test)
    image = {"bytes": 256 * 3 + 4, "filename": "a.png", "type": "image/png"}
    assert seen == [
        {**image, "options": {"decoding": "beam"}},
        {**image, "filename": "image.jpg", "type": "image/jpeg", "options": None},
        {"sentences": ["a b", "c"], "options": {"max_length": 3}},
    ]


def test_closed_loop_counts_statuses_bodies_and_requests() -> None:
    async def test(url: str) -> None:
        requests = [
            json_request("/busy", {}),
            json_request("/broken", {}),
            json_request("/slow", {}),
        ]
        tally = await closed_loop(url, requests, clients=3, count=30)
        assert len(tally.answers) == 30
        assert tally.statuses() == {429: 10, 500: 10, 200: 10}
        assert tally.errors_without_shape() == 10  # the 500s' plain-text bodies
        summary = tally.summary(seconds=2.0)
        assert summary["errors"] == {"429": 10, "500": 10}
        assert summary["throughput"] == 5.0 and summary["latency_ms"]["n"] == 10
        assert summary["latency_ms"]["p50"] >= 50  # the slow route sleeps 50 ms

    serve_app(test)


def test_closed_loop_runs_for_its_duration_with_n_clients_in_flight() -> None:
    async def test(url: str) -> None:
        tally = await closed_loop(url, [json_request("/slow", {})], clients=4, seconds=0.6)
        elapsed = max(a.answered for a in tally.answers) - tally.started
        assert 0.6 <= elapsed < 1.5
        # 4 clients, 50 ms a request: at most 4 at once, so at most about 4 / 0.05 s
        assert 4 <= len(tally.answers) <= 4 * (0.6 / 0.05 + 1)
        first = tally.between(tally.started, tally.started + 0.3)
        assert 0 < len(first.answers) < len(tally.answers)

    serve_app(test)


def test_open_loop_offers_its_rate_whatever_the_answers() -> None:
    async def test(url: str) -> None:
        tally = await open_loop(url, [json_request("/slow", {})], rate=100, seconds=1.0)
        # 100/s for 1 s with 50 ms answers: about 100 requests, several in flight at once
        assert 90 <= len(tally.answers) <= 102
        in_flight = max(
            sum(b.sent <= a.sent < b.answered for b in tally.answers) for a in tally.answers
        )
        assert in_flight >= 3

    serve_app(test)


def test_a_refused_connection_is_an_answer_not_an_exception() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    tally = asyncio.run(closed_loop(url, [json_request("/x", {})], clients=1, count=2))
    assert len(tally.answers) == 2 and all(isinstance(a.status, str) for a in tally.answers)
    assert tally.errors_without_shape() == 0 and tally.ok() == []
    assert Tally().summary(1.0) == {"throughput": 0.0, "latency_ms": {}, "errors": {}}


TOY_SERVER = """
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
print("ready line", flush=True)
print("ready line", flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def _toy(tmp_path: Path, workers: int) -> Server:
    port = free_port()
    command = [sys.executable, "-c", TOY_SERVER, str(port)]
    return Server.start(
        "toy", command, port, tmp_path / "toy.log", ready_path="/", ready_line="ready line",
        workers=workers,
    )  # fmt: skip


def test_server_waits_for_every_worker_then_stops(tmp_path: Path) -> None:
    with _toy(tmp_path, workers=2) as server:
        assert server.wait_ready(timeout=30) < 30
        assert server.start_s is not None and server.status("/") == 200
        assert server.log_text().count("ready line") == 2
        assert server.memory()["processes"] >= 1
    assert server.process.poll() is not None and server.status("/", timeout=0.5) is None


def test_server_not_ready_raises_with_the_log(tmp_path: Path) -> None:
    with _toy(tmp_path, workers=3) as server, pytest.raises(RuntimeError, match="ready line"):
        server.wait_ready(timeout=2)  # only two of three workers ever log the line


def test_server_that_exits_raises_at_once(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-c", "print('no luck'); raise SystemExit(3)"]
    server = Server.start("gone", command, port, tmp_path / "gone.log")
    with server, pytest.raises(RuntimeError, match="exited with code 3"):
        server.wait_ready(timeout=30)
