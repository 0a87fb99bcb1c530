"""Altered copies of training images, written once as files, so that a frozen encoder's feature
cache holds them like any other image and training on them costs no encoder pass per epoch.

Each copy is the image at the encoder's input size, redrawn the way another emoji set, another
artist or another camera might draw it: moved, scaled and turned a little (cut-outs only, so a
photo's frame is never filled with invented pixels), set on a plain background that is not always
white, with its contrast, brightness and saturation changed, and one of: blur, sharpening,
posterising, thicker or thinner dark lines. Hue is left alone (a red and an orange heart are
different emoji) and nothing is mirrored (nor is an arrow). Then JPEG, quality 90.

A copy's file name hashes its source file's key (resolved path, size, mtime), its index, the seed,
the input size and `RECIPE`: the same settings find the same files, a changed source or recipe
gets new ones. Files are written under a temporary name and renamed, so a killed run leaves no
partial copy; the folder is derived data, safe to delete.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2
from tqdm import tqdm

from models.images import resize_center_crop, to_rgb
from training.data.loaders import CaptionExample
from training.features import image_keys

RECIPE = "style-shift/1"  # change it with the transforms below: copies made before are then unused
JPEG_QUALITY = 90


def _filter(kind: type[ImageFilter.RankFilter]) -> Callable[[Image.Image], Image.Image]:
    return lambda image: image.filter(kind(3))


# one of these per copy; MinFilter spreads dark pixels (thicker outlines), MaxFilter thins them
_TEXTURE = v2.RandomChoice(
    [
        v2.Identity(),
        v2.GaussianBlur(5, sigma=(0.4, 1.6)),
        v2.RandomAdjustSharpness(3.0, p=1.0),
        v2.RandomPosterize(bits=3, p=1.0),
        v2.Lambda(_filter(ImageFilter.MinFilter), Image.Image),
        v2.Lambda(_filter(ImageFilter.MaxFilter), Image.Image),
    ]
)
_COLOUR = v2.RandomApply([v2.ColorJitter(brightness=0.2, contrast=0.25, saturation=0.3)], p=0.8)
# on a transparent cut-out only: the corners it uncovers are transparent, then background
_PLACE = v2.RandomApply(
    [v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.7, 1.05))], p=0.8
)


def style_shift(image: Image.Image, size: int) -> Image.Image:
    """One altered copy of `image` (any mode), RGB at size x size; draws from torch's global RNG."""
    image = resize_center_crop(image.convert("RGBA") if _has_alpha(image) else image, size)
    if image.mode == "RGBA":
        image = _on_background(_PLACE(image))
    image = to_rgb(image)
    return _TEXTURE(_COLOUR(image))


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "La", "PA", "RGBa") or "transparency" in image.info


def _on_background(image: Image.Image) -> Image.Image:
    """An RGBA image over white (half the time) or a random light or, rarely, dark colour."""
    draw = torch.rand(()).item()
    if draw < 0.5:
        colour = (255, 255, 255)
    else:
        low, high = (150, 256) if draw < 0.9 else (0, 90)
        colour = tuple(torch.randint(low, high, (3,)).tolist())
    background = Image.new("RGB", image.size, colour)
    background.paste(image, mask=image.getchannel("A"))
    return background


def copy_path(folder: Path, key: tuple[str, int, int], index: int, seed: int, size: int) -> Path:
    """Where copy `index` of the image with feature-cache `key` goes."""
    name = f"{RECIPE}|{key}|{index}|{seed}|{size}".encode()
    return folder / f"{hashlib.sha256(name).hexdigest()[:24]}.jpg"


def write_copy(source: Path, target: Path, size: int) -> None:
    """Make one copy of `source` at `target` (temporary file, then rename), seeded by its name,
    which already hashes source, index, seed and size."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(target.stem[:15], 16))
        with Image.open(source) as image:
            copy = style_shift(image, size)
    temporary = target.with_suffix(f".{os.getpid()}.tmp")
    copy.save(temporary, format="JPEG", quality=JPEG_QUALITY)
    os.replace(temporary, target)


def augmented_examples(
    examples: Sequence[CaptionExample],
    copies: int,
    folder: Path,
    seed: int,
    size: int,
    workers: int = 2,
) -> list[CaptionExample]:
    """`copies` altered copies of every example's image, with its captions, made where missing
    by `workers` processes (each seeds its own global RNG per copy, which threads could not; 0:
    only their examples, for a process that waits while another makes them)."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = image_keys([e.image_path for e in examples])
    planned = [
        (example, copy_path(folder, key, index, seed, size))
        for example, key in zip(examples, keys, strict=True)
        for index in range(copies)
    ]
    missing = [(e.image_path, p) for e, p in planned if not p.is_file() or not p.stat().st_size]
    if missing and workers > 0:
        sources, targets = zip(*missing, strict=True)
        with ProcessPoolExecutor(max(1, workers)) as pool:
            jobs = pool.map(write_copy, sources, targets, [size] * len(missing), chunksize=64)
            for _ in tqdm(jobs, "augmented copies", len(missing), unit="image"):
                pass
    return [
        replace(example, image_path=path, image_id=f"{example.image_id}#aug{i % copies}")
        for i, (example, path) in enumerate(planned)
    ]
