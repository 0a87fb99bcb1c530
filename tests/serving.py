"""Real `bentoml serve` processes for the tests: start, find the worker, wait, stop."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
WORKER_MODULE = "_bentoml_impl.worker.service"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_store(source_home: Path, target_home: Path) -> Path:
    """A private copy of a BentoML home's models (tests may tamper with them)."""
    shutil.copytree(source_home / "models", target_home / "models", symlinks=True)
    return target_home


def worker_of(serve_pid: int) -> psutil.Process | None:
    """The serving worker: the child of `bentoml serve` that runs BentoML's worker module."""
    try:
        children = psutil.Process(serve_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for child in children:
        try:
            if WORKER_MODULE in child.cmdline():
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def rss_mb(process: psutil.Process) -> float:
    return process.memory_info().rss / 2**20


@dataclass
class ServeProcess:
    """One `bentoml serve` process group with its own BENTOML_HOME, port and log."""

    url: str
    log: Path
    process: subprocess.Popen

    @classmethod
    def start(cls, home: Path, log: Path, env: dict[str, str] | None = None) -> ServeProcess:
        port = free_port()
        full_env = {
            **os.environ,
            "BENTOML_HOME": str(home),
            "BENTOML_DO_NOT_TRACK": "true",
            "SEQSERVE_TORCH_THREADS": "1",
            "SEQSERVE_WORKERS": "1",  # the tests find, signal and measure the one worker
            **(env or {}),
        }
        command = [sys.executable, "-m", "bentoml", "serve", "service.service:SeqServe"]
        command += ["--host", "127.0.0.1", "--port", str(port)]
        with log.open("wb") as sink:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=full_env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return cls(f"http://127.0.0.1:{port}", log, process)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def worker(self) -> psutil.Process | None:
        return worker_of(self.process.pid)

    def status(self, path: str, timeout: float = 2.0) -> int | None:
        """HTTP status of GET `path`, or None when nothing answers in time."""
        try:
            return httpx.get(f"{self.url}{path}", timeout=timeout).status_code
        except httpx.TransportError:
            return None

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Seconds until /readyz answers 200; RuntimeError with the log tail otherwise."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                break
            if self.status("/readyz", timeout=1.0) == 200:
                return time.monotonic() - started
            time.sleep(0.1)
        raise RuntimeError(f"bentoml serve did not become ready:\n{self.log_text()[-4000:]}")

    def log_size(self) -> int:
        return self.log.stat().st_size

    def wait_for_log(self, text: str, since: int = 0, timeout: float = 60.0) -> str:
        """The first log line after byte `since` containing `text`, waiting up to `timeout` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.log.open("rb") as log:
                log.seek(since)
                for line in log.read().decode(errors="replace").splitlines():
                    if text in line:
                        return line
            time.sleep(0.2)
        raise AssertionError(f"no log line with {text!r}:\n{self.log_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
