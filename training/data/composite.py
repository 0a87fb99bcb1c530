"""Photo-like composites: a cut-out or emoji pasted onto a real photo, augmented with torchvision v2."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import v2

from models.atomic import write_bytes

COMPOSITE_SIZE = 224
BACKGROUND_MAX_SIDE = 800  # enough detail for a 224 px crop of a fifth of the photo
OBJECT_RENDER_SIZE = 192  # SVG objects are rendered this large, then scaled down when pasted


@dataclass(frozen=True)
class Background:
    """A photographic background and where it came from (recorded in the manifest)."""

    name: str
    path: Path
    package: str
    version: str
    licence: str

    def record(self) -> dict[str, str]:
        """Manifest entry: name, package, version, licence and file inside the package."""
        return {
            "name": self.name,
            "package": self.package,
            "version": self.version,
            "licence": self.licence,
            "file": self.path.name,
        }


@dataclass(frozen=True)
class CompositeJob:
    """One composite to write: the object (a PNG file, or an SVG file or document) and a seed."""

    out: Path
    seed: int
    background: int
    image: Path | None = None
    svg: str | None = None
    mirror: bool = True


_BACKGROUNDS: list[Image.Image] = []


def load_backgrounds(paths: list[Path]) -> None:
    """Decode every background once per process, shrunk to BACKGROUND_MAX_SIDE, as RGB."""
    torch.set_num_threads(1)  # two processes share two cores
    _BACKGROUNDS.clear()
    for path in paths:
        with Image.open(path) as image:
            image.draft("RGB", (BACKGROUND_MAX_SIDE, BACKGROUND_MAX_SIDE))
            rgb = image.convert("RGB")
        rgb.thumbnail((BACKGROUND_MAX_SIDE, BACKGROUND_MAX_SIDE), Image.Resampling.LANCZOS)
        _BACKGROUNDS.append(rgb)


def load_object(job: CompositeJob) -> Image.Image:
    """The object of a job as RGBA, cropped to its visible pixels."""
    if job.svg is not None or (job.image is not None and job.image.suffix == ".svg"):
        import cairosvg

        source = {"bytestring": job.svg.encode()} if job.svg else {"url": str(job.image)}
        png = cairosvg.svg2png(**source, output_width=OBJECT_RENDER_SIZE)
        image = Image.open(io.BytesIO(png)).convert("RGBA")
    else:
        assert job.image is not None
        image = Image.open(job.image).convert("RGBA")
    box = image.getchannel("A").getbbox()
    return image.crop(box) if box else image


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def place_object(obj: Image.Image, canvas: Image.Image, mirror: bool) -> None:
    """Paste obj onto canvas in place: flipped (if allowed), rotated a little, scaled, anywhere inside."""
    if mirror and float(torch.rand(())) < 0.5:
        obj = obj.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    obj = obj.rotate(_uniform(-12, 12), resample=Image.Resampling.BICUBIC, expand=True)
    scale = _uniform(0.35, 0.85) * canvas.width / max(obj.size)
    size = (max(1, round(obj.width * scale)), max(1, round(obj.height * scale)))
    obj = obj.resize(size, Image.Resampling.LANCZOS)
    left = int(_uniform(0, canvas.width - obj.width + 1))
    top = int(_uniform(0, canvas.height - obj.height + 1))
    canvas.paste(obj, (left, top), obj)


_BACKGROUND_VIEW = v2.Compose(
    [
        v2.RandomResizedCrop(COMPOSITE_SIZE, scale=(0.05, 0.6), ratio=(3 / 4, 4 / 3)),
        v2.RandomHorizontalFlip(),
    ]
)
_PHOTO_LOOK = v2.Compose(
    [
        v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03),
        v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.3, 1.5))], p=0.4),
    ]
)


def compose(obj: Image.Image, background: Image.Image, seed: int, mirror: bool) -> bytes:
    """A COMPOSITE_SIZE square JPEG of obj on a random view of background; same seed, same bytes."""
    torch.manual_seed(seed)
    canvas = _BACKGROUND_VIEW(background).convert("RGB")
    place_object(obj, canvas, mirror)
    photo = _PHOTO_LOOK(canvas)
    quality = int(torch.randint(45, 96, ()))  # the JPEG re-encoding is part of the augmentation
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_composite(job: CompositeJob) -> bool:
    """Write one job's JPEG atomically (one a resumed build already has is kept); False
    (nothing written) if its object cannot be read or rendered."""
    if job.out.is_file():
        return True
    try:
        obj = load_object(job)
    except Exception:  # one broken source image loses one composite, not the run
        return False
    write_bytes(job.out, compose(obj, _BACKGROUNDS[job.background], job.seed, job.mirror))
    return True


def held_out_backgrounds(names: list[str], fraction: float = 1 / 3) -> set[str]:
    """The backgrounds kept for val/test composites: the lowest-hashing third, at least one."""
    from training.data.common import hash_fraction

    if len(names) < 2:
        return set()
    ranked = sorted(names, key=lambda n: hash_fraction(f"background:{n}"))
    return set(ranked[: max(1, round(len(names) * fraction))])
