"""The feature cache at growing image counts: sharded and memory-mapped against the old in-RAM one.

Usage: python -m bench.feature_cache [--sizes 5000 10000 20000] [--image-size 96] [--batch-size 32]
       [--threads 2] [--shard-mb 128] [--workdir runs/bench-feature-cache] [--old-rev 2429449]
       [--out bench/results/feature_cache.json]

Images: synthetic 96x96 JPEGs of random coloured shapes, generated once into --workdir/images.
Encoder: the pretrained EfficientNet-Lite0 at --image-size px (96: a 3x3 grid, rows of 10 x 1280
fp16 values; 128 px would take the whole benchmark past 15 minutes on 2 cores).

For each size, each side caches the first N images into an empty folder in a fresh subprocess
(which side goes first alternates): `new` is `training.features.FeatureCache`, `old` the previous
design (`training/features.py` of --old-rev, copied into --workdir: every feature in RAM, the one
safetensors file rewritten every 4096 images, a sha256 of every image's bytes). Reported: wall
time of `ensure`, images/s, RSS before caching (model loaded) and peak RSS while caching (the
child's VmHWM), bytes on disk, and a second run's lookup with everything cached (a new cache
object, `ensure` finding nothing missing, the rows of every image).

Also: the in-process limit (the encoder's forward alone on decoded tensors), decoding the next
batch on a helper thread or in turn (on the synthetic JPEGs and on a 640x480 photo), and a kill:
the new cache at the largest size is SIGKILLed once its manifest lists half the images, resumed,
and compared row by row with the uninterrupted one.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image, ImageDraw

from bench import common

RESULT = "RESULT "  # a worker's last stdout line: RESULT {json}
T = TypeVar("T")
U = TypeVar("U")


def get_args_parser() -> argparse.ArgumentParser:
    parser = common.argument_parser(__doc__)
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[5000, 10000, 20000],
        help="image counts (default: 5000 10000 20000)",
    )  # fmt: skip
    parser.add_argument(
        "--image-size", type=int, default=96, help="encoder input size in pixels (default: 96)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="encoder batch (default: 32)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument(
        "--shard-mb", type=int, default=128, help="the new cache's shard size in MiB (default: 128)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=common.ROOT / "runs" / "bench-feature-cache",
        help="images and caches (default: runs/bench-feature-cache)",
    )  # fmt: skip
    parser.add_argument(
        "--old-rev", default="2429449",
        help="a git revision whose training/features.py is the old in-RAM cache (default: 2429449)",
    )  # fmt: skip
    common.add_out_argument(parser, "feature_cache.json")
    return parser


# -- inputs ---------------------------------------------------------------------------------


def make_images(folder: Path, count: int) -> list[Path]:
    """`count` 96x96 JPEGs of random coloured shapes (made once, kept for later runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"image_{i:05d}.jpg" for i in range(count)]
    rng = np.random.default_rng(0)
    for path in paths:
        colours = [tuple(c) for c in rng.integers(0, 256, (4, 3)).tolist()]
        corners = rng.integers(0, 96, (3, 4)).tolist()
        if path.is_file():
            continue
        image = Image.new("RGB", (96, 96), colours[0])
        draw = ImageDraw.Draw(image)
        (a, b, c, d), (e, f, g, h), (i, j, k, m) = corners
        draw.ellipse((min(a, c), min(b, d), max(a, c), max(b, d)), fill=colours[1])
        draw.rectangle((min(e, g), min(f, h), max(e, g), max(f, h)), fill=colours[2])
        draw.polygon([(i, j), (k, m), (j, k)], fill=colours[3])
        image.save(path, quality=90)
    return paths


def old_module(rev: str, workdir: Path) -> Path:
    """The old design's training/features.py, as it was at `rev`."""
    target = workdir / "old_features.py"
    source = ["git", "show", f"{rev}:training/features.py"]
    target.write_bytes(
        subprocess.run(source, cwd=common.ROOT, check=True, capture_output=True).stdout
    )
    return target


# -- one side in its own process ------------------------------------------------------------


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Cache spec["count"] images with one side, then look them all up again from a new object."""
    from models.encoders import ImageEncoder, ImageEncoderConfig

    torch.set_num_threads(spec["threads"])
    if spec["side"] == "old":
        features = load_features_module(spec["old"])
    else:
        from training import features
    paths = sorted(Path(spec["images"]).glob("*.jpg"))[: spec["count"]]
    encoder = ImageEncoder(ImageEncoderConfig(image_size=spec["image_size"]))
    rss_before = memory_mb("VmRSS")
    started = time.perf_counter()
    cache = features.FeatureCache(spec["cache"], encoder)
    if spec["side"] == "old":
        cached_before = len(cache.index)
        cache.ensure(paths, batch_size=spec["batch_size"])
    else:
        cached_before = len(cache)
        cache.ensure(paths, batch_size=spec["batch_size"], shard_bytes=spec["shard_bytes"])
    wall = time.perf_counter() - started
    peak = memory_mb("VmHWM")
    del cache
    started = time.perf_counter()
    again = features.FeatureCache(spec["cache"], encoder)
    again.ensure(paths, batch_size=spec["batch_size"])
    rows = again.rows(paths)
    lookup = time.perf_counter() - started
    assert sorted(rows.tolist()) == list(range(len(paths)))
    return {
        "side": spec["side"], "images": len(paths), "computed": len(paths) - cached_before,
        "wall_s": round(wall, 2), "images_per_s": round((len(paths) - cached_before) / wall, 1),
        "rss_before_mb": rss_before, "peak_rss_mb": peak,
        "disk_mb": round(folder_bytes(Path(spec["cache"])) / 2**20, 1),
        "cached_lookup_s": round(lookup, 3), "load": common.load_average()[0],
    }  # fmt: skip


def compare(spec: dict[str, Any]) -> dict[str, Any]:
    """Whether two new caches hold every image, with equal features, chunk by chunk."""
    from models.encoders import ImageEncoder, ImageEncoderConfig
    from training.features import FeatureCache

    paths = sorted(Path(spec["images"]).glob("*.jpg"))[: spec["count"]]
    encoder = ImageEncoder(ImageEncoderConfig(image_size=spec["image_size"]))
    caches = [FeatureCache(folder, encoder) for folder in spec["caches"]]
    equal = all(len(cache) == len(paths) for cache in caches)
    for start in range(0, len(paths), 1024):
        chunk = paths[start : start + 1024]
        mine, theirs = (cache.features(cache.rows(chunk)) for cache in caches)
        equal = equal and all(torch.equal(a, b) for a, b in zip(mine, theirs, strict=True))
    return {"complete": all(len(c) == len(paths) for c in caches), "equal": equal}


def load_features_module(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("old_features", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def memory_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no {field} in /proc/self/status")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def prefetched(items: list[T], load: Callable[[T], U]) -> Iterator[U]:
    """load(item) for each item in order, the next one loading on a helper thread meanwhile."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = [pool.submit(load, item) for item in items[:1]]
        for following in items[1:]:
            pending.append(pool.submit(load, following))
            yield pending.pop(0).result()
        for future in pending:
            yield future.result()


# -- the parent -----------------------------------------------------------------------------


def start_worker(spec: dict[str, Any], log: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "bench.feature_cache", "worker", json.dumps(spec)]
    sink = log.open("a")
    return subprocess.Popen(
        command, cwd=common.ROOT, stdout=subprocess.PIPE, stderr=sink, text=True
    )


def finish(process: subprocess.Popen[str], log: Path) -> dict[str, Any]:
    out, _ = process.communicate()
    lines = [line for line in out.splitlines() if line.startswith(RESULT)]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"worker failed ({process.returncode}):\n{log.read_text()[-3000:]}")
    return json.loads(lines[-1][len(RESULT) :])


def run_worker(spec: dict[str, Any], log: Path) -> dict[str, Any]:
    return finish(start_worker(spec, log), log)


def recorded_rows(folder: Path) -> int:
    """Images the manifests under `folder` list so far (torn last lines not counted)."""
    rows = 0
    for manifest in folder.glob("*/manifest.jsonl"):
        for line in manifest.read_bytes().split(b"\n")[1:-1]:
            rows += len(json.loads(line)["keys"])
    return rows


def kill_and_resume(base: dict[str, Any], reference: Path, log: Path) -> dict[str, Any]:
    """SIGKILL the new cache once half the images are recorded, resume, compare with `reference`."""
    spec = {**base, "side": "new", "cache": str(Path(base["cache"]).with_name("killed"))}
    shutil.rmtree(spec["cache"], ignore_errors=True)
    process, started = start_worker(spec, log), time.perf_counter()
    while process.poll() is None and recorded_rows(Path(spec["cache"])) < spec["count"] // 2:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    report = {
        "killed_after_s": round(time.perf_counter() - started, 1),
        "rows_recorded_at_kill": recorded_rows(Path(spec["cache"])),
        "files_at_kill": sorted(p.name for p in Path(spec["cache"]).glob("*/*")),
    }
    report["resumed"] = run_worker(spec, log)
    checked = {**base, "side": "compare", "caches": [spec["cache"], str(reference)]}
    report.update(run_worker(checked, log))
    shutil.rmtree(spec["cache"], ignore_errors=True)
    return report


def encoder_limit(args: argparse.Namespace, images: list[Path]) -> dict[str, Any]:
    """The encoder's forward alone on decoded tensors: images/s (median of 3 passes)."""
    from models.encoders import ImageEncoder, ImageEncoderConfig
    from training.features import load_images

    encoder = ImageEncoder(ImageEncoderConfig(image_size=args.image_size)).eval()
    decoded = load_images(encoder, images[:512])
    batches = decoded.split(args.batch_size)
    rates = []
    with torch.inference_mode():
        encoder(batches[0])
        for _ in range(3):
            started = time.perf_counter()
            for batch in batches:
                encoder(batch)
            rates.append(len(decoded) / (time.perf_counter() - started))
    return {"images_per_s": round(statistics.median(rates), 1), "images": len(decoded)}


def loading_overlap(args: argparse.Namespace, images: list[Path]) -> dict[str, Any]:
    """images/s of decode + encode, the next batch decoded on a helper thread or in turn, on the
    synthetic JPEGs and on a 640x480 photo (decoding costs more there)."""
    from models.encoders import ImageEncoder, ImageEncoderConfig

    encoder = ImageEncoder(ImageEncoderConfig(image_size=args.image_size)).eval()
    photos = args.workdir / "photos"
    photos.mkdir(exist_ok=True)
    for i in range(256):
        if not (photos / f"{i}.jpg").is_file():
            shutil.copyfile(common.IMAGE, photos / f"{i}.jpg")
    sets = {"synthetic 96x96 JPEG": images[:512], "640x480 photo JPEG": sorted(photos.glob("*"))}
    return {name: overlap_rates(encoder, paths, args.batch_size) for name, paths in sets.items()}


def overlap_rates(encoder: torch.nn.Module, paths: list[Path], batch_size: int) -> dict[str, float]:
    """Medians of 3 alternating passes over `paths` of each way of loading."""
    from training.features import load_images

    chunks = [paths[s : s + batch_size] for s in range(0, len(paths), batch_size)]

    def load(chunk: list[Path]) -> torch.Tensor:
        return load_images(encoder, chunk)  # type: ignore[arg-type]

    sides = {
        "in turn": lambda: map(load, chunks),
        "helper thread": lambda: prefetched(chunks, load),
    }
    rates: dict[str, list[float]] = {side: [] for side in sides}
    with torch.inference_mode():
        for _ in range(3):
            for side, batches in sides.items():
                started = time.perf_counter()
                for batch in batches():
                    encoder(batch)
                rates[side].append(len(paths) / (time.perf_counter() - started))
    return {side: round(statistics.median(r), 1) for side, r in rates.items()}


def main(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    log = args.workdir / "workers.log"
    log.write_text("")
    images = make_images(args.workdir / "images", max(args.sizes))
    report: dict[str, Any] = common.environment(
        encoder=f"efficientnet-lite0 at {args.image_size} px", batch_size=args.batch_size,
        threads=args.threads, old_rev=args.old_rev, sizes=args.sizes,
    )  # fmt: skip
    report["limit"] = encoder_limit(args, images)
    report["loading_overlap"] = loading_overlap(args, images)
    print(json.dumps({"limit": report["limit"], "loading_overlap": report["loading_overlap"]}))
    base = {
        "images": str(args.workdir / "images"), "image_size": args.image_size,
        "batch_size": args.batch_size, "threads": args.threads,
        "shard_bytes": args.shard_mb * 2**20, "old": str(old_module(args.old_rev, args.workdir)),
    }  # fmt: skip
    report["runs"] = []
    for turn, count in enumerate(args.sizes):
        sides = ("new", "old") if turn % 2 == 0 else ("old", "new")
        for side in sides:
            cache = args.workdir / f"cache-{side}-{count}"
            shutil.rmtree(cache, ignore_errors=True)
            spec = {**base, "side": side, "count": count, "cache": str(cache)}
            report["runs"].append(run_worker(spec, log))
            print(json.dumps(report["runs"][-1]), flush=True)
            if not (side == "new" and count == max(args.sizes)):
                shutil.rmtree(cache)
    largest = args.workdir / f"cache-new-{max(args.sizes)}"
    spec = {**base, "count": max(args.sizes), "cache": str(largest)}
    report["kill_and_resume"] = kill_and_resume(spec, largest, log)
    shutil.rmtree(largest)
    print_report(report)
    common.write_report(report, args.out)
    return report


def print_report(report: dict[str, Any]) -> None:
    limit = report["limit"]["images_per_s"]
    header = ["images", "cache", "wall s", "images/s", "of limit", "RSS before MB"]
    header += ["peak RSS MB", "disk MB", "cached lookup s", "load"]
    rows = [
        [
            r["images"], r["side"], r["wall_s"], r["images_per_s"],
            f"{r['images_per_s'] / limit:.2f}", r["rss_before_mb"], r["peak_rss_mb"],
            r["disk_mb"], r["cached_lookup_s"], r["load"],
        ]
        for r in sorted(report["runs"], key=lambda r: (r["images"], r["side"]))
    ]  # fmt: skip
    rows.append(["512", "limit: encoder forward alone", "", limit, "1.00", "", "", "", "", ""])
    common.print_table(header, rows)
    print()
    overlap = report["loading_overlap"]
    common.print_table(
        ["images", "decode in turn, images/s", "decode on a helper thread, images/s"],
        [[name, r["in turn"], r["helper thread"]] for name, r in overlap.items()],
    )
    killed = report["kill_and_resume"]
    resumed = killed["resumed"]
    print(
        f"\nkill and resume: SIGKILL after {killed['killed_after_s']} s with "
        f"{killed['rows_recorded_at_kill']} rows recorded; the resumed run computed "
        f"{resumed['computed']} of {resumed['images']} images in {resumed['wall_s']} s; "
        f"complete: {killed['complete']}, equal to the uninterrupted cache: {killed['equal']}"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        spec = json.loads(sys.argv[2])
        result = compare(spec) if spec["side"] == "compare" else worker(spec)
        print(RESULT + json.dumps(result), flush=True)
    else:
        main(get_args_parser().parse_args())
