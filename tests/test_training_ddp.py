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


def losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {m["step"]: m["loss"] for m in map(json.loads, lines) if "loss" in m}


def train(out: Path, name: str, processes: int) -> None:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command = [
        sys.executable,
        *(launcher if processes > 1 else []),
        "-m",
        "training.train_translator",
    ]
    flags = [
        "--preset",
        "tiny",
        "--output-dir",
        str(out),
        "--name",
        name,
        "--max-steps",
        str(STEPS),
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [*command, *flags], cwd=ROOT, env=env, check=True, timeout=120, capture_output=True
    )


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    train(tmp_path, "single", 1)
    train(tmp_path, "ddp", 2)
    single, ddp = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert sorted(ddp) == list(range(1, STEPS + 1))
    for step in single:
        assert ddp[step] == pytest.approx(single[step], rel=1e-4)
    assert (tmp_path / "ddp" / "best" / "model.safetensors").is_file()
