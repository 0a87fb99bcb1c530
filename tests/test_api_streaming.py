"""POST /generate_stream over real HTTP: server-sent events that add up to what /generate answers,
refusals in the one JSON error shape, and a client that goes away stops the search."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def events(body: str) -> list[tuple[str, dict]]:
    """An SSE body -> (event name, JSON data) pairs."""
    found = []
    for block in body.split("\n\n"):
        if block.strip():
            fields = dict(line.split(": ", 1) for line in block.split("\n"))
            found.append((fields["event"], json.loads(fields["data"])))
    return found


@pytest.mark.parametrize(
    "body",
    [
        {"text": "The cat", "length": 60},
        {"text": "", "length": 40, "decoding": "sample", "seed": 3, "temperature": 1.5},
        {"text": "A dog", "length": 30, "decoding": "beam", "beam_size": 3},
    ],
)
def test_the_events_add_up_to_what_generate_answers(client, body: dict) -> None:
    whole = client.post("/generate", json=body).json()
    response = client.post("/generate_stream", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    found = events(response.text)
    names = [name for name, _ in found]
    assert names[-1] == "done" and set(names[:-1]) == {"text"}
    streamed = "".join(data["text"] for name, data in found if name == "text")
    done = found[-1][1]
    assert streamed == done["text"] == whole["text"]
    assert done["log_prob"] == pytest.approx(whole["log_prob"])
    assert (done["seed_text"], done["model"]) == (whole["seed_text"], whole["model"])
    if body.get("decoding") != "beam":  # beam search knows its best text only at the end
        assert len(names) > 2


def test_characters_arrive_before_the_generation_ends(client) -> None:
    body = {"text": "The", "length": 2000}
    with client.stream("POST", "/generate_stream", json=body) as response:
        chunks = response.iter_text()
        first = next(chunks)
        started = time.perf_counter()
        rest = "".join(chunks)
    assert first.startswith("event: text\n") and time.perf_counter() - started > 0.01
    assert events(first + rest)[-1][0] == "done"


@pytest.mark.parametrize(
    ("body", "field"),
    [({"length": 0}, "length"), ({"text": "a", "temperature": 0}, "temperature"), ({"x": 1}, "x")],
)
def test_a_refusal_before_the_first_event_is_a_json_error(client, body: dict, field: str) -> None:
    response = client.post("/generate_stream", json=body)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["field"] == field


def test_a_client_that_goes_away_stops_the_search(client, server) -> None:
    since = server.log_size()
    body = {"text": "The", "length": 2000}  # greedy: characters from the start, 0.6 s in all
    with httpx.stream("POST", f"{server.url}/generate_stream", json=body, timeout=60) as response:
        assert response.status_code == 200
        next(response.iter_text())  # the search runs; now go away
    started = time.perf_counter()
    server.wait_for_log("stopped a batch of 1 generate requests", since, timeout=30)
    answered = client.post("/generate", json={"text": "a", "length": 5})
    assert answered.status_code == 200 and time.perf_counter() - started < 30


def test_the_bentoml_client_iterates_the_stream(server) -> None:
    import bentoml

    with bentoml.SyncHTTPClient(server.url) as typed:
        chunks = list(typed.generate_stream(text="The", length=20))
    found = events("".join(c.decode() if isinstance(c, bytes) else c for c in chunks))
    assert found[-1][0] == "done" and len(found[-1][1]["text"]) == 20
