"""The feature cache on disk: fp16 rows in memory-mapped .npy shards, listed by a JSON-lines manifest.

A store is one folder holding `manifest.jsonl` and `shard-000000.npy`, `shard-000001.npy`, ...
Each shard is one fp16 array (rows, 1 + S, D): a row's position 0 is an image's pooled vector,
1..S its grid. NumPy's .npy because `np.load(mmap_mode="r")` maps a shard without reading it and
fancy indexing then reads only the rows asked for (safetensors maps files too, but hands out
contiguous slices only), and one array per shard is one file to rename, so a shard is whole or
absent. A shard holds at most `shard_bytes` (128 MiB by default): writing keeps one shard in memory
however many rows there are.

The manifest is a header line (format, the encoder's fingerprint and config, row shape, dtype),
then one line per finished shard (file name, size in bytes, the keys of its rows), appended only
once the shard has been written under a temporary name, fsync'd and renamed. A writer killed at
any moment loses at most the shard in progress. A torn last line, or a line whose shard is missing
or has another size, is reported in one line and ignored (its rows are computed again); the next
writer rewrites the manifest without it and deletes the files no line names. Writers hold an
flock on `<folder>/lock`; readers need none, as a recorded shard never changes.
"""

from __future__ import annotations

import fcntl
import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.atomic import DamagedFileError, append_line, sync_file, write_atomically, write_text

FORMAT = "seqserve-feature-shards/1"
MANIFEST = "manifest.jsonl"
SHARD_BYTES = 128 * 2**20
SHARD_NAME = re.compile(r"shard-(\d{6})\.npy")

Key = tuple[str, int, int]  # (resolved absolute path, size in bytes, mtime in ns)


@dataclass(frozen=True)
class Shard:
    """One finished shard file and the keys of its rows, in order."""

    name: str
    size: int  # bytes
    keys: list[Key]


class ShardStore:
    """fp16 feature rows (1 + S, D) in `folder`'s shards, each found by its key."""

    def __init__(self, folder: Path, identity: dict[str, Any]) -> None:
        """`identity` (the encoder's `fingerprint` and `encoder` config) heads the manifest."""
        self.folder, self.identity = folder, identity
        self.load(report=True)

    def __len__(self) -> int:
        return self.starts[-1]

    def load(self, report: bool) -> bool:
        """(Re)read the manifest -> whether any of it was ignored."""
        self.header, shards, ignored = read_manifest(self.folder, self.identity, report)
        self.shards: list[Shard] = []
        self.starts = [0]  # first row of each shard, then the row count
        self.index: dict[Key, int] = {}  # key -> row
        self._arrays: dict[int, np.ndarray] = {}
        for shard in shards:
            self._add(shard)
        return ignored

    def _add(self, shard: Shard) -> None:
        start = self.starts[-1]
        self.index.update({key: start + row for row, key in enumerate(shard.keys)})
        self.shards.append(shard)
        self.starts.append(start + len(shard.keys))

    @contextmanager
    def writing(self, shard_bytes: int = SHARD_BYTES, multiple: int = 1) -> Iterator[ShardWriter]:
        """Lock the folder, take in shards other writers added, tidy up after killed ones, and
        yield a writer whose rows are appended shard by shard (the last one on leaving); see
        `ShardWriter` for `multiple`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes or the process dies
            self._tidy(self.load(report=False))
            writer = ShardWriter(self._commit, shard_bytes, multiple)
            yield writer
            writer.flush()

    def _tidy(self, ignored: bool) -> None:
        """Drop ignored manifest lines and delete the files no line names."""
        if ignored:
            if self.header is None:
                (self.folder / MANIFEST).unlink(missing_ok=True)
            else:
                _write_manifest(self.folder, self.header, self.shards)
        named = {shard.name for shard in self.shards}
        strays = [
            path
            for path in self.folder.iterdir()
            if path.name.endswith(".tmp")
            or (SHARD_NAME.fullmatch(path.name) and path.name not in named)
        ]
        for path in strays:
            path.unlink()
        if strays:
            _say(f"{self.folder}: deleted {len(strays)} unrecorded file(s) of an interrupted run")

    def _commit(self, keys: list[Key], rows: np.ndarray) -> None:
        """Write one shard (rows (N, 1 + S, D)), then record it: only recorded shards are read."""
        if self.header is None:
            self.header = {"format": FORMAT, **self.identity}
            self.header.update(row_shape=list(rows.shape[1:]), dtype="float16")
            _write_manifest(self.folder, self.header, [])
        numbers = [int(SHARD_NAME.fullmatch(s.name)[1]) for s in self.shards]  # type: ignore[index]
        name = f"shard-{max(numbers, default=-1) + 1:06d}.npy"
        size = write_atomically(self.folder / name, lambda stream: np.save(stream, rows))
        shard = Shard(name, size, list(keys))
        append_line(self.folder / MANIFEST, json.dumps(_record(shard), separators=(",", ":")))
        sync_file(self.folder / MANIFEST)
        self._add(shard)

    def gather(self, rows: Tensor, with_grid: bool = True) -> tuple[Tensor, Tensor | None]:
        """rows (B,) -> pooled (B, D) and grid (B, S, D) (None unless `with_grid`), fp16 on the
        CPU, read from the shards that hold them."""
        rows_np = np.asarray(rows, dtype=np.int64).reshape(-1)  # (B,)
        if len(rows_np) and not 0 <= rows_np.min() <= rows_np.max() < len(self):
            raise IndexError(f"feature cache rows must be in [0, {len(self)})")
        slots, width = (1, 0) if self.header is None else self.header["row_shape"]
        pooled = np.empty((len(rows_np), width), np.float16)  # (B, D)
        grid = np.empty((len(rows_np), slots - 1, width), np.float16) if with_grid else None
        shard_of = np.searchsorted(self.starts, rows_np, side="right") - 1  # (B,)
        for index in np.unique(shard_of):
            where = np.flatnonzero(shard_of == index)
            local = rows_np[where] - self.starts[index]
            if grid is None:
                pooled[where] = self._array(index)[local, 0]  # reads D values a row
            else:
                found = self._array(index)[local]  # (b, 1 + S, D)
                pooled[where], grid[where] = found[:, 0], found[:, 1:]
        return torch.from_numpy(pooled), None if grid is None else torch.from_numpy(grid)

    def _array(self, index: int) -> np.ndarray:
        """Shard `index`, memory-mapped read-only (opened once)."""
        if index not in self._arrays:
            shard = self.shards[index]
            path = self.folder / shard.name
            expected = (len(shard.keys), *self.header["row_shape"])  # type: ignore[index]
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as error:
                raise DamagedFileError(
                    f"{path}: unreadable feature shard ({error}); delete it (its images are "
                    "computed again)"
                ) from None
            if array.shape != expected or array.dtype != np.float16:
                found = f"{array.dtype} {array.shape}"
                raise DamagedFileError(
                    f"{path}: holds {found}, not float16 {expected}; delete it (its images are "
                    "computed again)"
                )
            self._arrays[index] = array
        return self._arrays[index]


class ShardWriter:
    """Rows in; each full shard (and the last, partial one on `flush`) out to `commit`.

    A shard's row count is a multiple of `multiple`: given the batch size, a run resumed after a
    kill encodes the very batches an uninterrupted run would have, so its features are the same
    bit for bit (a CNN's output can differ in the last bit with the batch's size)."""

    def __init__(
        self, commit: Callable[[list[Key], np.ndarray], None], shard_bytes: int, multiple: int = 1
    ) -> None:
        self.commit, self.shard_bytes, self.multiple = commit, shard_bytes, multiple
        self.buffer: np.ndarray | None = None  # (rows a shard, 1 + S, D), reused
        self.keys: list[Key] = []

    def add(self, keys: list[Key], rows: np.ndarray) -> None:
        """keys (B,) and their rows (B, 1 + S, D)."""
        if self.buffer is None:
            per_shard = max(1, self.shard_bytes // rows[0].nbytes // self.multiple) * self.multiple
            self.buffer = np.empty((per_shard, *rows.shape[1:]), dtype=np.float16)
        while keys:
            filled = len(self.keys)
            take = min(len(keys), len(self.buffer) - filled)
            self.buffer[filled : filled + take] = rows[:take]
            self.keys += keys[:take]
            keys, rows = keys[take:], rows[take:]
            if len(self.keys) == len(self.buffer):
                self.flush()

    def flush(self) -> None:
        """Commit the rows added since the last shard, if any."""
        if self.keys:
            self.commit(self.keys, self.buffer[: len(self.keys)])  # type: ignore[index]
            self.keys = []


def read_manifest(
    folder: Path, identity: dict[str, Any], report: bool = True
) -> tuple[dict[str, Any] | None, list[Shard], bool]:
    """The manifest's header and the shards it lists whose files are whole, and whether any line
    was ignored (each reported in one line on stderr when `report`)."""
    path = folder / MANIFEST
    if not path.is_file():
        return None, [], False
    say = _say if report else lambda _: None
    *lines, torn = path.read_bytes().split(b"\n")
    if torn:
        say(f"{path}: ignoring a torn last line ({len(torn)} bytes); its images are computed again")
    header = _json(lines[0]) if lines else None
    if (
        not isinstance(header, dict)
        or header.get("format") != FORMAT
        or any(header.get(name) != value for name, value in identity.items())
    ):
        say(f"{path}: no valid header: ignoring the cache, every image is computed again")
        return None, [], True
    shards = []
    for number, line in enumerate(lines[1:], start=2):
        shard, problem = _shard(folder, line)
        if shard is None:
            say(f"{path}:{number}: {problem}: ignored; its images are computed again")
        else:
            shards.append(shard)
    return header, shards, bool(torn) or len(shards) < len(lines) - 1


def _shard(folder: Path, line: bytes) -> tuple[Shard | None, str]:
    record = _json(line)
    try:
        keys = [(str(path), int(size), int(mtime)) for path, size, mtime in record["keys"]]
        shard = Shard(str(record["shard"]), int(record["bytes"]), keys)
    except (KeyError, TypeError, ValueError):
        return None, "not a shard record"
    if not SHARD_NAME.fullmatch(shard.name):
        return None, f"{shard.name!r} is not a shard name"
    file = folder / shard.name
    if not file.is_file():
        return None, f"{shard.name} is missing"
    if file.stat().st_size != shard.size:
        return None, f"{shard.name} has {file.stat().st_size} bytes, not {shard.size}"
    return shard, ""


def _json(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def _record(shard: Shard) -> dict[str, Any]:
    return {"shard": shard.name, "bytes": shard.size, "keys": shard.keys}


def _write_manifest(folder: Path, header: dict[str, Any], shards: list[Shard]) -> None:
    lines = [json.dumps(x, separators=(",", ":")) + "\n" for x in [header, *map(_record, shards)]]
    write_text(folder / MANIFEST, "".join(lines))


def _say(message: str) -> None:
    print(f"feature cache: {message}", file=sys.stderr, flush=True)
