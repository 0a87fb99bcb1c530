"""Request IDs over real HTTP: the client's X-Request-ID (when valid) or a new one is echoed on
every answer, carried by every error body and written at the end of the access log line."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.service
IMAGE = (Path(__file__).parent / "fixtures" / "images" / "emoji_cat_face.png").read_bytes()


@pytest.fixture(scope="module")
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def test_a_valid_request_id_is_echoed_and_logged(client, server) -> None:
    request_id = f"client-{uuid.uuid4()}"
    since = server.log_size()
    response = client.post(
        "/translate", json={"sentences": ["hi"]}, headers={"X-Request-ID": request_id}
    )
    assert response.status_code == 200 and response.headers["x-request-id"] == request_id
    line = server.wait_for_log(f"request_id={request_id}", since)
    assert "path=/translate" in line and "status=200" in line


@pytest.mark.parametrize("given", [None, "", "has space", "x" * 129, "tab\there"])
def test_a_missing_or_invalid_request_id_is_replaced_by_a_new_one(client, given) -> None:
    headers = {} if given is None else {"X-Request-ID": given}
    first = client.get("/livez", headers=headers).headers["x-request-id"]
    second = client.get("/livez", headers=headers).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", first) and first != second and first != given


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("post", "/translate", {"json": {"sentences": []}}, 400),
        ("post", "/translate", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415),
        ("get", "/translate", {}, 405),
        ("post", "/caption", {"files": {"image": ("a.png", b"not an image")}}, 400),
        (
            "post",
            "/caption_overlay",
            {"files": {"image": ("a.png", IMAGE)}, "data": {"token": "99"}},
            400,
        ),
        ("post", "/generate_stream", {"json": {"length": 0}}, 400),
    ],
)
def test_every_error_body_carries_the_request_id(client, method, path, kwargs, status) -> None:
    request_id = uuid.uuid4().hex[:12]
    headers = {**kwargs.pop("headers", {}), "X-Request-ID": request_id}
    response = client.request(method.upper(), path, headers=headers, **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"]["request_id"] == request_id
    assert response.headers["x-request-id"] == request_id
