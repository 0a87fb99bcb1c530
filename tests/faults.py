"""Fault injection for the tests/test_faults_*.py tests: a process killed inside a file write,
a disk that fills up, and child processes forked from a server that has imported torch once.

`KillPoint` names a write and where in it to stop; `install_kill_point` patches the two seams of
`models.atomic` (`_open_temporary`, `_rename`) in the current process only, so it is called in a
child. The child makes itself a process group first and the kill takes the whole group (SIGKILL,
nothing runs after it: no `finally`, no cleanup), helper processes of a data build included.
"""

from __future__ import annotations

import errno
import fnmatch
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

import models.atomic as atomic

PRELOAD = ["tests.faults", "training.train_lm", "training.data.photo", "training.data.pairs"]


@dataclass(frozen=True)
class KillPoint:
    """Stop the process at the `occurrence`-th write of a file whose name matches `name` (a glob):
    after `after` bytes of it ("bytes"), just before it is renamed into place ("before-rename"),
    or just after ("after-rename", before the folder is fsync'd)."""

    name: str
    when: str  # bytes | before-rename | after-rename
    occurrence: int = 1
    after: int = 0

    def __str__(self) -> str:
        where = f"{self.after} bytes into" if self.when == "bytes" else f"{self.when} of"
        return f"{where} write {self.occurrence} of {self.name}"


def die() -> None:
    """SIGKILL this process's group: nothing after this line runs anywhere in it."""
    os.killpg(os.getpgrp(), signal.SIGKILL)


class _KillingStream:
    """A file stream that writes `limit` bytes, flushes them to the file, and dies."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self.stream, self.limit, self.written = stream, limit, 0

    def write(self, data: bytes) -> int:
        room = self.limit - self.written
        if len(data) >= room:
            self.stream.write(bytes(memoryview(data)[:room]))
            self.stream.flush()
            die()
        self.written += len(data)
        return self.stream.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    def __enter__(self) -> _KillingStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.close()


def install_kill_point(point: KillPoint) -> None:
    """Make this process die at `point` (see KillPoint)."""
    original_open, original_rename = atomic._open_temporary, atomic._rename
    seen = [0]

    def reached(name: str, when: str) -> bool:
        if point.when != when or not fnmatch.fnmatchcase(name, point.name):
            return False
        seen[0] += 1
        return seen[0] == point.occurrence

    def open_temporary(path: Path) -> IO[bytes]:
        stream = original_open(path)
        if reached(path.name.removesuffix(atomic.TEMPORARY_SUFFIX), "bytes"):
            return _KillingStream(stream, point.after)  # type: ignore[return-value]
        return stream

    def rename(source: Path, target: Path) -> None:
        if reached(target.name, "before-rename"):
            die()
        original_rename(source, target)
        if reached(target.name, "after-rename"):
            die()

    atomic._open_temporary, atomic._rename = open_temporary, rename


class _FullDiskStream:
    """A file stream that accepts `room` bytes, then fails as a full disk does."""

    def __init__(self, stream: IO[bytes], room: int) -> None:
        self.stream, self.room = stream, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.stream.write(bytes(memoryview(data)[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.stream.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    def __enter__(self) -> _FullDiskStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.close()


def fill_disk_at(monkeypatch: pytest.MonkeyPatch, pattern: str, room: int = 100) -> None:
    """From now on (in this process) every write of a file matching `pattern` fails with ENOSPC
    after `room` bytes, as on a full disk; appends to such a file fail at once."""
    original_open, original_write_all = atomic._open_temporary, atomic._write_all

    def open_temporary(path: Path) -> IO[bytes]:
        stream = original_open(path)
        if fnmatch.fnmatchcase(path.name.removesuffix(atomic.TEMPORARY_SUFFIX), pattern):
            return _FullDiskStream(stream, room)  # type: ignore[return-value]
        return stream

    def write_all(handle: int, data: bytes, path: Path) -> None:
        if fnmatch.fnmatchcase(path.name, pattern):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        original_write_all(handle, data, path)

    monkeypatch.setattr(atomic, "_open_temporary", open_temporary)
    monkeypatch.setattr(atomic, "_write_all", write_all)


def _child(point: KillPoint | None, function: Callable[..., object], args: tuple) -> None:
    os.setpgrp()  # the kill takes this process and its helpers, never the test runner
    multiprocessing.set_start_method("fork", force=True)  # helpers start as from a shell: forked
    if point is not None:
        install_kill_point(point)
    function(*args)


def start_child(
    function: Callable[..., object], *args: object, kill: KillPoint | None = None
) -> multiprocessing.process.BaseProcess:
    """Start `function(*args)` in a process forked from the fork server (torch already imported
    there, so a child starts in milliseconds)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    child = context.Process(target=_child, args=(kill, function, args))
    child.start()
    return child


def finish(child: multiprocessing.process.BaseProcess, timeout: float = 300) -> int:
    """Wait for a child; its exit code (-9: killed by SIGKILL)."""
    child.join(timeout=timeout)
    if child.exitcode is None:
        child.kill()
        raise TimeoutError(f"child {child.pid} did not finish in {timeout} s")
    return child.exitcode


def run_in_child(
    function: Callable[..., object], *args: object, kill: KillPoint | None = None
) -> int:
    """Run `function(*args)` in a child (see `start_child`); its exit code."""
    return finish(start_child(function, *args, kill=kill))


def train_lm(argv: list[str]) -> None:
    """`python -m training.train_lm` with these flags (in a child)."""
    import torch

    from training import train_lm as command

    torch.set_num_threads(1)
    command.main(command.get_args_parser().parse_args(argv))


def build_photo(out: Path, backgrounds: Path) -> None:
    """`training.data.photo`'s build on the test fixtures (tests/test_data_photo.py) into `out`,
    with the fixture backgrounds drawn into `backgrounds` (in a child, or here)."""
    from tests.test_data_photo import ENTRIES, ENTRIES_DE, FIXTURES, OPTIONS
    from training.data import photo
    from training.data.composite import Background
    from training.data.emoji import load_concepts
    from training.data.iconify import IconSet, name_index
    from training.data.photo_build import Sources
    from training.data.tuxpaint import STAMPS_DIR

    concepts = load_concepts(ENTRIES)
    sources = Sources(
        concepts=concepts,
        labels_de=photo.german_labels(ENTRIES_DE),
        icon_sets={s: IconSet.load(FIXTURES / "iconify" / s) for s in ("flat", "heldout")},
        name_index=name_index(concepts, []),
        stamps_dir=FIXTURES / "tuxpaint" / STAMPS_DIR,
        backgrounds=[
            Background(f"fake:{p.stem}", p, "fake-wallpapers", "1.0", "CC0-1.0")
            for p in sorted(backgrounds.glob("*.jpg"))
        ],
    )
    photo.prepare(out, sources, [], OPTIONS, datasource_styles=False)


def prepare_pairs(argv: list[str]) -> None:
    """`python -m training.data.pairs ARGV` (in a child)."""
    from training.data import pairs

    pairs.main(pairs.parse_args(argv))


def import_shipped(home: Path, shipped: Path, slow_s: float) -> None:
    """`python -m training.export import-shipped` into the store at `home` (in a child), with
    `slow_s` seconds between looking for a stored copy and making one: the window in which two
    imports at once would both copy a model."""
    os.environ.update(BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true")
    import bentoml

    listing = bentoml.models.list

    def slow_listing(*args: Any, **kwargs: Any) -> Any:
        try:
            return listing(*args, **kwargs)  # raises NotFound while there is none
        finally:
            time.sleep(slow_s)

    bentoml.models.list = slow_listing
    from training import export

    export.main(
        export.get_args_parser().parse_args(["import-shipped", "--shipped-dir", str(shipped)])
    )


def _note_pid_slowly(folder: str) -> int:
    (Path(folder) / str(os.getpid())).touch()
    time.sleep(0.3)
    return os.getpid()


def map_then_die_alone(folder: Path) -> None:
    """A data command's `parallel_map` whose main process alone is SIGKILLed after a second (as
    `kill -9 PID` does), its helper busy; every process notes its pid in `folder`."""
    from training.data.common import parallel_map

    killer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGKILL))
    killer.start()
    parallel_map(_note_pid_slowly, [str(folder)] * 40)
