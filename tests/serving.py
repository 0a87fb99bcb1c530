"""The tests' `bentoml serve`: the harness's server with one worker and one torch thread."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TypeVar

from harness.server import Server, rss_mb, worker_of

__all__ = ["ONE_WORKER", "Server", "copy_store", "rss_mb", "start_server", "worker_of"]

# One worker, so that "the worker" the fault tests find, kill and measure is the only one; one
# torch thread, so that tiny models do not spin two OpenMP threads against the test process.
ONE_WORKER = {"SEQSERVE_TORCH_THREADS": "1", "SEQSERVE_WORKERS": "1"}
S = TypeVar("S", bound=Server)


def start_server(
    home: Path, log: Path, env: dict[str, str] | None = None, kind: type[S] = Server
) -> S:
    """`bentoml serve` over the store in `home` with ONE_WORKER and `env`, not yet ready."""
    return kind.bentoml(home, log, {**ONE_WORKER, **(env or {})})


def copy_store(source_home: Path, target_home: Path) -> Path:
    """A private copy of a BentoML home's models (tests may tamper with them)."""
    shutil.copytree(source_home / "models", target_home / "models", symlinks=True)
    return target_home
