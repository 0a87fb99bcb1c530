"""Length-bucketed batches of example indices, and their split over data-parallel processes."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def bucket_batches(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, pool: int = 50
) -> list[list[int]]:
    """Shuffle, sort by length within pools of `pool` batches, cut into batches, shuffle those.

    Examples in a batch then have similar lengths (little padding) while the order of batches
    stays random. The same generator state always gives the same batches.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    span = batch_size * pool
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    permutation = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in permutation]


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Deterministic batches for evaluation: indices sorted by length, then cut."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def example_batches(
    lengths: Sequence[int], split: str, epoch: int, batch_size: int, seed: int
) -> list[list[int]]:
    """One pass over a split of examples: bucketed and shuffled anew each epoch when training,
    sorted by length otherwise. Depends only on its arguments (the same on every process)."""
    if split != "train":
        return sorted_batches(lengths, batch_size)
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return bucket_batches(lengths, batch_size, generator)


def shard(batch: Sequence[int], rank: int, world_size: int) -> list[int]:
    """This process's part of a global batch (every world_size-th example, from `rank`).

    Together the shards are the global batch, so N processes see what one process would.
    """
    return list(batch[rank::world_size])
