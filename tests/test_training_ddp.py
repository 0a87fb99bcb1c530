"""Two CPU processes under torchrun (gloo) train like one process on the same global batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3
TEXT = 'The quick brown fox jumps over the lazy dog.\n("Quoted", she said.)\n' * 20


def losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {m["step"]: m["loss"] for m in map(json.loads, lines) if "loss" in m}


def task_flags(kind: str, out: Path) -> list[str]:
    """The tiny preset of `kind`; the LM on a small text in 4 streams (no dropout: each process
    draws its own masks)."""
    if kind != "lm":
        return []
    (out / "text.txt").write_text(TEXT)
    return ["--data", str(out / "text.txt"), "--max-train-chars", "0", "--batch-size", "4",
            "--eval-batch-size", "2", "--bptt", "20", "--hidden-size", "16",
            "--log-every", "1"]  # fmt: skip


def train(kind: str, out: Path, name: str, processes: int, steps: int, *more: str) -> None:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command = [sys.executable, *(launcher if processes > 1 else []), "-m", f"training.train_{kind}"]
    flags = ["--preset", "tiny", "--output-dir", str(out), "--name", name,
             "--max-steps", str(steps), "--no-progress", *task_flags(kind, out), *more]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [*command, *flags], cwd=ROOT, env=env, check=True, timeout=120, capture_output=True
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["translator", "lm"])
def test_two_gloo_processes_match_one_process(tmp_path: Path, kind: str) -> None:
    train(kind, tmp_path, "single", 1, STEPS)
    train(kind, tmp_path, "ddp", 2, STEPS)
    single, ddp = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert sorted(ddp) == list(range(1, STEPS + 1))
    for step in single:
        assert ddp[step] == pytest.approx(single[step], rel=1e-4)
    assert (tmp_path / "ddp" / "best" / "model.safetensors").is_file()


@pytest.mark.slow
def test_two_processes_stopped_and_resumed_match_one_uninterrupted_run(tmp_path: Path) -> None:
    """Each process's carried LM state goes into the checkpoint and comes back to its rows."""
    train("lm", tmp_path, "single", 1, 2 * STEPS)
    train("lm", tmp_path, "ddp", 2, STEPS)
    train("lm", tmp_path, "ddp", 2, 2 * STEPS, "--resume")
    single, ddp = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert sorted(ddp) == list(range(1, 2 * STEPS + 1))
    for step in single:
        assert ddp[step] == pytest.approx(single[step], rel=1e-4)
