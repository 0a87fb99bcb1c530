"""The service's own metrics on /metrics, scraped from the real server during and after traffic:
queue depth and in-flight requests while a long generation holds the batch worker, batch sizes and
times afterwards, error answers by status and code, and every model's golden check."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.service
# holds the single batch worker for about a second with the tiny char LM
LONG = {"text": "The", "length": 2000, "decoding": "beam", "beam_size": 8}


@pytest.fixture(scope="module")
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def scrape(client: httpx.Client) -> dict[tuple[str, frozenset], float]:
    """Every seqserve_* sample: (name, labels) -> value."""
    samples = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name.startswith("seqserve_"):
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(check: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return False


def hold_the_worker_while_translations_queue(
    client: httpx.Client, senders: list[httpx.Client], queued: Callable[[], bool]
) -> None:
    """Start a long generation, then 1, 2 and 3 translations from `senders`; return when `queued`
    said yes or every request was answered."""
    holder = threading.Thread(target=lambda: client.post("/generate", json=LONG))
    holder.start()
    in_flight = {"route": "/generate"}
    assert wait_for(lambda: value(scrape(client), "seqserve_requests_in_flight", **in_flight))
    threads = [holder] + [
        threading.Thread(
            target=sender.post,
            args=("/translate",),
            kwargs={"json": {"sentences": ["the cat sits ."] * n}},
        )
        for sender, n in zip(senders, (1, 2, 3), strict=True)
    ]
    for thread in threads[1:]:
        thread.start()
    wait_for(lambda: queued() or not any(thread.is_alive() for thread in threads), 60)
    for thread in threads:
        thread.join(60)


def test_queue_and_in_flight_gauges_move_while_the_batch_worker_is_busy(client, server) -> None:
    translate = {"task": "translate", "model": "translator"}
    before = scrape(client)
    # The holder keeps the one batch worker busy for about a second; on a loaded host the three
    # translations can miss that window, so the scene is replayed (at most three times) until the
    # gauges are seen with all of them queued. Each sender's connection is opened beforehand.
    seen: dict[str, float] = {}

    def queued() -> bool:
        now = scrape(client)
        seen["rows"] = max(seen.get("rows", 0), value(now, "seqserve_queue_rows", **translate))
        seen["requests"] = max(
            seen.get("requests", 0), value(now, "seqserve_queue_requests", **translate)
        )
        return seen["rows"] >= 3 and seen["requests"] >= 2

    with contextlib.ExitStack() as stack:
        senders = [
            stack.enter_context(httpx.Client(base_url=server.url, timeout=60)) for _ in range(3)
        ]
        for sender in senders:
            sender.get("/healthz")
        sent = 0
        for _attempt in range(3):
            hold_the_worker_while_translations_queue(client, senders, queued)
            sent += 6
            if queued():
                break
    assert queued(), seen
    after = scrape(client)
    assert value(after, "seqserve_queue_rows", **translate) == 0
    assert value(after, "seqserve_requests_in_flight", route="/generate") == 0
    for name in ("seqserve_batch_rows_count", "seqserve_batch_duration_seconds_count"):
        assert value(after, name, **translate) > value(before, name, **translate)
    assert value(after, "seqserve_batch_rows_sum", **translate) >= (
        value(before, "seqserve_batch_rows_sum", **translate) + sent
    )
    generate = {"task": "generate", "model": "charlm"}
    assert value(after, "seqserve_batch_duration_seconds_sum", **generate) >= 0.1


def test_error_answers_are_counted_by_route_status_and_code(client) -> None:
    name = "seqserve_error_responses_total"
    refusals = [
        ({"route": "/translate", "status": "400", "code": "invalid_argument"}, {"json": {}}),
        (
            {"route": "/translate", "status": "415", "code": "unsupported_media_type"},
            {"content": b"x", "headers": {"content-type": "text/plain"}},
        ),
        (
            {"route": "/translate", "status": "413", "code": "payload_too_large"},
            {"content": b" " * 300_000, "headers": {"content-type": "application/json"}},
        ),
    ]
    before = scrape(client)
    for labels, request in refusals:
        assert client.post("/translate", **request).status_code == int(labels["status"])
    after = scrape(client)
    for labels, _ in refusals:
        assert value(after, name, **labels) == value(before, name, **labels) + 1, labels


def test_every_model_passed_its_golden_check(client) -> None:
    samples = scrape(client)
    for model in ("captioner", "captioner_de", "translator", "charlm"):
        assert value(samples, "seqserve_golden_check_passed", model=model) == 1.0
