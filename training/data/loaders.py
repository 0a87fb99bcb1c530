"""Loaders for the caption, parallel-text and plain-text formats users bring (stdlib only)."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPLIT_NAMES = {
    "train": "train",
    "restval": "train",
    "val": "valid",
    "valid": "valid",
    "test": "test",
}
# Extra evaluation splits of data/photo: a held-out style and photo-like composites.
EXTRA_SPLITS = ("test_style", "test_composite")


class DataFormatError(ValueError):
    """A data file is not in the format its loader expects; the message names file and place."""


@dataclass(frozen=True)
class CaptionExample:
    """One image and all of its reference captions."""

    image_path: Path
    captions: tuple[str, ...]
    image_id: str


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: expected a JSON object at the top level")
    return data


def _check_image(path: Path, source: Path, hint: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"image {path} listed in {source} does not exist; {hint}")


def load_karpathy(
    json_path: Path, image_root: Path, check_images: bool = True, language: str = "en"
) -> dict[str, list[CaptionExample]]:
    """Read a Karpathy split file (`dataset_coco.json`, `dataset_flickr8k.json`, `dataset_emoji.json`).

    Returns examples under "train", "valid" and "test" ("restval" counts as train, "val" as valid),
    plus "test_style" and "test_composite" when the file has them (`dataset_photo.json`).
    Image path: image_root / filepath (when the record has one) / filename.
    `language` other than "en" reads `sentences_<language>` (e.g. `sentences_de`) instead of
    `sentences`; images without a caption in that language are skipped.
    """
    json_path, image_root = Path(json_path), Path(image_root)
    images = _read_json(json_path).get("images")
    if not isinstance(images, list):
        raise DataFormatError(f"{json_path}: no 'images' list; is this a Karpathy split file?")
    field = "sentences" if language == "en" else f"sentences_{language}"
    known = {**SPLIT_NAMES, **{name: name for name in EXTRA_SPLITS}}
    splits: dict[str, list[CaptionExample]] = {"train": [], "valid": [], "test": []}
    for index, record in enumerate(images):
        try:
            split = known[record["split"]]
            image_path = image_root / record.get("filepath", "") / record["filename"]
            captions = tuple(s["raw"].strip() for s in record[field])
        except KeyError as error:
            raise DataFormatError(
                f"{json_path}: image #{index} lacks {error} or has an unknown split "
                f"(known: {sorted(known)})"
            ) from error
        if not captions and language != "en":
            continue  # no caption in this language
        if check_images:
            _check_image(image_path, json_path, f"is image_root ({image_root}) right?")
        image_id = str(record.get("cocoid", record.get("imgid", image_path.stem)))
        splits.setdefault(split, []).append(CaptionExample(image_path, captions, image_id))
    return splits


def load_coco_captions(
    annotations_json: Path, image_dir: Path, check_images: bool = True
) -> list[CaptionExample]:
    """Read a COCO captions file (`captions_train2014.json`): captions grouped by image, file order."""
    annotations_json, image_dir = Path(annotations_json), Path(image_dir)
    data = _read_json(annotations_json)
    if not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise DataFormatError(f"{annotations_json}: expected 'images' and 'annotations' lists")
    files = {image["id"]: image["file_name"] for image in data["images"]}
    captions: dict[object, list[str]] = defaultdict(list)
    for annotation in data["annotations"]:
        if annotation["image_id"] not in files:
            raise DataFormatError(
                f"{annotations_json}: caption {annotation.get('id')} refers to unknown image "
                f"{annotation['image_id']}"
            )
        captions[annotation["image_id"]].append(annotation["caption"].strip())
    examples = []
    for image_id, file_name in files.items():
        if image_id not in captions:
            continue  # an image without captions teaches nothing
        path = image_dir / file_name
        if check_images:
            _check_image(path, annotations_json, f"is image_dir ({image_dir}) right?")
        examples.append(CaptionExample(path, tuple(captions[image_id]), str(image_id)))
    return examples


def load_tsv_pairs(path: Path, src_column: int = 0, tgt_column: int = 1) -> list[tuple[str, str]]:
    """Read (source, target) pairs from a Tatoeba/Anki TSV; blank and `#` comment lines are skipped.

    Anki files (manythings.org) have English, translation and an attribution column; Tatoeba's
    `sentences` pair exports have id, text, id, text (use src_column=1, tgt_column=3).
    """
    path = Path(path)
    pairs = []
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith("#"):
                continue
            columns = line.split("\t")
            if max(src_column, tgt_column) >= len(columns):
                raise DataFormatError(
                    f"{path}:{number}: {len(columns)} tab-separated columns, need column "
                    f"{max(src_column, tgt_column)} (0-based); is the file tab-separated?"
                )
            pairs.append((columns[src_column].strip(), columns[tgt_column].strip()))
    return pairs


def load_aligned(src_path: Path, tgt_path: Path) -> list[tuple[str, str]]:
    """Read two line-aligned files (Multi30k/IWSLT style `train.de` + `train.en`) as pairs."""
    src_path, tgt_path = Path(src_path), Path(tgt_path)
    src = src_path.read_text(encoding="utf-8-sig").splitlines()
    tgt = tgt_path.read_text(encoding="utf-8-sig").splitlines()
    if len(src) != len(tgt):
        raise DataFormatError(
            f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; "
            "line-aligned files must have one line per sentence on both sides"
        )
    return [(s.strip(), t.strip()) for s, t in zip(src, tgt, strict=True)]


def load_text(path_or_folder: Path) -> str:
    """Read one UTF-8 text file, or every `*.txt` file in a folder (sorted by name), as one string."""
    path = Path(path_or_folder)
    if path.is_file():
        return path.read_text(encoding="utf-8")
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither a text file nor a folder")
    files = sorted(path.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"{path} holds no *.txt files")
    texts = [f.read_text(encoding="utf-8") for f in files]
    return "".join(t if t.endswith("\n") else t + "\n" for t in texts)
