"""Two torchrun "nodes" of one CPU process each (c10d rendezvous, gloo) train like one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.server import free_port
from tests.test_training_ddp import STEPS, losses, train

ROOT = Path(__file__).resolve().parents[1]


def launch_node(node_rank: int, port: int, out: Path, name: str) -> subprocess.Popen:
    """One node's torchrun, as a PyTorchJob pod runs it (deploy/kubernetes/training/); the c10d
    rendezvous assigns ranks (torchrun ignores --node-rank unless the rendezvous is static)."""
    launcher = ["-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                "--rdzv-id", "seqserve-test"]  # fmt: skip
    flags = ["--preset", "tiny", "--output-dir", str(out), "--name", name,
             "--max-steps", str(STEPS), "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, *launcher, "-m", "training.train_translator", *flags]
    with (out / f"node{node_rank}.log").open("wb") as log:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_two_c10d_nodes_match_one_process(tmp_path: Path) -> None:
    train("translator", tmp_path, "single", 1, STEPS)
    port = free_port()
    nodes = [launch_node(rank, port, tmp_path, "multinode") for rank in (0, 1)]
    try:
        codes = [node.wait(timeout=180) for node in nodes]
    finally:
        for node in nodes:  # one node failing leaves the other waiting at the rendezvous
            if node.poll() is None:
                node.kill()
                node.wait()
    for rank, code in enumerate(codes):
        log = (tmp_path / f"node{rank}.log").read_text(errors="replace")
        assert code == 0, f"node {rank} exited with {code}:\n{log[-3000:]}"
    single, multinode = losses(tmp_path / "single"), losses(tmp_path / "multinode")
    assert sorted(multinode) == list(range(1, STEPS + 1))
    for step in single:
        assert multinode[step] == pytest.approx(single[step], rel=1e-4)
    assert (tmp_path / "multinode" / "best" / "model.safetensors").is_file()
