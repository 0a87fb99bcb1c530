"""Tests for the standard-format data loaders on small hand-written fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.data.loaders import (
    CaptionExample,
    DataFormatError,
    load_aligned,
    load_coco_captions,
    load_karpathy,
    load_tsv_pairs,
)
from training.data.text import load_text

FIXTURES = Path(__file__).parent / "fixtures" / "data"
IMAGES = FIXTURES / "images"


def test_karpathy_normalizes_splits_and_joins_filepath() -> None:
    splits = load_karpathy(FIXTURES / "dataset_coco_tiny.json", IMAGES)
    assert {name: len(items) for name, items in splits.items()} == {
        "train": 1,  # "restval"
        "valid": 1,  # "val"
        "test": 1,
    }
    first = splits["train"][0]
    assert first == CaptionExample(
        image_path=IMAGES / "val2014" / "COCO_val2014_000000391895.jpg",
        captions=(
            "A man with a red helmet on a small moped on a dirt road.",
            "Man riding a motor bike on a dirt road on the countryside.",
        ),
        image_id="391895",
    )
    assert all(ex.image_path.is_file() for items in splits.values() for ex in items)


def test_karpathy_without_filepath_uses_image_root(tmp_path: Path) -> None:
    (tmp_path / "1000268201_693b08cb0e.jpg").write_bytes(b"")
    record = {
        "filename": "1000268201_693b08cb0e.jpg",
        "imgid": 0,
        "split": "train",
        "sentences": [
            {"raw": "A child in a pink dress is climbing up a set of stairs .", "tokens": []}
        ],
    }
    path = tmp_path / "dataset_flickr8k.json"
    path.write_text(json.dumps({"dataset": "flickr8k", "images": [record]}))
    example = load_karpathy(path, tmp_path)["train"][0]
    assert example.image_path == tmp_path / "1000268201_693b08cb0e.jpg"
    assert example.image_id == "0"


def test_karpathy_missing_image_names_file_and_root() -> None:
    with pytest.raises(
        DataFormatError,
        match=r"dataset_missing_image.json: 1 of 2 images .* image root .*images "
        r"\(first: val2014/COCO_val2014_000000000042.jpg\)",
    ):
        load_karpathy(FIXTURES / "dataset_missing_image.json", IMAGES)
    splits = load_karpathy(FIXTURES / "dataset_missing_image.json", IMAGES, check_images=False)
    assert len(splits["test"]) == 1
    with pytest.warns(UserWarning, match="1 of 2 images"):
        splits = load_karpathy(FIXTURES / "dataset_missing_image.json", IMAGES, skip_missing=True)
    assert (len(splits["train"]), len(splits["test"])) == (1, 0)


def test_karpathy_rejects_unknown_split(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    record = {"filename": "x.jpg", "split": "holdout", "sentences": [{"raw": "x"}]}
    path.write_text(json.dumps({"images": [record]}))
    with pytest.raises(DataFormatError, match="unknown split"):
        load_karpathy(path, tmp_path, check_images=False)


def test_coco_captions_grouped_by_image_in_file_order() -> None:
    examples = load_coco_captions(FIXTURES / "captions_val2014_tiny.json", IMAGES / "val2014")
    assert [ex.image_id for ex in examples] == ["391895", "522418", "184613"]
    assert [len(ex.captions) for ex in examples] == [2, 2, 1]
    assert examples[1].captions[1] == "A woman cutting a large white sheet cake."
    assert examples[2].image_path == IMAGES / "val2014" / "COCO_val2014_000000184613.jpg"


def test_coco_captions_unknown_image_id(tmp_path: Path) -> None:
    data = json.loads((FIXTURES / "captions_val2014_tiny.json").read_text())
    data["annotations"].append({"image_id": 7, "id": 1, "caption": "Orphan caption."})
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match="unknown image 7"):
        load_coco_captions(path, IMAGES / "val2014")


def test_anki_tsv_skips_comments_blanks_and_attribution() -> None:
    pairs = load_tsv_pairs(FIXTURES / "anki" / "deu.txt")
    assert pairs == [("Go.", "Geh."), ("Hi.", "Hallo!"), ("I won!", "Ich hab gewonnen!")]


def test_tatoeba_tsv_with_id_columns() -> None:
    pairs = load_tsv_pairs(FIXTURES / "tatoeba_pairs.tsv", src_column=1, tgt_column=3)
    assert pairs[0] == ("Let's try something.", "Lass uns etwas versuchen!")


def test_tsv_too_few_columns_names_line(tmp_path: Path) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_text("Go.\tGeh.\nno tab here\n")
    with pytest.raises(DataFormatError, match=r"pairs.tsv:2"):
        load_tsv_pairs(path)


def test_aligned_files() -> None:
    pairs = load_aligned(FIXTURES / "aligned" / "train.de", FIXTURES / "aligned" / "train.en")
    assert len(pairs) == 3
    assert pairs[0] == ("Zwei junge Männer stehen im Freien.", "Two young guys are outside.")


def test_aligned_mismatch_names_both_files_and_counts() -> None:
    with pytest.raises(DataFormatError, match=r"mismatched.de has 3 lines.*mismatched.en has 2"):
        load_aligned(FIXTURES / "aligned" / "mismatched.de", FIXTURES / "aligned" / "mismatched.en")


def test_text_file_and_folder() -> None:
    assert load_text(FIXTURES / "text" / "a.txt") == "You will be surrounded by luxury.\n%\n"
    text = load_text(FIXTURES / "text")
    assert text == (  # every file, sorted by name
        "You will be surrounded by luxury.\n%\nCold hands, no gloves.\n%\nnot a text corpus\n"
    )


def test_text_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="holds no files"):
        load_text(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither"):
        load_text(tmp_path / "absent")
