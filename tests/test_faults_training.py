"""Training loses nothing: killed inside a write, resumed to the very weights of an uninterrupted
run; a full disk stops it in one line with the last checkpoint intact; damaged files are refused."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.atomic import DamagedFileError
from models.checkpoint import verify_checksums
from tests import faults
from tests.faults import KillPoint
from training import train_lm, train_translator
from training.feature_store import ShardStore
from training.state import CHECKPOINT, CHECKSUMS, read_checkpoint

pytestmark = pytest.mark.faults

TEXT = 'The quick brown fox jumps over the lazy dog.\n("Quoted", she said.)\n' * 20
# 16 steps an epoch: checkpoints after steps 16 and 32 (epoch ends) and 40 (max-steps, mid-epoch);
# best/ is saved twice each time it improves (the second time with golden.json)
KILLS = [
    KillPoint(CHECKPOINT, "bytes", occurrence=2, after=4096),
    KillPoint(CHECKPOINT, "before-rename", occurrence=2),
    KillPoint(CHECKPOINT, "after-rename", occurrence=2),
    KillPoint(CHECKSUMS, "after-rename", occurrence=2),
    KillPoint("model.safetensors", "bytes", occurrence=3, after=64),
    KillPoint("best", "before-rename", occurrence=3),  # old best/ set aside, new not yet in
]
RUN_FILES = {"best", CHECKPOINT, CHECKSUMS, "metrics.jsonl", "settings.json"}


def lm_flags(root: Path, name: str, *more: str) -> list[str]:
    """A tiny LM run `name` under `root` (dropout on, so that resuming must restore the RNG)."""
    text = root / "text.txt"
    if not text.is_file():
        text.write_text(TEXT)
    return ["--preset", "tiny", "--data", str(text), "--max-train-chars", "0",
            "--hidden-size", "8", "--embed-size", "4", "--batch-size", "4", "--bptt", "20",
            "--eval-batch-size", "2", "--dropout", "0.2", "--schedule", "constant",
            "--log-every", "1", "--golden-length", "8", "--no-progress",
            "--output-dir", str(root), "--name", name, *more]  # fmt: skip


def full_flags(root: Path, name: str) -> list[str]:
    return lm_flags(root, name, "--epochs", "3", "--max-steps", "40")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every resumed one must equal."""
    root = tmp_path_factory.mktemp("reference")
    assert faults.run_in_child(faults.train_lm, full_flags(root, "run")) == 0
    return root / "run"


def step_losses(run: Path) -> list[tuple[int, float]]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if "loss" in r]


def assert_same_run(run: Path, reference: Path) -> None:
    """Same weights, optimizer state and progress, same best/, the same log of step losses."""
    got, expected = read_checkpoint(run / CHECKPOINT), read_checkpoint(reference / CHECKPOINT)
    assert got["progress"]["step"] == expected["progress"]["step"] == 40
    for name, tensor in expected["model"].items():
        assert torch.equal(got["model"][name], tensor), name
    assert torch.equal(
        got["optimizer"]["state"][0]["exp_avg"], expected["optimizer"]["state"][0]["exp_avg"]
    )
    verify_checksums(run / "best")
    best, best_expected = (
        load_file(run / "best/model.safetensors"),
        load_file(reference / "best/model.safetensors"),
    )
    assert best.keys() == best_expected.keys()
    assert all(torch.equal(best[k], best_expected[k]) for k in best)
    assert (run / "best/golden.json").read_text() == (reference / "best/golden.json").read_text()
    assert step_losses(run) == step_losses(reference)  # each step once, as one run logs it
    assert {p.name for p in run.iterdir()} == RUN_FILES  # no temporary file, no .best.old


@pytest.mark.parametrize("point", KILLS, ids=str)
def test_killed_inside_a_write_then_resumed_equals_an_uninterrupted_run(
    tmp_path: Path, reference: Path, point: KillPoint
) -> None:
    flags = full_flags(tmp_path, "run")
    assert faults.run_in_child(faults.train_lm, flags, kill=point) == -signal.SIGKILL
    assert faults.run_in_child(faults.train_lm, [*flags, "--resume"]) == 0
    assert_same_run(tmp_path / "run", reference)


def one_epoch(root: Path) -> Path:
    """A run stopped after its first epoch's checkpoint (in this process)."""
    train_lm.main(train_lm.get_args_parser().parse_args(lm_flags(root, "run", "--epochs", "1")))
    return root / "run"


def stopped_with(argv: list[str]) -> str:
    """The one-line message `python -m training.train_lm ARGV` ends with."""
    with pytest.raises(SystemExit) as stopped:
        train_lm.COMMAND.run(argv)
    message = str(stopped.value.code)
    assert message.startswith("error: ") and "\n" not in message
    return message


@pytest.mark.parametrize("full", [CHECKPOINT, "model.safetensors", "metrics.jsonl"])
def test_a_full_disk_stops_the_run_in_one_line_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full: str
) -> None:
    run = one_epoch(tmp_path)
    before = (run / CHECKPOINT).read_bytes()
    faults.fill_disk_at(monkeypatch, full)
    message = stopped_with(lm_flags(tmp_path, "run", "--epochs", "2", "--resume"))
    assert full in message and "No space left on device" in message
    assert (run / CHECKPOINT).read_bytes() == before
    assert read_checkpoint(run / CHECKPOINT)["progress"]["epoch"] == 1
    verify_checksums(run / "best")
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp") or ".best." in p.name]
    monkeypatch.undo()  # space again: the run carries on from the kept checkpoint
    progress = train_lm.main(
        train_lm.get_args_parser().parse_args(
            lm_flags(tmp_path, "run", "--epochs", "2", "--resume")
        )
    )
    assert progress.epoch == 2


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate_unrecorded(path: Path) -> None:
    """Truncated, with no checksum file to compare against: torch's own error, in one line."""
    (path.parent / CHECKSUMS).unlink()
    truncate(path)


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (truncate, "truncated or altered"),
        (flip_a_byte, "truncated or altered"),
        (truncate_unrecorded, "not a readable checkpoint"),
    ],
    ids=["truncated", "one-bit", "truncated-unrecorded"],
)
def test_a_damaged_checkpoint_is_refused_in_one_line_naming_it(
    tmp_path: Path, damage, said: str
) -> None:  # type: ignore[no-untyped-def]
    run = one_epoch(tmp_path)
    damage(run / CHECKPOINT)
    message = stopped_with(lm_flags(tmp_path, "run", "--epochs", "2", "--resume"))
    assert f"{run / CHECKPOINT}: " in message and said in message and "delete" in message


def test_a_checkpoint_of_other_settings_is_refused_in_one_line(tmp_path: Path) -> None:
    one_epoch(tmp_path)
    flags = lm_flags(tmp_path, "run", "--epochs", "2", "--resume", "--hidden-size", "12")
    message = stopped_with(flags)
    assert "does not fit the model these settings build" in message and "settings.json" in message


def rename_a_token(path: Path) -> None:
    """Still valid JSON, its recorded sha256 kept, one token changed: a hand edit."""
    data = json.loads(path.read_text(encoding="utf-8"))
    data["tokens"][-1] += "x"
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize("damage", [truncate, rename_a_token], ids=["truncated", "edited"])
def test_a_damaged_vocabulary_is_refused_in_one_line_naming_it(tmp_path: Path, damage) -> None:  # type: ignore[no-untyped-def]
    flags = ["--preset", "tiny", "--output-dir", str(tmp_path), "--no-progress", "--epochs", "1",
             "--metric-subset", "2"]  # fmt: skip
    train_translator.main(
        train_translator.get_args_parser().parse_args([*flags, "--max-steps", "2"])
    )
    vocabulary = tmp_path / "translator_tiny" / "vocab.source.json"
    damage(vocabulary)
    with pytest.raises(SystemExit) as stopped:
        train_translator.COMMAND.run([*flags, "--max-steps", "3", "--resume"])
    message = str(stopped.value.code)
    assert (
        message.startswith(f"error: {vocabulary}: not a whole vocabulary") and "\n" not in message
    )
    assert "delete it" in message


def test_a_damaged_feature_shard_is_refused_in_one_line_naming_it(tmp_path: Path) -> None:
    """A shard of the right size whose header was overwritten (a truncated or missing one is
    found by its size and computed again: tests/test_features.py)."""
    identity = {"fingerprint": "test", "encoder": {}}
    with ShardStore(tmp_path, identity).writing() as writer:
        writer.add([("image.png", 1, 1)], np.zeros((1, 3, 4), np.float16))
    reopened = ShardStore(tmp_path, identity)
    shard = tmp_path / reopened.shards[0].name
    shard.write_bytes(b"\0" * 8 + shard.read_bytes()[8:])
    with pytest.raises(DamagedFileError, match="unreadable feature shard") as refused:
        reopened.gather(torch.tensor([0]))
    assert str(refused.value).startswith(f"{shard}: ") and "delete it" in str(refused.value)
