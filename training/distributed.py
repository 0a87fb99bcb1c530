"""Process-group setup for torchrun (gloo on CPU, nccl on CUDA) and the two collectives we need."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Distributed:
    """This process's place among the data-parallel processes (rank 0 of 1 when alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` -> this process's CUDA device when there is one, else the CPU."""
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


def setup(device_name: str) -> tuple[Distributed, torch.device]:
    """Join the torchrun process group when WORLD_SIZE > 1; return our rank and device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(), pick_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world_size, local_rank), device


def teardown(info: Distributed) -> None:
    """Leave the process group (a no-op for a single process)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def sum_over_processes(values: list[float], info: Distributed, device: torch.device) -> list[float]:
    """Element-wise sum of `values` over all processes (unchanged when alone)."""
    if not info.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather_shards(local: Tensor, info: Distributed) -> Tensor:
    """Every process's rows (B_r, ...) back in global order (B, ...): the inverse of `shard`.

    Process r holds global rows r, r + N, r + 2N, ...; the result is the same on every process.
    """
    if not info.enabled:
        return local
    (total,) = sum_over_processes([local.size(0)], info, local.device)
    full = local.new_zeros((int(total), *local.shape[1:]))
    full[info.rank :: info.world_size] = local
    dist.all_reduce(full)  # each row is one process's value plus zeros: exact
    return full
