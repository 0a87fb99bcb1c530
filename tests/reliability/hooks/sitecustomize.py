"""Test-only fault injection for the serving worker started by tests/reliability/test_faults.py.

Python imports `sitecustomize` at start-up from the first directory on sys.path that has one, so
a server started with this directory on PYTHONPATH and RELIABILITY_FAULTS_DIR set runs this file
in each of its processes. In the BentoML serving worker only, once `models.decoders` is
imported, every decoder step first looks in RELIABILITY_FAULTS_DIR for these files, which the
tests create and delete while the server runs:

  slow_step_s   a number: sleep that many seconds before each step (a slow model)
  oom_cuda      used once (deleted): hold 256 MB, then raise torch.OutOfMemoryError as CUDA does
  oom_cpu       used once (deleted): hold 256 MB, then ask the CPU allocator for 16 TiB, which
                makes torch raise its real "can't allocate memory" RuntimeError

Nothing under service/ or models/ knows about this file; without RELIABILITY_FAULTS_DIR it
does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import time
from pathlib import Path

FAULTS = os.environ.get("RELIABILITY_FAULTS_DIR")
WORKER_MODULE = "_bentoml_impl.worker.service"
TARGET = "models.decoders"


def _take(path: Path) -> bool:
    """True once per creation of `path` (it is deleted)."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _before_step(directory: Path) -> None:
    import torch

    slow = directory / "slow_step_s"
    if slow.exists():
        time.sleep(float(slow.read_text() or 0))
    for name in ("oom_cuda", "oom_cpu"):
        if _take(directory / name):
            held = torch.ones(256 * 1024 * 1024, dtype=torch.uint8)  # noqa: F841 - memory in use
            if name == "oom_cpu":
                torch.empty(2**44, dtype=torch.uint8)  # the real allocator error
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (simulated by "
                "tests/reliability/hooks/sitecustomize.py)"
            )


def _inject(module: object, directory: Path) -> None:
    decoder = module.RecurrentDecoder  # type: ignore[attr-defined]
    original = decoder.step

    def step(self, prev_tokens, state):  # noqa: ANN001, ANN202 - same signature as the original
        _before_step(directory)
        return original(self, prev_tokens, state)

    decoder.step = step


class _AfterImport(importlib.abc.MetaPathFinder):
    """Patch `models.decoders` right after it is first imported."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def find_spec(self, name, path, target=None):  # noqa: ANN001, ANN201 - importlib protocol
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):  # noqa: ANN001, ANN202
            load(module)
            _inject(module, self.directory)

        spec.loader.exec_module = exec_module
        return spec


if FAULTS and WORKER_MODULE in sys.orig_argv:
    sys.meta_path.insert(0, _AfterImport(Path(FAULTS)))
