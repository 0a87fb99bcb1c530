"""Data preparation loses nothing: a killed build carries on where it stopped, a full disk keeps
what was written, an output is replaced whole, and a second run with nothing to do does nothing."""

from __future__ import annotations

import errno
import json
import os
import signal
import time
from pathlib import Path

import pytest

from models.atomic import WriteFailedError, sha256_file, staging_path
from tests import faults
from tests.faults import KillPoint
from tests.test_data_pairs import PAIRS, write_tsv
from tests.test_data_photo import _backgrounds
from training.data.builds import up_to_date

pytestmark = pytest.mark.faults


def tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative name -> sha256)."""
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def inodes(folder: Path) -> dict[str, int]:
    """Every file under `folder` -> its inode: a file written again (renamed over) gets a new one."""
    return {
        p.relative_to(folder).as_posix(): p.stat().st_ino for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def backgrounds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos") / "backgrounds"
    _backgrounds(folder)
    return folder


@pytest.fixture(scope="module")
def photo_reference(tmp_path_factory: pytest.TempPathFactory, backgrounds: Path) -> dict[str, str]:
    """The files of an uninterrupted photo build on the fixtures."""
    out = tmp_path_factory.mktemp("reference") / "photo"
    faults.build_photo(out, backgrounds)
    return tree(out)


def test_a_killed_photo_build_carries_on_and_a_second_run_does_nothing(
    tmp_path: Path,
    backgrounds: Path,
    photo_reference: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "photo"
    kill = KillPoint("*.jpg", "bytes", occurrence=3, after=200)  # a composite half written
    assert faults.run_in_child(faults.build_photo, out, backgrounds, kill=kill) == -signal.SIGKILL
    assert not out.exists()  # nothing half built is ever at the output's name
    kept = inodes(staging_path(out))
    assert any(name.endswith(".jpg.tmp") for name in kept)  # what the kill cut short
    finished = {n: i for n, i in kept.items() if n.endswith((".png", ".jpg"))}
    assert len(finished) > 20
    faults.build_photo(out, backgrounds)
    assert "carrying on with the files an interrupted run left" in capsys.readouterr().out
    assert tree(out) == photo_reference  # the same bytes as one uninterrupted build
    now = inodes(out)
    assert all(now[f"{n}"] == i for n, i in finished.items())  # kept, not written again
    started = time.monotonic()
    faults.build_photo(out, backgrounds)
    assert time.monotonic() - started < 5
    assert "up to date" in capsys.readouterr().out and inodes(out) == now


def test_a_full_disk_stops_the_photo_build_and_the_next_run_carries_on(
    tmp_path: Path,
    backgrounds: Path,
    photo_reference: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "photo"
    faults.fill_disk_at(monkeypatch, "*.jpg")
    with pytest.raises(WriteFailedError) as stopped:
        faults.build_photo(out, backgrounds)
    assert stopped.value.errno == errno.ENOSPC and ".jpg: could not be written" in str(
        stopped.value
    )
    assert not out.exists() and not list(staging_path(out).rglob("*.tmp"))
    monkeypatch.undo()
    faults.build_photo(out, backgrounds)
    assert tree(out) == photo_reference


def pairs_flags(tmp_path: Path, *more: str) -> list[str]:
    tsv = tmp_path / "p.tsv"
    if not tsv.is_file():
        write_tsv(tsv, PAIRS)
    return [
        "--tsv",
        str(tsv),
        "--source",
        "en",
        "--target",
        "fr",
        "--output",
        str(tmp_path / "o"),
        *more,
    ]


def test_an_output_is_replaced_whole_even_when_the_run_is_killed(tmp_path: Path) -> None:
    """A run with new flags, killed after writing one of its files, leaves the old output whole
    (and still up to date for its own flags); the next run writes the new one."""
    assert faults.run_in_child(faults.prepare_pairs, pairs_flags(tmp_path)) == 0
    before = tree(tmp_path / "o")
    kill = KillPoint("train.fr", "after-rename")
    new = pairs_flags(tmp_path, "--held-out", "5")
    assert faults.run_in_child(faults.prepare_pairs, new, kill=kill) == -signal.SIGKILL
    assert tree(tmp_path / "o") == before
    assert faults.run_in_child(faults.prepare_pairs, new) == 0
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "p.tsv").write_bytes((tmp_path / "p.tsv").read_bytes())
    assert faults.run_in_child(faults.prepare_pairs, pairs_flags(fresh, "--held-out", "5")) == 0
    after = tree(tmp_path / "o")
    assert after != before
    assert {n: d for n, d in after.items() if n != "manifest.json"} == {
        n: d for n, d in tree(fresh / "o").items() if n != "manifest.json"
    }
    assert not list(tmp_path.glob(".o.*"))


def test_a_second_run_does_nothing_and_a_damaged_output_is_built_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = pairs_flags(tmp_path)
    faults.prepare_pairs(flags)
    written = inodes(tmp_path / "o")
    capsys.readouterr()
    faults.prepare_pairs(flags)
    assert "up to date" in capsys.readouterr().out and inodes(tmp_path / "o") == written
    damaged = tmp_path / "o" / "train.en"
    damaged.write_bytes(damaged.read_bytes()[:-10])  # truncated behind the command's back
    before = os.stat(damaged).st_ino
    faults.prepare_pairs(flags)
    assert "up to date" not in capsys.readouterr().out
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert os.stat(damaged).st_ino != before and up_to_date(tmp_path / "o", manifest["request"])


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting to be reaped is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_data_command_leaves_no_helper_writing(tmp_path: Path) -> None:
    child = faults.start_child(faults.map_then_die_alone, tmp_path)
    assert faults.finish(child) == -signal.SIGKILL
    helpers = {int(p.name) for p in tmp_path.iterdir()} - {child.pid}
    assert len(helpers) == 1
    deadline = time.monotonic() + 5
    while any(map(running, helpers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(running, helpers))
