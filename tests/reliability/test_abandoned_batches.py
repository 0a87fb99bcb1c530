"""In-process: a running batch whose requests all gave up stops; one still awaited does not."""

from __future__ import annotations

import time

import pytest

from service.batching import BatchAbandoned, Batcher

pytestmark = pytest.mark.reliability


def stepping_batcher(steps: int, done: list[str]) -> Batcher:
    """A batcher whose runner takes `steps` steps of 10 ms, checking for abandonment at each."""

    def run(family, payloads):  # noqa: ANN001, ANN202 - the BatchRunner signature
        try:
            for _ in range(steps):
                batcher.raise_if_abandoned()
                time.sleep(0.01)
        except BatchAbandoned:
            done.append("stopped")
            raise
        done.append("finished")
        return payloads

    batcher = Batcher(run, lambda family: 8, 0.0, 100)
    batcher.start()
    return batcher


def test_a_batch_nobody_waits_for_stops_and_the_next_one_runs() -> None:
    done: list[str] = []
    batcher = stepping_batcher(500, done)  # 5 s
    try:
        first = [batcher.submit("a", i) for i in range(3)]
        time.sleep(0.05)  # running now
        batcher.give_up(first[:2])
        time.sleep(0.05)
        assert done == []  # one request still waits
        batcher.give_up(first[2:])
        started = time.monotonic()
        with pytest.raises(BatchAbandoned):
            first[0].result(5)
        assert time.monotonic() - started < 0.5 and done == ["stopped"]
        assert not batcher.abandoned  # the next batch starts clean
    finally:
        batcher.stop()


def test_giving_up_drops_queued_jobs_of_that_request_only() -> None:
    done: list[str] = []
    batcher = stepping_batcher(20, done)  # 0.2 s per batch
    try:
        running = batcher.submit("a", 0)
        time.sleep(0.05)
        queued = [batcher.submit("a", i) for i in (1, 2)]
        other = batcher.submit("a", 3)
        batcher.give_up(queued)
        assert all(future.cancelled() for future in queued)
        assert running.result(5) == 0 and other.result(5) == 3
        assert done == ["finished", "finished"]
    finally:
        batcher.stop()


def test_abandoned_is_false_while_idle() -> None:
    batcher = stepping_batcher(1, [])
    try:
        batcher.give_up([])
        assert not batcher.abandoned
        batcher.raise_if_abandoned()
    finally:
        batcher.stop()
