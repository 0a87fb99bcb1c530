"""Tests for the photo-like captioning set: Tux Paint parsing, Iconify matching, splits, composites."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from training.data import photo
from training.data.composite import Background, held_out_backgrounds
from training.data.emoji import load_concepts
from training.data.iconify import IconSet, compact, match_icons, name_index
from training.data.loaders import load_karpathy
from training.data.photo_build import BuildOptions, Sources
from training.data.photo_records import stamp_split
from training.data.tuxpaint import STAMPS_DIR, find_stamps, normalise_caption, parse_description

FIXTURES = Path(__file__).parent / "fixtures" / "data"
ENTRIES = [{"label": f"thing {i}", "hexcode": f"{0x1F300 + i:X}"} for i in range(18)]
ENTRIES_DE = [{"label": f"Ding {i}", "hexcode": f"{0x1F300 + i:X}"} for i in range(18)]
OPTIONS = BuildOptions(
    held_out_style="heldout",
    composites_train=2,
    composites_eval=1,
    composite_emoji_styles=("flat", "heldout"),
)


def test_tuxpaint_description_parsed_and_normalised() -> None:
    english, german = parse_description(
        "A giraffe.\naf.utf8='n Kameelperd.\nde.utf8=Eine Giraffe.\n"
    )
    assert (english, german) == ("A giraffe.", "Eine Giraffe.")
    assert normalise_caption(english, "en") == "giraffe"
    assert normalise_caption(german, "de") == "Giraffe"
    assert normalise_caption("The letter P.", "en") == "the letter p"
    assert normalise_caption("An apple!", "en") == "apple"


def test_find_stamps_prefers_svg_skips_missing_images_and_reads_nomirror() -> None:
    stamps, skipped = find_stamps(FIXTURES / "tuxpaint" / STAMPS_DIR)
    by_id = {s.stamp_id: s for s in stamps}
    assert skipped == 1 and set(by_id) == {
        "animals/giraffe",
        "animals/thing",
        "food/apple",
        "symbols/letter_p",
    }
    assert by_id["food/apple"].kind == "svg" and by_id["animals/giraffe"].kind == "png"
    assert not by_id["symbols/letter_p"].mirror and by_id["animals/giraffe"].mirror
    assert by_id["food/apple"].caption_de == "Apfel"


def test_iconify_matches_by_hexcode_table_and_by_name() -> None:
    concepts = load_concepts(ENTRIES)
    index = name_index(concepts, [])
    flat = IconSet.load(FIXTURES / "iconify" / "flat")
    held = IconSet.load(FIXTURES / "iconify" / "heldout")
    assert match_icons(flat, concepts, index)["1F305"] == "thing-5"
    by_name = match_icons(held, concepts, index)
    assert by_name == {f"{0x1F300 + i:X}": f"thing-{i}" for i in range(0, 18, 2)}
    assert compact("Flag: Côte d’Ivoire") == "flagcotedivoire"
    assert "scale(-1 1)" in flat.svg("thing-0-mirrored")


def test_stamp_with_an_emoji_caption_follows_that_emoji() -> None:
    assert stamp_split("thing 12", {"thing 12": "test"}) == "test"
    splits = {stamp_split(f"stamp {i}", {}) for i in range(200)}
    assert splits == {"train", "valid", "test"}


def test_held_out_backgrounds_are_a_stable_third() -> None:
    names = [f"bg{i}" for i in range(9)]
    held = held_out_backgrounds(names)
    assert len(held) == 3 and held == held_out_backgrounds(list(reversed(names)))
    assert held_out_backgrounds(["only"]) == set()


def _backgrounds(folder: Path) -> list[Background]:
    folder.mkdir()
    backgrounds = []
    for i, colour in enumerate(["#4a7", "#79c", "#cb8"]):
        path = folder / f"photo{i}.jpg"
        Image.new("RGB", (120, 90), colour).save(path)
        backgrounds.append(Background(f"fake:photo{i}", path, "fake-wallpapers", "1.0", "CC0-1.0"))
    return backgrounds


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole build (rendering, stamps, composites, JSON, manifest) on the fixtures."""
    out = tmp_path_factory.mktemp("photo")
    concepts = load_concepts(ENTRIES)
    sources = Sources(
        concepts=concepts,
        labels_de=photo.german_labels(ENTRIES_DE),
        icon_sets={s: IconSet.load(FIXTURES / "iconify" / s) for s in ("flat", "heldout")},
        name_index=name_index(concepts, []),
        stamps_dir=FIXTURES / "tuxpaint" / STAMPS_DIR,
        backgrounds=_backgrounds(out / "_backgrounds"),
    )
    records, extra, stats, notes = photo.build(out, sources, OPTIONS, datasource_styles=False)
    photo.write_dataset(out, records, extra, stats, notes, sources, OPTIONS)
    return out


def _records(out: Path) -> list[dict]:
    return json.loads((out / "dataset_photo.json").read_text(encoding="utf-8"))["images"]


def test_build_writes_every_source_and_german_captions(built: Path) -> None:
    records = _records(built)
    assert {r["source"] for r in records} == {"emoji", "tuxpaint", "composite"}
    assert all((built / "images" / r["filepath"] / r["filename"]).is_file() for r in records)
    stamps = {r["concept"]: r for r in records if r["source"] == "tuxpaint"}
    assert stamps["tuxpaint:animals/giraffe"]["sentences_de"][0]["raw"] == "Giraffe"
    assert stamps["tuxpaint:animals/thing"]["split"] == "test"  # its emoji twin 1F30C is test
    emoji = [r for r in records if r["source"] == "emoji"]
    assert all(r["sentences_de"][0]["raw"].startswith("Ding ") for r in emoji)
    german = load_karpathy(built / "dataset_photo.json", built / "images", language="de")
    assert german["train"][0].captions[0][0].isupper()


def test_held_out_style_only_in_test_style(built: Path) -> None:
    records = _records(built)
    held = [r for r in records if r["style"] == "heldout"]
    assert held and all(r["split"] == "test_style" for r in held)
    assert all(r["style"] == "heldout" for r in records if r["split"] == "test_style")
    splits = load_karpathy(built / "dataset_photo.json", built / "images")
    assert len(splits["test_style"]) == len(held)
    assert all(e.image_path.parent.name != "heldout" for e in splits["train"] + splits["valid"])


def test_no_concept_or_caption_shared_between_train_and_test(built: Path) -> None:
    records = _records(built)
    train = [r for r in records if r["split"] == "train"]
    test = [r for r in records if r["split"] in ("test", "test_composite")]
    assert train and test
    assert not {r["concept"] for r in train} & {r["concept"] for r in test}
    captions = {
        split: {r["sentences"][0]["raw"] for r in part}
        for split, part in [("a", train), ("b", test)]
    }
    assert not captions["a"] & captions["b"]


def test_composites_are_224_rgb_jpegs_on_split_backgrounds(built: Path) -> None:
    records = [r for r in _records(built) if r["source"] == "composite"]
    assert {r["split"] for r in records} >= {"train", "test_composite"}
    for record in records:
        with Image.open(built / "images" / "composite" / record["filename"]) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (224, 224))
    train_bg = {r["background"] for r in records if r["split"] == "train"}
    eval_bg = {r["background"] for r in records if r["split"] != "train"}
    assert train_bg and eval_bg and not train_bg & eval_bg
    assert "heldout" not in {r["style"] for r in records}


def test_manifest_lists_background_licences(built: Path) -> None:
    manifest = json.loads((built / "manifest.json").read_text(encoding="utf-8"))
    assert {b["licence"] for b in manifest["backgrounds"]} == {"CC0-1.0"}
    assert len(manifest["backgrounds"]) == 3
    assert "dataset_photo.json" in manifest["files"]
    assert manifest["counts"]["images_per_split"]["test_style"] > 0
