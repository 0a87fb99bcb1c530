"""The feature cache: features computed once, stored as fp16 in shards, found again by file identity,
and a cache damaged or interrupted at any point is detected and completed, never read wrongly."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from models.encoders import ImageEncoder, ImageEncoderConfig
from training.features import FeatureCache, compute_features

ROOT = Path(__file__).resolve().parents[1]
IMAGES = Path(__file__).parent / "fixtures" / "images"
BATCH = 4
ROW_BYTES = 50 * 64 * 2  # small-cnn at 32 px: pooled + 7 x 7 grid of 64 fp16 values
SHARD_BYTES = 8 * ROW_BYTES  # 8 images a shard: 30 images make shards of 8, 8, 8 and 6


def small_encoder() -> ImageEncoder:
    torch.manual_seed(0)
    return ImageEncoder(ImageEncoderConfig(backbone="small-cnn", image_size=32))


def make_images(folder: Path, count: int = 30) -> list[Path]:
    """`count` different little PNGs: a coloured box on a coloured background."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        image = Image.new("RGB", (24, 24), tuple(rng.integers(0, 256, 3).tolist()))
        x, y = rng.integers(0, 12, 2).tolist()
        box = (x, y, x + 4 + i % 8, y + 4 + i // 8)
        ImageDraw.Draw(image).rectangle(box, fill=tuple(rng.integers(0, 256, 3).tolist()))
        paths.append(folder / f"image_{i:03d}.png")
        image.save(paths[-1])
    return paths


def count_encoded(monkeypatch: pytest.MonkeyPatch, encoder: ImageEncoder) -> list[int]:
    """Batch sizes the encoder is called with from now on."""
    calls: list[int] = []
    forward = encoder.forward

    def counted(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(len(images))
        return forward(images)

    monkeypatch.setattr(encoder, "forward", counted)
    return calls


def cached(cache: FeatureCache, paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    return cache.features(cache.rows(paths))


@pytest.fixture
def encoder() -> ImageEncoder:
    return small_encoder()


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    return make_images(tmp_path / "images")


def test_features_stay_fp16_and_are_found_again_after_reopening(tmp_path: Path) -> None:
    encoder = small_encoder()
    paths = sorted(IMAGES.glob("emoji_*.png"))
    cache = FeatureCache(tmp_path, encoder)
    cache.ensure(paths, batch_size=1, shard_bytes=ROW_BYTES)  # a shard an image
    pooled, grid = cached(cache, paths)
    assert pooled.dtype == grid.dtype == torch.float16
    assert pooled.shape == (len(paths), 64) and grid.shape == (len(paths), 49, 64)
    assert len(cache) == len(paths) == len(cache.store.shards)
    reopened = FeatureCache(tmp_path, encoder)
    assert reopened.rows(paths).tolist() == cache.rows(paths).tolist()
    for mine, theirs in zip(cached(reopened, paths), (pooled, grid), strict=True):
        assert mine.dtype == torch.float16
        assert torch.equal(mine, theirs)
    assert torch.equal(reopened.pooled(reopened.rows(paths)), pooled)
    moved = tmp_path / "moved.png"
    shutil.copyfile(paths[0], moved)  # found by file, not by content: a copy is a new image
    with pytest.raises(LookupError, match="moved.png"):
        reopened.rows([moved])


def test_rows_map_back_to_their_images_features_across_shards(
    tmp_path: Path, encoder: ImageEncoder, images: list[Path]
) -> None:
    cache = FeatureCache(tmp_path / "cache", encoder)
    cache.ensure([*images, images[3]], batch_size=BATCH, shard_bytes=SHARD_BYTES)  # a duplicate
    assert [len(s.keys) for s in cache.store.shards] == [8, 8, 8, 6]
    pooled, grid = compute_features(encoder, images, batch_size=BATCH, progress=False)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0)).tolist()
    found_pooled, found_grid = cached(cache, [images[i] for i in order])  # rows of every shard
    assert torch.equal(found_pooled, pooled[order]) and torch.equal(found_grid, grid[order])
    assert cache.features(torch.tensor([], dtype=torch.long))[1].shape == (0, 49, 64)


def test_a_second_ensure_computes_nothing_and_reads_no_image(
    tmp_path: Path, encoder: ImageEncoder, images: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    FeatureCache(tmp_path / "cache", encoder).ensure(images, BATCH, shard_bytes=SHARD_BYTES)
    calls = count_encoded(monkeypatch, encoder)

    read_bytes = Path.read_bytes

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("an image was opened")

    def no_image_bytes(path: Path) -> bytes:
        assert path.suffix != ".png", f"{path} was read"  # as the old cache's content hash did
        return read_bytes(path)

    monkeypatch.setattr(Image, "open", no_decoding)
    monkeypatch.setattr(Path, "read_bytes", no_image_bytes)
    reopened = FeatureCache(tmp_path / "cache", encoder)
    reopened.ensure(images, BATCH, shard_bytes=SHARD_BYTES)
    assert calls == []
    assert len(reopened.rows(images)) == len(images)


def test_a_touched_or_changed_image_is_computed_again(
    tmp_path: Path, encoder: ImageEncoder, images: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = FeatureCache(tmp_path / "cache", encoder)
    cache.ensure(images, BATCH, shard_bytes=SHARD_BYTES)
    before = cache.rows(images)
    calls = count_encoded(monkeypatch, encoder)
    stat = images[0].stat()
    os.utime(images[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # touched
    shutil.copyfile(images[1], images[2])  # new content: another size
    with pytest.raises(LookupError):
        cache.rows([images[0]])
    cache.ensure(images, BATCH, shard_bytes=SHARD_BYTES)
    assert calls == [2]
    after = FeatureCache(tmp_path / "cache", encoder).rows(images)
    assert after[3:].tolist() == before[3:].tolist()
    assert sorted(after[[0, 2]].tolist()) == [len(images), len(images) + 1]  # appended rows
    changed = [images[0], images[2]]
    reference = compute_features(encoder, changed, batch_size=BATCH, progress=False)
    for found, expected in zip(cached(cache, changed), reference, strict=True):
        assert torch.equal(found, expected)


def truncate_last_shard(folder: Path) -> None:
    last = sorted(folder.glob("shard-*.npy"))[-1]
    os.truncate(last, last.stat().st_size // 2)


def delete_last_shard(folder: Path) -> None:
    sorted(folder.glob("shard-*.npy"))[-1].unlink()


def tear_last_manifest_line(folder: Path) -> None:
    manifest = folder / "manifest.jsonl"
    data = manifest.read_bytes()
    last_line_start = data.rstrip(b"\n").rfind(b"\n") + 1
    manifest.write_bytes(data[: last_line_start + (len(data) - last_line_start) // 2])


@pytest.mark.faults
@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (truncate_last_shard, "shard-000003.npy has"),
        (delete_last_shard, "shard-000003.npy is missing"),
        (tear_last_manifest_line, "torn last line"),
    ],
)
def test_a_damaged_last_shard_is_reported_and_computed_again(
    tmp_path: Path,
    encoder: ImageEncoder,
    images: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    damage: Callable[[Path], None],
    message: str,
) -> None:
    cache = FeatureCache(tmp_path / "cache", encoder)
    cache.ensure(images, BATCH, shard_bytes=SHARD_BYTES)
    expected = cached(cache, images)
    damage(cache.store.folder)
    capsys.readouterr()
    reopened = FeatureCache(tmp_path / "cache", encoder)
    reported = capsys.readouterr().err.strip().splitlines()
    assert len(reported) == 1 and message in reported[0]
    assert len(reopened) == 24
    with pytest.raises(LookupError):
        reopened.rows(images[-6:])
    calls = count_encoded(monkeypatch, encoder)
    reopened.ensure(images, BATCH, shard_bytes=SHARD_BYTES)
    assert calls == [4, 2]  # the lost shard's 6 images, nothing else
    capsys.readouterr()
    repaired = FeatureCache(tmp_path / "cache", encoder)
    assert "feature cache" not in capsys.readouterr().err  # the manifest was rewritten whole
    assert len(repaired) == len(images)
    for found, before in zip(cached(repaired, images), expected, strict=True):
        assert torch.equal(found, before)


KILLED_RUN = """
import os, signal, sys
import torch
sys.path.insert(0, sys.argv[3])
from tests.test_features import small_encoder, BATCH, SHARD_BYTES
from training.features import FeatureCache

torch.set_num_threads(1)
encoder = small_encoder()
forward, calls = encoder.forward, []

def forward_then_die(images):
    calls.append(len(images))
    if len(calls) == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
    return forward(images)

encoder.forward = forward_then_die
paths = sorted(p for p in os.listdir(sys.argv[1]) if p.endswith(".png"))
folder = sys.argv[1]
FeatureCache(folder + "/cache", encoder).ensure(
    [os.path.join(folder, p) for p in paths], BATCH, shard_bytes=SHARD_BYTES
)
"""


@pytest.mark.faults
def test_a_run_killed_mid_shard_resumes_to_the_features_of_an_uninterrupted_one(
    tmp_path: Path, encoder: ImageEncoder, images: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = images[0].parent
    command = [sys.executable, "-c", KILLED_RUN, str(folder), "6", str(ROOT)]  # dies in batch 6
    killed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = FeatureCache(folder / "cache", encoder)
    assert len(resumed) == 16  # two whole shards; the third died with the process
    calls = count_encoded(monkeypatch, encoder)
    resumed.ensure(images, BATCH, shard_bytes=SHARD_BYTES)
    assert sum(calls) == len(images) - 16
    uninterrupted = FeatureCache(tmp_path / "uninterrupted", encoder)
    uninterrupted.ensure(images, BATCH, shard_bytes=SHARD_BYTES)
    for found, expected in zip(cached(resumed, images), cached(uninterrupted, images), strict=True):
        assert torch.equal(found, expected)
