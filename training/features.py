"""Frozen image-encoder features, computed once per image and cached in a safetensors file.

The cache is keyed by the sha256 of each image file's bytes (so a moved or re-extracted image
still hits and a changed one misses) in a file named after the encoder's config and weights."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from models.encoders import ImageEncoder


def encoder_fingerprint(encoder: ImageEncoder) -> str:
    """A short hash of the encoder's config and weights: features depend on nothing else."""
    digest = hashlib.sha256(json.dumps(asdict(encoder.config), sort_keys=True).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def load_images(encoder: ImageEncoder, paths: Sequence[str | Path]) -> Tensor:
    """Image files -> the preprocessed batch (B, 3, S, S) the encoder expects."""
    tensors = []
    for path in paths:
        with Image.open(path) as image:
            tensors.append(encoder.preprocess(image))
    return torch.stack(tensors)


@torch.inference_mode()
def compute_features(
    encoder: ImageEncoder,
    paths: Sequence[str | Path],
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[Tensor, Tensor]:
    """Encode image files -> pooled (N, D) and grid (N, S, D), stored as fp16 on the CPU."""
    encoder.eval()
    pooled, grid = [], []
    starts = range(0, len(paths), batch_size)
    for start in tqdm(starts, desc="image features", unit="batch", disable=not progress):
        images = load_images(encoder, paths[start : start + batch_size]).to(device)
        p, g = encoder(images)  # (B, D), (B, S, D)
        pooled.append(p.half().cpu())
        grid.append(g.half().cpu())
    return torch.cat(pooled), torch.cat(grid)


class FeatureCache:
    """Features of image files for one encoder, kept in `<dir>/features-<fingerprint>.safetensors`."""

    def __init__(self, directory: str | Path, encoder: ImageEncoder) -> None:
        self.encoder = encoder
        self.path = Path(directory) / f"features-{encoder_fingerprint(encoder)}.safetensors"
        self.index: dict[str, int] = {}
        # fp16 throughout: an fp32 start would promote every appended chunk (twice the size)
        self.pooled = torch.empty(0, dtype=torch.float16)
        self.grid = torch.empty(0, dtype=torch.float16)
        if self.path.is_file():
            tensors = load_file(str(self.path))
            with safe_open(str(self.path), "pt") as stream:  # the keys are header metadata
                keys = json.loads(stream.metadata()["keys"])
            self.index = {k: i for i, k in enumerate(keys)}
            self.pooled, self.grid = tensors["pooled"].half(), tensors["grid"].half()

    def ensure(
        self,
        paths: Sequence[str | Path],
        batch_size: int = 32,
        device: torch.device | str = "cpu",
        save_every: int = 4096,
    ) -> None:
        """Compute and store the features of every image not cached yet (saved every few thousand)."""
        missing = {}
        for path in paths:
            key = _key(path)
            if key not in self.index:
                missing.setdefault(key, path)
        keys = list(missing)
        for start in range(0, len(keys), save_every):
            chunk = keys[start : start + save_every]
            self._add(chunk, [missing[k] for k in chunk], batch_size, device)

    def _add(
        self, keys: list[str], paths: list[str | Path], batch_size: int, device: torch.device | str
    ) -> None:
        pooled, grid = compute_features(self.encoder, paths, batch_size, device)
        offset = len(self.index)
        self.index.update({k: offset + i for i, k in enumerate(keys)})
        self.pooled = torch.cat([self.pooled.view(-1, pooled.size(1)), pooled])
        self.grid = torch.cat([self.grid.view(-1, *grid.shape[1:]), grid])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {
            "keys": json.dumps(list(self.index)),
            "encoder": str(asdict(self.encoder.config)),
        }
        tmp = self.path.with_suffix(".tmp")
        save_file({"pooled": self.pooled, "grid": self.grid}, str(tmp), metadata=metadata)
        tmp.replace(self.path)

    def rows(self, paths: Sequence[str | Path]) -> Tensor:
        """Row indices (N,) of `paths` in `pooled` / `grid`; every path must be cached."""
        return torch.tensor([self.index[_key(p)] for p in paths], dtype=torch.long)


def _key(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
