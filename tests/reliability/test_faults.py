"""Faults on a server of its own: slow batches past the time limit, out of memory, a killed or
terminated worker, a tampered model file.

The server runs with SEQSERVE_REQUEST_TIMEOUT_S=2 and the test-only fault hook
tests/reliability/hooks/sitecustomize.py (a slow decoder step, a simulated CUDA OOM, a real CPU
allocation failure), switched on by files the tests create in RELIABILITY_FAULTS_DIR. The tests
run in file order: the last one shuts the server down.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.reliability.checks import assert_error
from tests.reliability.media import encoded, photo_like
from tests.serving import Server, copy_store, rss_mb, start_server

pytestmark = [pytest.mark.reliability, pytest.mark.service]
TIMEOUT_S = 2.0
SLOW_STEP_S = 0.05  # 200 steps: 10 s, five times the time limit
LONG_SENTENCE = " ".join(["the"] * 99)  # long enough for 200 output tokens
FOREVER = {"min_length": 200, "max_length": 200}  # the end token is forbidden: all 200 steps


HOOKS = Path(__file__).parent / "hooks"  # the test-only fault hook (sitecustomize.py)


class FaultServer(Server):
    """The server with its fault directory and its private BentoML home."""

    faults: Path
    home: Path

    def fault(self, name: str, content: str = "") -> Path:
        path = self.faults / name
        path.write_text(content)
        return path

    def clear_faults(self) -> None:
        for path in self.faults.iterdir():
            path.unlink()


@pytest.fixture(scope="module")
def fault_server(stored_models, tmp_path_factory) -> Iterator[FaultServer]:
    root = tmp_path_factory.mktemp("fault-server")
    home = copy_store(Path(os.environ["BENTOML_HOME"]), root / "home")
    faults = root / "faults"
    faults.mkdir()
    python_path = os.pathsep.join(filter(None, [str(HOOKS), os.environ.get("PYTHONPATH")]))
    env = {
        "SEQSERVE_REQUEST_TIMEOUT_S": str(TIMEOUT_S),
        "PYTHONPATH": python_path,
        "RELIABILITY_FAULTS_DIR": str(faults),
    }
    with start_server(home, root / "serve.log", env, FaultServer) as server:
        server.faults, server.home = faults, home
        server.wait_ready()
        yield server


@pytest.fixture
def client(fault_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fault_server.url, timeout=60) as client:
        yield client
    fault_server.clear_faults()


def translate(client: httpx.Client, sentences: list[str], **options: object) -> httpx.Response:
    return client.post("/translate", json={"sentences": sentences, "options": options})


def caption_batch(client: httpx.Client, count: int, **options: object) -> httpx.Response:
    files = [("images", (f"{i}.png", encoded(photo_like(seed=i)))) for i in range(count)]
    data = {"options": json.dumps(options)}
    return client.post("/caption_batch", files=files, data=data)


def timed(call, *args, **kwargs) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call(*args, **kwargs)
    return response, time.monotonic() - started


# -- time limit -------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["translate", "caption_batch"])
def test_a_request_past_the_time_limit_answers_504_and_frees_the_model(
    fault_server, client, endpoint: str
) -> None:
    fault_server.fault("slow_step_s", str(SLOW_STEP_S))
    since = fault_server.log_size()
    if endpoint == "translate":
        slow, elapsed = timed(translate, client, [LONG_SENTENCE], **FOREVER)
    else:
        slow, elapsed = timed(caption_batch, client, 4, **FOREVER)
    assert_error(slow, 504, "timeout")
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + 1.5, elapsed
    # the abandoned 10 s batch stops at its next step: short requests answer at once
    quick_calls = (
        lambda: translate(client, ["the cat"], max_length=3),
        lambda: caption_batch(client, 1, max_length=3),
    )
    for call in quick_calls:
        quick, elapsed = timed(call)
        assert quick.status_code == 200, quick.text
        assert elapsed < TIMEOUT_S, f"the next request waited {elapsed:.1f} s"
    fault_server.wait_for_log("all of them timed out", since=since, timeout=5)
    assert "never retrieved" not in fault_server.log_text()  # the abandoned batch's error
    print(f"FIGURE 504 after {TIMEOUT_S:g} s limit, next request {elapsed:.2f} s")


# -- out of memory -----------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["oom_cuda", "oom_cpu"])
def test_out_of_memory_answers_503_frees_memory_and_the_next_request_succeeds(
    fault_server, client, fault: str
) -> None:
    worker = fault_server.worker()
    assert translate(client, ["the cat"], max_length=3).status_code == 200
    before = rss_mb(worker)
    fault_server.fault(fault)
    error = assert_error(translate(client, ["the cat"], max_length=3), 503, "overloaded")
    assert "out of memory" in error["message"]
    assert not (fault_server.faults / fault).exists(), "the fault hook did not run"
    grown = rss_mb(worker) - before
    assert grown < 50, f"worker kept {grown:.0f} MB of the 256 MB the failed forward held"
    assert translate(client, ["the cat"], max_length=3).status_code == 200
    fault_server.fault(fault)
    response = client.post(
        "/caption", files={"image": ("a.png", encoded(photo_like()))}, data={"options": "{}"}
    )
    assert_error(response, 503, "overloaded")
    assert response.headers["retry-after"] == "1"
    assert "status=500" not in fault_server.log_text()


# -- a tampered model, a killed worker, SIGTERM ---------------------------------------------------


def _kill_worker(server: FaultServer) -> int:
    worker = server.worker()
    assert worker is not None
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    return worker.pid


def test_a_tampered_model_file_keeps_the_service_not_ready(fault_server, client) -> None:
    (weights,) = (fault_server.home / "models" / "translator").glob("*/model.safetensors")
    original = weights.read_bytes()
    backup = weights.with_suffix(".orig")
    shutil.copy2(weights, backup)
    try:
        tampered = bytearray(original)
        tampered[-1] ^= 0x01  # one bit of one weight: the model would still load and answer
        weights.write_bytes(bytes(tampered))
        since = fault_server.log_size()
        _kill_worker(fault_server)  # the replacement loads the tampered file
        killed = time.monotonic()
        line = fault_server.wait_for_log("failed to load", since=since)
        print(f"FIGURE tampered model refused {time.monotonic() - killed:.1f} s after the kill")
        assert "ChecksumError" in line and "NOT READY" in line and "model.safetensors" in line
        assert "sha256" in line
        assert fault_server.status("/readyz") == 503
        assert fault_server.status("/livez") == 200
        error = assert_error(translate(client, ["the cat"]), 503, "not_ready")
        assert "translator" in error["message"] and "ChecksumError" in error["message"]
    finally:
        shutil.move(backup, weights)


def test_a_killed_worker_is_replaced_and_answers_again(fault_server, client) -> None:
    killed = _kill_worker(fault_server)
    started = time.monotonic()
    ready = fault_server.wait_ready(timeout=90)
    with httpx.Client(base_url=fault_server.url, timeout=60) as fresh:
        assert translate(fresh, ["the cat"], max_length=3).status_code == 200
    answered = time.monotonic() - started
    replacement = fault_server.worker()
    assert replacement is not None and replacement.pid != killed
    print(
        f"FIGURE SIGKILL worker: ready again after {ready:.1f} s, answered after {answered:.1f} s"
    )


def test_sigterm_lets_the_request_in_progress_finish(fault_server) -> None:
    """Runs last: shuts the server down the way an orchestrator does."""
    fault_server.fault("slow_step_s", str(SLOW_STEP_S))
    worker = fault_server.worker()
    result: dict[str, object] = {}

    def long_request() -> None:
        with httpx.Client(base_url=fault_server.url, timeout=30) as client:
            started = time.monotonic()
            result["response"] = translate(client, [LONG_SENTENCE], min_length=25, max_length=25)
            result["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=long_request)
    thread.start()
    time.sleep(0.5)  # the 1.25 s request is in the model now
    signalled = time.monotonic()
    fault_server.process.send_signal(signal.SIGTERM)
    thread.join(30)
    response = result["response"]
    assert isinstance(response, httpx.Response) and response.status_code == 200, response
    assert response.json()["translations"][0]["alternatives"][0]["truncated"] is True
    fault_server.process.wait(30)
    stopped = time.monotonic() - signalled
    assert not psutil.pid_exists(worker.pid) or worker.status() == psutil.STATUS_ZOMBIE
    assert fault_server.status("/livez", timeout=1) is None  # nothing listens any more
    print(
        f"FIGURE SIGTERM: request finished in {result['elapsed']:.1f} s, exit after {stopped:.1f} s"
    )
