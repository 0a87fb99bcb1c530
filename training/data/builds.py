"""Data builds that resume and skip: the request an output was made for, up-to-date checks,
staging folders swapped in whole, and files written once."""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from models.atomic import replacing_directory, sha256_file, staging_path, write_bytes, write_text
from training.data.common import MANIFEST, REQUEST_MARKER


def as_json(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists, paths strings), for comparing."""
    return json.loads(json.dumps(value, default=str))


def request_of(
    args: argparse.Namespace, inputs: Iterable[Path] = (), **more: Any
) -> dict[str, Any]:
    """Everything a data command's output depends on: its flags (but where to write and --force),
    the sha256 of its input files, and `more`; equal requests give equal outputs."""
    flags = {k: v for k, v in vars(args).items() if k not in ("out_dir", "output", "force")}
    inputs_sha256 = {str(Path(p).resolve()): sha256_file(Path(p)) for p in inputs}
    return as_json({"flags": flags, "inputs": inputs_sha256, **more})


def up_to_date(out: Path, request: Mapping[str, Any]) -> dict[str, Any] | None:
    """The counts a finished earlier run recorded in `out/manifest.json`, when it ran for the same
    request and every file the manifest lists is still there with its sha256; else None."""
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        if manifest["request"] != as_json(request):
            return None
        for name, digest in manifest["files"].items():
            if sha256_file(out / name) != digest:
                return None
        return manifest["counts"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # no usable previous output: write it


@contextmanager
def building(out: Path, request: Mapping[str, Any], resume: bool = False) -> Iterator[Path]:
    """A staging folder (`.<name>.tmp` beside `out`) to write the output in; it replaces `out`
    when the block ends, so `out` is never half written. With `resume`, a staging folder that a
    killed run left for the same request is carried on: its finished files (each written
    atomically) stay, and `write_once` skips them."""
    marker = staging_path(out) / REQUEST_MARKER
    try:
        carry_on = resume and json.loads(marker.read_text(encoding="utf-8")) == as_json(request)
    except (OSError, ValueError):
        carry_on = False
    if not carry_on and staging_path(out).exists():
        shutil.rmtree(staging_path(out))  # another request's, or a run that cannot resume
    with replacing_directory(out, resume=resume) as staged:
        if carry_on:
            print(f"{out}: carrying on with the files an interrupted run left in {staged}")
        else:
            write_text(marker, json.dumps(as_json(request)))
        yield staged
        marker.unlink()


def write_once(path: Path, produce: Callable[[], bytes]) -> None:
    """Write `path` atomically with the bytes `produce()` returns, unless it is already there
    (a resumed build keeps what the run before it finished)."""
    if not path.is_file():
        write_bytes(path, produce())


def add_force_flag(parser: argparse.ArgumentParser) -> None:
    """The `--force` flag of every data command."""
    parser.add_argument(
        "--force",
        action="store_true",
        help="build again even when the output is up to date with these inputs (default: skip)",
    )


def already_built(out: Path, request: Mapping[str, Any], force: bool) -> dict[str, Any] | None:
    """`up_to_date(out, request)` unless `force`, saying so when it is."""
    counts = None if force else up_to_date(out, request)
    if counts is not None:
        print(f"{out} is up to date with these inputs; nothing to do (--force builds it again)")
    return counts
