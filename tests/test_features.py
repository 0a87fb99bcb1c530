"""The feature cache: features are computed once, stored as fp16, and found again by content."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from models.encoders import ImageEncoder, ImageEncoderConfig
from training.features import FeatureCache

IMAGES = Path(__file__).parent / "fixtures" / "images"


def test_appended_chunks_stay_fp16_and_are_found_again(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = ImageEncoder(ImageEncoderConfig(backbone="small-cnn", image_size=32))
    paths = sorted(IMAGES.glob("emoji_*.png"))
    cache = FeatureCache(tmp_path, encoder)
    cache.ensure(paths, save_every=2)  # two chunks: the second is appended to the first
    assert cache.pooled.dtype == cache.grid.dtype == torch.float16
    assert len(cache.pooled) == len(paths)
    moved = tmp_path / "moved.png"
    shutil.copyfile(paths[0], moved)  # the same bytes elsewhere: found by content
    reopened = FeatureCache(tmp_path, encoder)
    assert reopened.grid.dtype == torch.float16
    assert reopened.rows([moved]).tolist() == cache.rows([paths[0]]).tolist()
    torch.testing.assert_close(reopened.pooled, cache.pooled)
