"""Image decoding for /caption: Pillow (the service's path) against torchvision.io.decode_image.

Usage: python -m bench.image_decode [--count 100] [--repeats 5] [--size 128] [--threads 1]
       [--out bench/results/image_decode.json]
One 640x480 photo (tests/fixtures/images/photo_house.jpg) encoded as JPEG, PNG, WebP, GIF and BMP.
For each format, images/s for decoding alone (bytes -> RGB pixels) and for decoding plus the
encoder's preprocessing (-> the normalised (3, S, S) tensor) three ways: as the service does today
(Pillow decodes and resizes), Pillow decoding with the resize done by torch on the uint8 tensor,
and torchvision decoding and resizing; with how far the last two differ from today's tensor.
Sides are alternated within each repeat; medians are reported.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

from bench import common
from models.images import TO_TENSOR, image_to_tensor, resize_center_crop, to_rgb

PHOTO = common.ROOT / "tests" / "fixtures" / "images" / "photo_house.jpg"  # 640x480 JPEG
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")


def get_args_parser() -> argparse.ArgumentParser:
    parser = common.argument_parser(__doc__)
    parser.add_argument(
        "--count", type=int, default=100, help="decodes per timed run (default: 100)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell (default: 5)")
    parser.add_argument(
        "--size", type=int, default=128, help="encoder input size in pixels (default: 128)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    common.add_out_argument(parser, "image_decode.json")
    return parser


def encoded_photo() -> dict[str, bytes]:
    """The photo in every format the service accepts: the JPEG as shipped, the rest by Pillow."""
    encoded = {"JPEG": PHOTO.read_bytes()}
    with Image.open(PHOTO) as photo:
        rgb = photo.convert("RGB")
    for name in FORMATS[1:]:
        buffer = io.BytesIO()
        rgb.save(buffer, name)  # GIF: Pillow quantises to a 256-colour palette
        encoded[name] = buffer.getvalue()
    return encoded


def pillow_decode(data: bytes) -> Image.Image:
    """What service/images.py does: open (the header), first frame, load the pixels."""
    image = Image.open(io.BytesIO(data))
    image.seek(0)
    image.load()
    return image


def torchvision_decode(data: bytes) -> Tensor:
    """bytes -> uint8 (3, H, W) RGB, EXIF orientation applied."""
    buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return decode_image(buffer, mode=ImageReadMode.RGB, apply_exif_orientation=True)


def pillow_tensor(data: bytes, size: int) -> Tensor:
    """Decode and preprocess as the service does today."""
    return image_to_tensor(pillow_decode(data), size)


def pillow_tensor_resize(data: bytes, size: int) -> Tensor:
    """Decode with Pillow, then resize the uint8 tensor with torchvision instead of Pillow."""
    pixels = F.pil_to_tensor(to_rgb(pillow_decode(data)))  # uint8 (3, H, W)
    return TO_TENSOR(resize_center_crop(pixels, size)).contiguous()


def torchvision_tensor(data: bytes, size: int) -> Tensor:
    """Decode with torchvision, then the same geometry and normalisation on the tensor."""
    return TO_TENSOR(resize_center_crop(torchvision_decode(data), size)).contiguous()


def images_per_second(work: Callable[[], object], count: int) -> float:
    """Run `work` `count` times; calls per second."""
    start = time.perf_counter()
    for _ in range(count):
        work()
    return count / (time.perf_counter() - start)


def measure_format(data: bytes, args: argparse.Namespace) -> dict[str, Any]:
    """Medians of images/s for both libraries, decode only and decode + preprocess."""
    result: dict[str, Any] = {}
    sides: dict[str, Callable[[], object]] = {
        "pillow_decode": lambda: to_rgb(pillow_decode(data)),  # RGB, as torchvision's
        "pillow_tensor": lambda: pillow_tensor(data, args.size),
        "pillow_tensor_resize": lambda: pillow_tensor_resize(data, args.size),
    }
    try:
        torchvision_decode(data)
        sides["torchvision_decode"] = lambda: torchvision_decode(data)
        sides["torchvision_tensor"] = lambda: torchvision_tensor(data, args.size)
    except RuntimeError as error:  # e.g. BMP: not a format decode_image reads
        result["torchvision_error"] = str(error).strip().splitlines()[-1][:200]
    runs: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, work in sides.items():
            runs[name].append(images_per_second(work, args.count))
    result.update({f"{k}_per_s": round(statistics.median(v), 1) for k, v in runs.items()})
    today = pillow_tensor(data, args.size)
    others = {"pillow_tensor_resize": pillow_tensor_resize}
    if "torchvision_tensor" in sides:
        others["torchvision_tensor"] = torchvision_tensor
    for name, preprocess in others.items():  # against today's tensor
        difference = (preprocess(data, args.size) - today).abs()
        result[f"{name}_max_abs_difference"] = round(difference.max().item(), 4)
        result[f"{name}_mean_abs_difference"] = round(difference.mean().item(), 6)
    return result


def table_row(name: str, result: dict[str, Any]) -> list[object]:
    """One format's line: images/s of each path, and the largest difference from today's tensor."""

    def rate(side: str) -> object:
        return result.get(f"{side}_per_s", "unsupported")

    def with_difference(side: str) -> str:
        return f"{rate(side)} ({result.get(f'{side}_max_abs_difference', '-')})"

    return [
        name,
        f"{result['bytes']:,}",
        rate("pillow_decode"),
        rate("torchvision_decode"),
        rate("pillow_tensor"),
        with_difference("pillow_tensor_resize"),
        with_difference("torchvision_tensor"),
    ]


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every format, print a table, write the JSON report."""
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "environment": common.environment(threads=args.threads, size=args.size),
        "photo": str(PHOTO.relative_to(common.ROOT)),
        "formats": {},
    }
    for name, data in encoded_photo().items():
        report["formats"][name] = {"bytes": len(data), **measure_format(data, args)}
    header = ["format", "bytes", "Pillow decode/s", "torchvision decode/s"]
    header += [f"Pillow -> {args.size} px tensor/s (today)", "Pillow + torch resize (max diff)"]
    header += ["torchvision -> tensor (max diff)"]
    common.print_table(header, [table_row(n, r) for n, r in report["formats"].items()])
    common.write_report(report, args.out)
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
