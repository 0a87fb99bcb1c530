"""Image decoding for /caption: Pillow (the service's path) against torchvision.io.decode_image.

Usage: python -m bench.image_decode [--count 100] [--repeats 5] [--size 128] [--threads 1]
       [--device cpu] [--batch 32] [--sides 640 1920] [--batched-only]
       [--out bench/results/image_decode.json]
One 640x480 photo (tests/fixtures/images/photo_house.jpg) encoded as JPEG, PNG, WebP, GIF and BMP.
For each format, images/s for decoding alone (bytes -> RGB pixels) and for decoding plus the
encoder's preprocessing (-> the normalised (3, S, S) tensor) three ways: as the service does today
(Pillow decodes and resizes), Pillow decoding with the resize done by torch on the uint8 tensor,
and torchvision decoding and resizing; with how far the last two differ from today's tensor.

Then the two ways the service can turn a batch of `--batch` JPEG uploads into the encoder's
(B, 3, S, S) input on `--device`, side by side: Pillow on the CPU (IMAGE_DECODE=cpu: each upload
decoded and preprocessed, then stacked and moved to the device, as `run_batch` does) and the
device path (IMAGE_DECODE=device, auto on CUDA: each header checked as the request thread does,
then one batched `decode_jpeg` on the device, nvjpeg on CUDA, and the crop, EXIF orientation,
resize and normalisation there). The photo is resized to each of `--sides` (its long side) and
saved at JPEG quality 90. The Pillow side runs on one thread; the service runs one such decode
per core at once. Sides are alternated within each repeat; medians are reported.
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
from models.encoders import ImageEncoder, ImageEncoderConfig
from models.images import TO_TENSOR, image_to_tensor, resize_center_crop, to_rgb
from models.search import SearchOptions
from service import images as service_images  # torchvision's decode_image is used too
from service.tasks.caption import CaptionJob, encoder_inputs, preprocessed

PHOTO = common.ROOT / "tests" / "fixtures" / "images" / "photo_house.jpg"  # 640x480 JPEG
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
LIMITS = service_images.ImageLimits(25_000_000, 4.0)  # the service's defaults


def get_args_parser() -> argparse.ArgumentParser:
    parser = common.argument_parser(__doc__)
    parser.add_argument(
        "--count",
        type=int,
        default=100,
        help="decodes per timed run, in whole batches for the batched comparison (default: 100)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell (default: 5)")
    parser.add_argument(
        "--size", type=int, default=128, help="encoder input size in pixels (default: 128)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument(
        "--device", default="cpu", help="device of the batched JPEG comparison (default: cpu)"
    )
    parser.add_argument(
        "--batch", type=int, default=32, help="JPEG uploads per batch (default: 32)"
    )
    parser.add_argument(
        "--sides",
        type=int,
        nargs="+",
        default=[640, 1920],
        help="long sides of the batched comparison's photos, px (default: 640 1920)",
    )
    parser.add_argument(
        "--batched-only",
        action="store_true",
        help="skip the per-format table: only the batched comparison (default: off)",
    )
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


# -- a batch of JPEG uploads: Pillow on the CPU against the device ----------------------------


def resized_photo(side: int) -> bytes:
    """The photo with its long side resized to `side` px, as a quality-90 JPEG."""
    with Image.open(PHOTO) as photo:
        rgb = photo.convert("RGB")
    scale = side / max(rgb.size)
    size = (round(rgb.width * scale), round(rgb.height * scale))
    buffer = io.BytesIO()
    rgb.resize(size, Image.Resampling.LANCZOS).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def pillow_batch(uploads: list[bytes], encoder: ImageEncoder, device: torch.device) -> Tensor:
    """IMAGE_DECODE=cpu: each upload through the request thread's `decode_image` and
    `preprocessed`, then stacked and moved to the device as `run_batch` does -> (B, 3, S, S)."""
    tensors = [
        preprocessed(encoder, service_images.decode_image(data, LIMITS), "image")
        for data in uploads
    ]
    batch = torch.stack([tensor.to(device) for tensor in tensors])
    common.synchronize(device)
    return batch


def device_batch(uploads: list[bytes], encoder: ImageEncoder, device: torch.device) -> Tensor:
    """IMAGE_DECODE=device: each header checked by the request thread's `decode_or_defer`, then
    the batch worker's `encoder_inputs` (one batched decode on the device, crop, orientation,
    resize and normalisation there) -> (B, 3, S, S)."""
    jobs = [
        CaptionJob(service_images.decode_or_defer(data, LIMITS), SearchOptions())
        for data in uploads
    ]
    tensors = [
        found for found in encoder_inputs(encoder, jobs, device) if isinstance(found, Tensor)
    ]
    assert len(tensors) == len(uploads), "every upload must decode"
    batch = torch.stack(tensors)
    common.synchronize(device)
    return batch


BATCH_PATHS: dict[str, Callable[[list[bytes], ImageEncoder, torch.device], Tensor]] = {
    "pillow_cpu": pillow_batch,
    "device": device_batch,
}


def measure_batched(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Per photo size: medians of images/s of both paths, their ratio and their difference."""
    batches = max(1, args.count // args.batch)  # per timed run
    # only its input size and preprocessing are used: no weights, no forward
    encoder = ImageEncoder(
        ImageEncoderConfig(backbone="small-cnn", image_size=args.size), pretrained=False
    )
    found: dict[str, Any] = {}
    for side in args.sides:
        uploads = [resized_photo(side)] * args.batch
        with torch.inference_mode():
            first = {name: path(uploads, encoder, device) for name, path in BATCH_PATHS.items()}
            runs: dict[str, list[float]] = {name: [] for name in BATCH_PATHS}
            for _ in range(args.repeats):
                for name, path in BATCH_PATHS.items():
                    started = time.perf_counter()
                    for _ in range(batches):
                        path(uploads, encoder, device)
                    runs[name].append(batches * args.batch / (time.perf_counter() - started))
        rates = {f"{name}_per_s": round(statistics.median(v), 1) for name, v in runs.items()}
        difference = (first["device"] - first["pillow_cpu"]).abs()
        found[str(side)] = {
            "bytes": len(uploads[0]),
            **rates,
            "device_over_pillow": round(rates["device_per_s"] / rates["pillow_cpu_per_s"], 2),
            "max_abs_difference": round(difference.max().item(), 4),
            "mean_abs_difference": round(difference.mean().item(), 6),
        }
    return found


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every format and the batched JPEG paths, print tables, write the JSON report."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    report: dict[str, Any] = {
        "environment": common.environment(threads=args.threads, size=args.size),
        "photo": str(PHOTO.relative_to(common.ROOT)),
        "formats": {},
    }
    if not args.batched_only:
        for name, data in encoded_photo().items():
            report["formats"][name] = {"bytes": len(data), **measure_format(data, args)}
        header = ["format", "bytes", "Pillow decode/s", "torchvision decode/s"]
        header += [f"Pillow -> {args.size} px tensor/s (today)", "Pillow + torch resize (max diff)"]
        header += ["torchvision -> tensor (max diff)"]
        common.print_table(header, [table_row(n, r) for n, r in report["formats"].items()])
    report["batched"] = {
        "device": str(device),
        "batch": args.batch,
        "photos": measure_batched(args, device),
    }
    header = ["photo (long side)", "bytes", "Pillow on CPU, images/s", f"{device}, images/s"]
    header += ["ratio", "max diff (mean)"]
    rows = [
        [
            f"{side} px",
            f"{r['bytes']:,}",
            r["pillow_cpu_per_s"],
            r["device_per_s"],
            f"{r['device_over_pillow']}x",
            f"{r['max_abs_difference']} ({r['mean_abs_difference']})",
        ]
        for side, r in report["batched"]["photos"].items()
    ]
    print(f"\nA batch of {args.batch} JPEG uploads -> the encoder's {args.size} px input:")
    common.print_table(header, rows)
    common.write_report(report, args.out)
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
