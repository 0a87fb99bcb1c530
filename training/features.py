"""Frozen image-encoder features, computed once per image and cached on disk for training.

`FeatureCache` keeps them in `<cache_dir>/features-<fingerprint>/` (the fingerprint hashes the
encoder's config and weights: features depend on nothing else), as memory-mapped fp16 shards
listed by a manifest (`training/feature_store.py`): memory stays flat however many images there
are, and a killed run loses at most the shard in progress. An image is found by (resolved absolute
path, file size, mtime_ns), so looking up cached images reads no image bytes, and a changed file
misses and is computed again (its old row stays, unused: delete the folder to reclaim the space).
A moved image misses too. Files of the previous design, `features-<fingerprint>.safetensors`
(every image in one file, keyed by a hash of its bytes), are ignored: delete them.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from models.encoders import ImageEncoder
from training.feature_store import SHARD_BYTES, Key, ShardStore


def encoder_fingerprint(encoder: ImageEncoder) -> str:
    """A short hash of the encoder's config and weights: features depend on nothing else."""
    digest = hashlib.sha256(json.dumps(asdict(encoder.config), sort_keys=True).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def image_keys(paths: Sequence[str | Path]) -> list[Key]:
    """(resolved absolute path, size, mtime_ns) of each file: one lstat each, no bytes read."""
    cwd, folders = os.getcwd(), {}
    keys = []
    for given in paths:
        path = os.path.join(cwd, given)  # unnormalised: realpath resolves links before any ".."
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            path = os.path.realpath(path)
            info = os.stat(path)
        else:  # resolving each folder once is what keeps a lookup of 10k images in milliseconds
            folder, name = os.path.split(path)
            if folder not in folders:
                folders[folder] = os.path.realpath(folder)
            path = os.path.join(folders[folder], name)
        keys.append((path, info.st_size, info.st_mtime_ns))
    return keys


def load_images(encoder: ImageEncoder, paths: Sequence[str | Path]) -> Tensor:
    """Image files -> the preprocessed batch (B, 3, S, S) the encoder expects."""
    tensors = []
    for path in paths:
        with Image.open(path) as image:
            tensors.append(encoder.preprocess(image))
    return torch.stack(tensors)


@torch.inference_mode()
def encode_batches(
    encoder: ImageEncoder,
    paths: Sequence[str | Path],
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[Tensor, Tensor]]:
    """Encode image files a batch at a time -> pooled (B, D) and grid (B, S, D), fp16 on the CPU.

    Images are decoded in turn with the encoder: decoding the next batch on a helper thread ran
    between 10% slower and 8% faster on 2 CPU cores, which the encoder keeps busy, so it is not
    done (bench/feature_cache.py, bench/README.md)."""
    encoder.eval()
    for start in range(0, len(paths), batch_size):
        images = load_images(encoder, paths[start : start + batch_size]).to(device)
        pooled, grid = encoder(images)  # (B, D), (B, S, D)
        yield pooled.half().cpu(), grid.half().cpu()


def compute_features(
    encoder: ImageEncoder,
    paths: Sequence[str | Path],
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[Tensor, Tensor]:
    """Encode image files -> pooled (N, D) and grid (N, S, D), fp16 on the CPU, all in memory."""
    total = -(-len(paths) // batch_size)
    batches = encode_batches(encoder, paths, batch_size, device)
    found = list(tqdm(batches, "image features", total, unit="batch", disable=not progress))
    return torch.cat([p for p, _ in found]), torch.cat([g for _, g in found])


class FeatureCache:
    """Features of image files for one encoder, in `<directory>/features-<fingerprint>/`."""

    def __init__(self, directory: str | Path, encoder: ImageEncoder) -> None:
        self.encoder = encoder
        fingerprint = encoder_fingerprint(encoder)
        identity = {"fingerprint": fingerprint, "encoder": asdict(encoder.config)}
        self.store = ShardStore(Path(directory) / f"features-{fingerprint}", identity)

    def __len__(self) -> int:
        return len(self.store)

    def ensure(
        self,
        paths: Sequence[str | Path],
        batch_size: int = 32,
        device: torch.device | str = "cpu",
        shard_bytes: int = SHARD_BYTES,
    ) -> None:
        """Compute and store the features of every image not cached yet, a shard at a time: a
        shard holds at most `shard_bytes` (a multiple of `batch_size` rows), and memory one shard."""
        if not self._missing(paths):
            return
        with self.store.writing(shard_bytes, multiple=batch_size) as writer:
            missing = self._missing(paths)  # another process may have cached some meanwhile
            keys = iter(missing)
            batches = encode_batches(self.encoder, list(missing.values()), batch_size, device)
            with tqdm(total=len(missing), desc="image features", unit="image") as bar:
                for pooled, grid in batches:
                    rows = torch.cat([pooled.unsqueeze(1), grid], dim=1).numpy()  # (B, 1 + S, D)
                    writer.add([next(keys) for _ in rows], rows)
                    bar.update(len(rows))

    def _missing(self, paths: Sequence[str | Path]) -> dict[Key, str | Path]:
        missing: dict[Key, str | Path] = {}
        for path, key in zip(paths, image_keys(paths), strict=True):
            if key not in self.store.index:
                missing.setdefault(key, path)
        return missing

    def rows(self, paths: Sequence[str | Path]) -> Tensor:
        """Row indices (N,) of `paths` for `features`; every path must be cached (see `ensure`)."""
        rows = []
        for path, key in zip(paths, image_keys(paths), strict=True):
            if key not in self.store.index:
                raise LookupError(
                    f"{path}: not in the feature cache {self.store.folder}, or changed since it "
                    "was cached: call ensure() with it first"
                )
            rows.append(self.store.index[key])
        return torch.tensor(rows, dtype=torch.long)

    def features(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """rows (B,) -> pooled (B, D) and grid (B, S, D): fp16 CPU tensors read from the shards."""
        pooled, grid = self.store.gather(rows, with_grid=True)
        assert grid is not None
        return pooled, grid

    def pooled(self, rows: Tensor) -> Tensor:
        """rows (B,) -> pooled (B, D) fp16 on the CPU, without reading the grids."""
        return self.store.gather(rows, with_grid=False)[0]
