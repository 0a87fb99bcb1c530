"""One server process for tests and benchmarks: start it, wait until every worker is ready, stop it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
WORKER_MODULE = "_bentoml_impl.worker.service"  # what a BentoML worker process runs
READY_LINE = "all models ready"  # the service logs it once per worker (service/runtime.py)
SERVICE = "service.service:SeqServe"


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """HTTP status of GET `url`, or None when nothing answers in time."""
    try:
        return httpx.get(url, timeout=timeout).status_code
    except httpx.TransportError:
        return None


def cpu_seconds(process: psutil.Process) -> float:
    """User plus system CPU time of `process` so far, all its threads."""
    times = process.cpu_times()
    return times.user + times.system


def worker_of(serve_pid: int) -> psutil.Process | None:
    """A serving worker: a child of `bentoml serve` that runs BentoML's worker module."""
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
    """Resident memory of one process, in MiB."""
    return process.memory_info().rss / 2**20


def service_workers(env: dict[str, str]) -> int:
    """How many worker processes the service starts with `env` over this process's environment."""
    from service.settings import Settings  # the service's own rule (CPU count, GPU, override)

    return Settings.from_env({**os.environ, **env}).worker_count()


@dataclass
class Server:
    """A server started in its own process group, its log, and what `wait_ready` waits for:
    GET `ready_path` answering 200 and, with `ready_line`, that line logged `workers` times
    (a readiness probe answers from whichever worker accepts the connection)."""

    name: str
    url: str
    process: subprocess.Popen
    log: Path
    ready_path: str = "/readyz"
    ready_line: str = ""
    workers: int = 1
    launched: float = 0.0  # time.perf_counter() just before the process was started
    start_s: float | None = None  # launch to the first time it was ready
    private_home: Path | None = None  # removed by stop()

    @classmethod
    def start(
        cls,
        name: str,
        command: list[str],
        port: int,
        log: Path,
        env: dict[str, str] | None = None,
        *,
        ready_path: str = "/readyz",
        ready_line: str = "",
        workers: int = 1,
    ) -> Self:
        """Start `command` (listening on `port`) with `env` over this environment, its output in
        `log`; returns at once, before it is ready."""
        launched = time.perf_counter()
        with log.open("wb") as sink:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**os.environ, "BENTOML_DO_NOT_TRACK": "true", **(env or {})},
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # stop() signals the whole group, workers included
            )
        url = f"http://127.0.0.1:{port}"
        return cls(name, url, process, log, ready_path, ready_line, workers, launched)

    @classmethod
    def bentoml(
        cls,
        home: Path,
        log: Path,
        env: dict[str, str] | None = None,
        *,
        target: str = SERVICE,
        name: str = "bentoml",
        working_dir: Path | None = None,
    ) -> Self:
        """`bentoml serve` of `target` (the service, or another that logs READY_LINE once per
        worker, e.g. bench/serving_noop.py's) over the BentoML store in `home`, on a free port.

        The server gets a BentoML home of its own whose `models` is `home`'s: `bentoml serve`
        empties `$BENTOML_HOME/prometheus_multiproc_dir` when it starts, which would wipe the
        metrics of any other server running over the same home. `working_dir`: import `target`
        from there (another checkout) rather than from this one."""
        private = Path(tempfile.mkdtemp(prefix="seqserve-serve-"))
        (private / "models").symlink_to(Path(home).resolve() / "models")
        env = {**(env or {}), "BENTOML_HOME": str(private)}
        port = free_port()
        command = [sys.executable, "-m", "bentoml", "serve", target]
        command += ["--host", "127.0.0.1", "--port", str(port)]
        if working_dir is not None:
            command += ["--working-dir", str(working_dir)]
        workers = service_workers(env)
        server = cls.start(name, command, port, log, env, ready_line=READY_LINE, workers=workers)
        server.private_home = private
        return server

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def status(self, path: str, timeout: float = 2.0) -> int | None:
        """HTTP status of GET `path`, or None when nothing answers in time."""
        return http_status(f"{self.url}{path}", timeout)

    def is_ready(self) -> bool:
        """`ready_path` answers 200 and every worker has logged `ready_line`."""
        if self.status(self.ready_path, timeout=1.0) != 200:
            return False
        return not self.ready_line or self.log_text().count(self.ready_line) >= self.workers

    def wait_ready(self, timeout: float = 300.0) -> float:
        """Seconds from this call until ready; RuntimeError with the log's tail when the process
        exits or `timeout` passes first."""
        called = time.perf_counter()
        while not self.is_ready():
            if self.process.poll() is not None:
                problem = f"exited with code {self.process.returncode}"
                raise RuntimeError(f"{self.name} {problem}:\n{self.log_text()[-4000:]}")
            if time.perf_counter() - called > timeout:
                problem = f"was not ready after {timeout:.0f} s"
                raise RuntimeError(f"{self.name} {problem}:\n{self.log_text()[-4000:]}")
            time.sleep(0.05)
        if self.start_s is None:
            self.start_s = time.perf_counter() - self.launched
        return time.perf_counter() - called

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

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

    def worker(self) -> psutil.Process | None:
        """A BentoML worker process of this server (the only one when it runs one worker)."""
        return worker_of(self.process.pid)

    def memory(self) -> dict[str, float]:
        """Resident and proportional memory of the server and its children, in MB."""
        root = psutil.Process(self.process.pid)
        processes = [root, *root.children(recursive=True)]
        rss = pss = 0
        for process in processes:
            try:
                info = process.memory_full_info()
            except psutil.Error:
                continue
            rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
        return {
            "rss_mb": round(rss / 1e6, 1),
            "pss_mb": round(pss / 1e6, 1),
            "processes": len(processes),
        }

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the process group, SIGKILL it after `timeout` s."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.private_home is not None:
            shutil.rmtree(self.private_home, ignore_errors=True)  # the models link, not the store
