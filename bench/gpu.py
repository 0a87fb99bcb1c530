"""Benchmarks 1 and 2 (serving, decoding) on a CUDA device under bf16 autocast, same JSON as on CPU,
and JPEG uploads decoded by nvjpeg in batches against Pillow on the CPU (bench/image_decode.py).

Usage: python -m bench.gpu [--device cuda] [--autocast bf16] [--models pretrained]
       [--out-prefix bench/results/gpu]
       python -m bench.gpu --device cpu --models tiny --quick   # exercises the script without a GPU

Writes <prefix>_serving.json (+ .png), <prefix>_decode.json and <prefix>_image_decode.json. On
CUDA the service runs its models under bf16 autocast by itself (falling back to fp32 per model if
bf16 changes its golden output); `--autocast` sets the in-process limit, the plain FastAPI server
and the decoding benchmark. The service on CUDA decodes JPEG uploads on the GPU (IMAGE_DECODE=auto).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from bench import common, decode, image_decode, serving


def get_args_parser() -> argparse.ArgumentParser:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--device", default="cuda", help="torch device (default: cuda)")
    parser.add_argument(
        "--autocast", default="bf16", choices=("none", "bf16", "fp16"), help="(default: bf16)"
    )
    common.add_models_argument(parser)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short cells, concurrency 1 and 8, batches 1 and 16: a smoke run (default: off)",
    )
    parser.add_argument(
        "--out-prefix",
        type=Path,
        default=None,
        help="output prefix (default: bench/results/gpu on CUDA, bench/results/gpu_smoke_<device> "
        "elsewhere, so a CPU smoke run never takes the GPU results' names)",
    )
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; `--device cpu --quick` exercises the script on CPU")
    common_flags = ["--device", args.device, "--autocast", args.autocast, "--models", args.models]
    if args.quick:
        serving_flags = ["--concurrency", "1", "8", "--duration", "2", "--warmup", "0.5"]
        serving_flags += ["--repeats", "1", "--batches", "1", "16"]
        decode_flags = ["--repeats", "1", "--batches", "1", "16", "--threads", "1"]
        image_flags = ["--repeats", "1", "--batch", "16", "--count", "32", "--sides", "640", "1920"]
    else:  # a GPU takes bigger batches: the limit also tries 128 and 256, the service 128 images
        serving_flags = ["--batches", "1", "16", "32", "64", "128", "256"]
        serving_flags += ["--service-env", "SEQSERVE_MAX_BATCH_IMAGES=128"]
        serving_flags += ["SEQSERVE_MAX_BATCH_SENTENCES=256"]
        decode_flags = ["--repeats", "5"]
        image_flags = ["--repeats", "5", "--batch", "32", "--count", "128"]
        image_flags += ["--sides", "640", "1920", "4000"]
    if args.out_prefix is not None:
        prefix = str(args.out_prefix)
    elif args.device.startswith("cuda"):
        prefix = str(common.RESULTS / "gpu")
    else:
        prefix = str(common.RESULTS / f"gpu_smoke_{args.device.replace(':', '_')}")
    served = serving.main(
        serving.get_args_parser().parse_args(
            [*common_flags, *serving_flags, "--out", f"{prefix}_serving.json"]
        )
    )
    decoded = decode.main(
        decode.get_args_parser().parse_args(
            [*common_flags, *decode_flags, "--out", f"{prefix}_decode.json"]
        )
    )
    images = image_decode.main(  # the served captioner's 224 px input
        image_decode.get_args_parser().parse_args(
            ["--device", args.device, "--batched-only", "--size", "224", *image_flags]
            + ["--out", f"{prefix}_image_decode.json"]
        )
    )
    return {"serving": served, "decode": decoded, "image_decode": images}


if __name__ == "__main__":
    main(get_args_parser().parse_args())
