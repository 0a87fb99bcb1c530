"""Altered copies of training images (training/augment.py) and training on them."""

from __future__ import annotations

import colorsys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw, ImageStat

from training import train_captioner
from training.augment import augmented_examples
from training.captioning import CaptionerSettings, CaptionTask
from training.data.loaders import CaptionExample
from training.distributed import Distributed
from training.settings import resolve_settings

FIXTURES = Path(__file__).parent / "fixtures" / "training"


def red_disc(path: Path) -> CaptionExample:
    """A red disc on a transparent 64 x 64 PNG, like an emoji."""
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((8, 8, 56, 56), fill=(220, 30, 30, 255))
    image.save(path)
    return CaptionExample(path, ("red circle",), path.stem)


@pytest.fixture
def sources(tmp_path: Path) -> list[CaptionExample]:
    photo = Path(__file__).parent / "fixtures" / "images" / "photo_house.jpg"
    return [red_disc(tmp_path / "disc.png"), CaptionExample(photo, ("a house",), "house")]


def test_copies_are_rgb_at_the_input_size_with_their_sources_captions(tmp_path, sources) -> None:
    copies = augmented_examples(sources, 3, tmp_path / "copies", seed=1, size=56, workers=1)
    assert [c.captions for c in copies] == [s.captions for s in sources for _ in range(3)]
    assert len({c.image_path for c in copies}) == 6
    for copy in copies:
        with Image.open(copy.image_path) as image:
            assert (image.mode, image.size, image.format) == ("RGB", (56, 56), "JPEG")


def test_copies_are_made_once_and_the_same_every_time(tmp_path, sources) -> None:
    first = augmented_examples(sources, 2, tmp_path / "a", seed=1, size=56, workers=1)
    made = {c.image_path.name: c.image_path.stat().st_mtime_ns for c in first}
    again = augmented_examples(sources, 2, tmp_path / "a", seed=1, size=56, workers=1)
    assert {c.image_path.name: c.image_path.stat().st_mtime_ns for c in again} == made
    elsewhere = augmented_examples(sources, 2, tmp_path / "b", seed=1, size=56, workers=2)
    assert [c.image_path.name for c in elsewhere] == [c.image_path.name for c in first]
    for a, b in zip(first, elsewhere, strict=True):  # the same pixels from another process
        assert a.image_path.read_bytes() == b.image_path.read_bytes()
    other_seed = augmented_examples(sources, 2, tmp_path / "c", seed=2, size=56, workers=1)
    assert not {c.image_path.name for c in other_seed} & made.keys()


def test_a_changed_source_gets_new_copies(tmp_path, sources) -> None:
    before = augmented_examples(sources[:1], 1, tmp_path / "copies", seed=1, size=56, workers=1)
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(image).rectangle((8, 8, 56, 56), fill=(220, 30, 30, 255))
    image.save(sources[0].image_path)
    after = augmented_examples(sources[:1], 1, tmp_path / "copies", seed=1, size=56, workers=1)
    assert after[0].image_path != before[0].image_path


def test_copies_keep_the_hue(tmp_path, sources) -> None:
    """Colour names an emoji (a red heart is not an orange one): a red disc stays red."""
    copies = augmented_examples(sources[:1], 12, tmp_path / "copies", seed=1, size=56, workers=1)
    for copy in copies:
        with Image.open(copy.image_path) as image:
            r, g, b = image.crop((22, 22, 34, 34)).convert("RGB").getpixel((6, 6))
            hue, _, saturation = colorsys.rgb_to_hls(r / 255, g / 255, b / 255)
            assert min(hue, 1 - hue) < 0.05 and saturation > 0.3, (copy.image_path, (r, g, b))


def test_copies_differ_from_each_other_and_from_the_source(tmp_path, sources) -> None:
    copies = augmented_examples(sources, 4, tmp_path / "copies", seed=1, size=56, workers=1)
    means = []
    for copy in copies:
        with Image.open(copy.image_path) as image:
            means.append(tuple(round(m, 1) for m in ImageStat.Stat(image).mean))
    assert len(set(means)) == len(means)


def test_training_adds_the_copies_to_the_train_split_only(tmp_path: Path) -> None:
    flags = ["--preset", "tiny", "--output-dir", str(tmp_path)]
    flags += ["--feature-cache", str(tmp_path / "cache"), "--augment-copies", "2"]
    args = train_captioner.get_args_parser().parse_args(flags)
    settings = resolve_settings(CaptionerSettings, "captioner", args)
    plain = resolve_settings(
        CaptionerSettings, "captioner", train_captioner.get_args_parser().parse_args(flags[:6])
    )
    task = CaptionTask(settings, Distributed(), torch.device("cpu"))
    baseline = CaptionTask(plain, Distributed(), torch.device("cpu"))
    assert len(task.examples["train"]) == 3 * len(baseline.examples["train"])
    assert task.examples["valid"] == baseline.examples["valid"]
    assert task.vocabulary.tokens == baseline.vocabulary.tokens
    copies = [e for e in task.splits["train"] if e.image_path.parent.name == "augmented"]
    assert len(copies) == 2 * len(baseline.splits["train"])
