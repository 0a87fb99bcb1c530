"""Files and folders written whole or not at all, and the errors for files that are not whole.

Every file the project writes goes through `write_atomically`: the bytes go to `<name>.tmp` in the
same folder, are flushed and fsync'd, the temporary file is renamed over `<name>` and the folder is
fsync'd. A process killed at any moment leaves either the old file or the new one, never a mix;
at worst a stray `<name>.tmp`, which the next write of that file replaces. A failed write (a full
disk, say) removes its temporary file and raises `WriteFailedError` naming the path; the file
that was there stays as it was.

A folder (a model directory, a prepared data set) is built in `.<name>.tmp` beside it and swapped
in by `replace_directory`: the old folder is renamed to `.<name>.old`, the new one into place, and
the old one removed. A kill between the two renames leaves only `.<name>.old`, which
`recover_directory` renames back.

The fault tests (tests/faults.py) replace `_open_temporary`, `_rename` and `_write_all` to kill
the process inside a write or to fill the disk.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

TEMPORARY_SUFFIX = ".tmp"


class WriteFailedError(OSError):
    """A file could not be written (disk full, read-only, ...); the file there before is kept.

    Made as `WriteFailedError(errno, strerror, path)`, as OSError is (so that it pickles)."""

    def __str__(self) -> str:
        return (
            f"{self.filename}: could not be written ({self.strerror}); "
            "the version there before, if any, is unchanged"
        )


class DamagedFileError(RuntimeError):
    """A file read back is truncated, altered or not what it should be; the message names the
    file and what to do about it."""


def temporary_path(path: Path) -> Path:
    """Where `path` is written before it is renamed into place."""
    return path.with_name(path.name + TEMPORARY_SUFFIX)


def _open_temporary(path: Path) -> IO[bytes]:
    return open(path, "wb")  # noqa: SIM115 - closed by the caller's `with`


def _rename(source: Path, target: Path) -> None:
    os.replace(source, target)


def _write_all(handle: int, data: bytes, path: Path) -> None:
    """Write all of `data` to the open file `handle` (of `path`)."""
    view = memoryview(data)
    while view:
        view = view[os.write(handle, view) :]


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new file inside `folder` durable."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_atomically(path: str | Path, write: Callable[[IO[bytes]], object]) -> int:
    """Write `path` by calling `write(stream)` on a temporary file that is then fsync'd and renamed
    into place; returns the size in bytes. Raises WriteFailedError (the old file kept) on failure."""
    path = Path(path)
    temporary = temporary_path(path)
    try:
        with _open_temporary(temporary) as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        size = temporary.stat().st_size
        _rename(temporary, path)
        fsync_folder(path.parent)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, WriteFailedError):
            raise _failed(path, error) from error
        raise
    return size


def write_bytes(path: str | Path, data: bytes) -> int:
    """Write `data` to `path` atomically; returns its size."""
    return write_atomically(path, lambda stream: stream.write(data))


def write_text(path: str | Path, text: str) -> int:
    """Write UTF-8 `text` to `path` atomically; returns its size in bytes."""
    return write_bytes(path, text.encode("utf-8"))


def append_line(path: str | Path, line: str) -> None:
    """Append `line` (a newline added) to `path` in one write; WriteFailedError on failure.

    Not fsync'd: a killed process loses nothing written, and callers that need the line to
    survive a machine crash call `sync_file` at their own checkpoints."""
    path = Path(path)
    try:
        handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            _write_all(handle, (line + "\n").encode("utf-8"), path)
        finally:
            os.close(handle)
    except OSError as error:
        raise _failed(path, error) from error


def _failed(path: Path, error: OSError) -> WriteFailedError:
    return WriteFailedError(error.errno, error.strerror or str(error), str(path))


def sync_file(path: str | Path) -> None:
    """fsync an existing file (e.g. an append-only log at a checkpoint)."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def staging_path(directory: Path) -> Path:
    """The hidden folder beside `directory` in which its replacement is built."""
    return directory.with_name(f".{directory.name}{TEMPORARY_SUFFIX}")


def _old_path(directory: Path) -> Path:
    return directory.with_name(f".{directory.name}.old")


def recover_directory(directory: Path) -> None:
    """Undo a replacement killed between its two renames: `.<name>.old` becomes `<name>` again."""
    old = _old_path(directory)
    if not directory.exists() and old.is_dir():
        _rename(old, directory)


def replace_directory(staged: Path, directory: Path) -> None:
    """Swap the finished folder `staged` in as `directory` (see the module docstring)."""
    old = _old_path(directory)
    try:
        for path in staged.rglob(f"*{TEMPORARY_SUFFIX}"):  # strays of killed writes
            if path.is_file():
                path.unlink()
        fsync_folder(staged)
        if old.exists():
            shutil.rmtree(old)
        if directory.exists():
            _rename(directory, old)
        _rename(staged, directory)
        fsync_folder(directory.parent)
    except OSError as error:
        raise _failed(directory, error) from error
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def replacing_directory(directory: str | Path, resume: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder (with `resume`, the one a killed run left, as it is); when
    the block ends normally it replaces `directory`, and on an error it is removed (kept with
    `resume`). Nothing under `directory` changes until the end."""
    directory = Path(os.path.abspath(directory))  # "." has no name to put a sibling beside
    recover_directory(directory)
    staged = staging_path(directory)
    if staged.exists() and not resume:
        shutil.rmtree(staged)
    staged.mkdir(parents=True, exist_ok=True)
    try:
        yield staged
    except BaseException:
        if not resume:
            shutil.rmtree(staged, ignore_errors=True)
        raise
    replace_directory(staged, directory)


def missing_directory_hint(directory: Path) -> str:
    """What to say when `directory` is missing: whether an interrupted replacement left it aside."""
    old = _old_path(directory)
    if old.is_dir():
        return f"; {old} holds the previous version (a save was interrupted): rename it back"
    return ""
