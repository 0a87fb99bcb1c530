"""Loaders for the caption, parallel-text and plain-text formats users bring (stdlib only)."""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.data.common import SplitFractions, hash_fraction, stable_split

SPLIT_NAMES = {
    "train": "train",
    "restval": "train",
    "val": "valid",
    "valid": "valid",
    "test": "test",
}
# Extra evaluation splits of data/photo: a held-out style and photo-like composites.
EXTRA_SPLITS = ("test_style", "test_composite")
KNOWN_SPLITS = {**SPLIT_NAMES, **{name: name for name in EXTRA_SPLITS}}
LINE_FORMATS = (".tsv", ".csv", ".txt")
# Caption sets without splits: 90/5/5 by image, valid and test capped at COCO's customary 5,000.
HELD_OUT_FRACTION = 0.05
HELD_OUT_CAP = 5000
SHOWN = 5  # problems quoted by example in one message; the rest are counted
_HEADER_IMAGE = frozenset({"image", "image_path", "image_name", "file", "filename", "file_name"})
_HEADER_CAPTION = frozenset({"caption", "captions", "text", "sentence", "description"})
_CAPTION_NUMBER = re.compile(r"#\d+$")  # Flickr8k/30k token files: `name.jpg#0<TAB>caption`


class DataFormatError(ValueError):
    """A data file is not in the format its loader expects; the message names file and place."""


@dataclass(frozen=True)
class CaptionExample:
    """One image and all of its reference captions."""

    image_path: Path
    captions: tuple[str, ...]
    image_id: str


Labelled = tuple[CaptionExample, str | None]  # an example and its split (None: the file has none)


def read_utf8(path: Path) -> str:
    """A file's text, newlines as `\\n`; DataFormatError naming file, byte and line if not UTF-8."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataFormatError(
            f"{path}: not UTF-8 text: byte 0x{data[error.start]:02x} at byte offset {error.start} "
            f"(line {line}); convert the file to UTF-8 (e.g. `iconv -f latin1 -t utf-8`) "
            "or remove it"
        ) from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(read_utf8(path))
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: expected a JSON object at the top level")
    return data


def _shown(items: Sequence[object]) -> str:
    """The first few items for a message, and how many more there are."""
    listed = ", ".join(str(item) for item in items[:SHOWN])
    return listed + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def load_caption_dataset(
    path: Path | str | Sequence[Path | str],
    image_root: Path,
    language: str = "en",
    check_images: bool = True,
    skip_missing: bool = False,
) -> dict[str, list[CaptionExample]]:
    """Read captions in any supported format, told apart by the file itself.

    Karpathy split files (top-level `images` with `sentences`) keep their splits, as
    `load_karpathy`; COCO captions files (`images` + `annotations`, several allowed, e.g.
    train2014 and val2014) and `.tsv`/`.csv`/`.txt` lines `image<sep>caption[<sep>split]`
    are split by `assign_splits` unless every line gives a split. Image paths start at
    `image_root`. Returns "train", "valid", "test" and any extra splits of a Karpathy file.
    Images that are not files are an error naming the first few, or with `skip_missing`
    are left out with a warning.
    """
    paths = [Path(path)] if isinstance(path, str | Path) else [Path(p) for p in path]
    found: dict[Path, list[Labelled]] = {}
    for file in paths:
        kind, found[file] = _read_caption_file(file, Path(image_root), language)
        if kind == "karpathy" and len(paths) > 1:
            raise DataFormatError(
                f"{file} is a Karpathy split file, which has its own splits: give it alone"
            )
        if not found[file]:
            field = f" in sentences_{language}" if kind == "karpathy" and language != "en" else ""
            raise DataFormatError(f"{file}: no captions{field} in it")
    return _checked_splits(found, Path(image_root), check_images, skip_missing)


def _read_caption_file(path: Path, image_root: Path, language: str) -> tuple[str, list[Labelled]]:
    """The format of a caption file ("karpathy", "coco" or "lines") and its examples."""
    if path.suffix.lower() in LINE_FORMATS:
        return "lines", _line_records(path, image_root)
    try:
        data = _read_json(path)
    except DataFormatError as error:
        if path.suffix.lower() == ".json":
            raise
        raise DataFormatError(f"{error}; caption lines need a .tsv, .csv or .txt name") from None
    if isinstance(data.get("images"), list) and "annotations" in data:
        return "coco", _coco_records(data, path, image_root)
    if isinstance(data.get("images"), list):
        return "karpathy", _karpathy_records(data, path, image_root, language)
    raise DataFormatError(
        f"{path}: no 'images' list: neither a Karpathy split file (images with sentences) "
        "nor COCO captions (images and annotations)"
    )


def _checked_splits(
    found: dict[Path, list[Labelled]], image_root: Path, check_images: bool, skip_missing: bool
) -> dict[str, list[CaptionExample]]:
    """Reject images listed twice (in one file or across files), check images, assign splits."""
    seen: dict[Path, Path] = {}
    kept: list[Labelled] = []
    for source, examples in found.items():
        for example, _ in examples:
            if example.image_path in seen:
                earlier = seen[example.image_path]
                where = "twice in this file" if earlier == source else f"also in {earlier}"
                raise DataFormatError(
                    f"{source}: image {example.image_path} is listed {where}; "
                    "give each image once, with all of its captions"
                )
            seen[example.image_path] = source
        if check_images:
            examples = _require_images(examples, source, image_root, skip_missing)
        kept += examples
    return assign_splits(kept)


def _require_images(
    found: list[Labelled], source: Path, image_root: Path, skip_missing: bool
) -> list[Labelled]:
    """`found` if every image is a file; else an error naming the first few missing, or (with
    skip_missing) `found` without them and a warning."""
    missing = [example.image_path for example, _ in found if not example.image_path.is_file()]
    if not missing:
        return found
    shown = [p.relative_to(image_root) if p.is_relative_to(image_root) else p for p in missing]
    what = (
        f"{source}: {len(missing)} of {len(found)} images it lists are not files under the "
        f"image root {image_root} (first: {_shown(shown)})"
    )
    if not skip_missing:
        raise DataFormatError(
            f"{what}; is the image root right? To go on without them, leave them out "
            "(skip_missing, --skip-missing)"
        )
    warnings.warn(f"{what}; left out", stacklevel=4)
    gone = set(missing)
    return [(example, split) for example, split in found if example.image_path not in gone]


def held_out_fractions(images: int) -> SplitFractions:
    """90/5/5 for a set of `images`, valid and test capped at 5,000 images each (COCO-sized)."""
    held = min(HELD_OUT_FRACTION, HELD_OUT_CAP / images) if images else HELD_OUT_FRACTION
    return SplitFractions(train=1 - 2 * held, valid=held, test=held)


def _split_key(example: CaptionExample) -> str:
    return f"image:{example.image_id}"


def assign_splits(found: Sequence[Labelled]) -> dict[str, list[CaptionExample]]:
    """Group examples by split; those without one go by `stable_split` of their image id with
    `held_out_fractions`. A set so small that this leaves train, valid (2+ images) or test (3+)
    empty is cut by hash rank instead: the lowest hashes to test, the next to valid."""
    unsplit = [example for example, split in found if split is None]
    fractions = held_out_fractions(len(unsplit))
    chosen = {_split_key(e): stable_split(_split_key(e), fractions) for e in unsplit}
    needed = ("train", "valid", "test")[: min(len(unsplit), 3)]
    if not set(needed) <= set(chosen.values()):
        chosen = _split_by_rank(list(chosen), fractions)
    splits: dict[str, list[CaptionExample]] = {"train": [], "valid": [], "test": []}
    for example, split in found:
        splits.setdefault(split or chosen[_split_key(example)], []).append(example)
    return splits


def _split_by_rank(keys: list[str], fractions: SplitFractions) -> dict[str, str]:
    """Key -> split: valid and test take round(fraction x keys) keys each (at least one, when
    there are 2 and 3 keys), the lowest hashes test, the next valid."""
    ranked = sorted(keys, key=hash_fraction)
    held = max(1, round(len(keys) * fractions.valid))
    test = held if len(keys) >= 3 else 0
    valid = held if len(keys) >= 2 else 0
    names = ["test"] * test + ["valid"] * valid + ["train"] * (len(keys) - test - valid)
    return dict(zip(ranked, names, strict=True))


def load_karpathy(
    json_path: Path,
    image_root: Path,
    check_images: bool = True,
    language: str = "en",
    skip_missing: bool = False,
) -> dict[str, list[CaptionExample]]:
    """Read a Karpathy split file (`dataset_coco.json`, `dataset_flickr8k.json`, `dataset_emoji.json`).

    Returns examples under "train", "valid" and "test" ("restval" counts as train, "val" as valid),
    plus "test_style" and "test_composite" when the file has them (`dataset_photo.json`).
    Image path: image_root / filepath (when the record has one) / filename. Image id: the
    record's image_id (written by `python -m training.data.captions`), cocoid, imgid or file stem.
    `language` other than "en" reads `sentences_<language>` (e.g. `sentences_de`) instead of
    `sentences`; images without a caption in that language are skipped.
    """
    json_path, image_root = Path(json_path), Path(image_root)
    found = _karpathy_records(_read_json(json_path), json_path, image_root, language)
    return _checked_splits({json_path: found}, image_root, check_images, skip_missing)


def _karpathy_records(
    data: dict[str, Any], path: Path, image_root: Path, language: str
) -> list[Labelled]:
    images = data.get("images")
    if not isinstance(images, list):
        raise DataFormatError(f"{path}: no 'images' list; is this a Karpathy split file?")
    field = "sentences" if language == "en" else f"sentences_{language}"
    found: list[Labelled] = []
    for index, record in enumerate(images):
        where = f"{path}: images[{index}]"
        try:
            split, name = record["split"], record["filename"]
            image_path = image_root / record.get("filepath", "") / name
            captions = tuple(sentence["raw"].strip() for sentence in record[field])
            image_id = str(record.get("image_id", record.get("cocoid", record.get("imgid", ""))))
        except KeyError as error:
            other = sorted(k for k in record if k.startswith("sentences") and k != field)
            hint = f"; it has {', '.join(other)}: pick that language" if other else ""
            raise DataFormatError(
                f"{where} lacks {error} (needs split, filename and {field} with raw captions){hint}"
            ) from None
        except (TypeError, AttributeError) as error:
            raise DataFormatError(
                f"{where} is not a record with split, filename and {field}: [{{raw: caption}}]: "
                f"{error}"
            ) from None
        if not isinstance(split, str) or split not in KNOWN_SPLITS:
            raise DataFormatError(
                f"{where} ({name}) has an unknown split {split!r} (known: {sorted(KNOWN_SPLITS)})"
            )
        if not captions and language != "en":
            continue  # no caption in this language
        if not captions or not all(captions):
            raise DataFormatError(
                f"{where} ({name}) has {'an empty' if captions else 'no'} caption"
            )
        image_id = image_id or Path(name).stem
        found.append((CaptionExample(image_path, captions, image_id), KNOWN_SPLITS[split]))
    return found


def load_coco_captions(
    annotations_json: Path, image_dir: Path, check_images: bool = True
) -> list[CaptionExample]:
    """Read one COCO captions file (`captions_train2014.json`): captions grouped by image, in
    file order; images without captions are skipped. Image folder: see `_coco_images`."""
    annotations_json, image_dir = Path(annotations_json), Path(image_dir)
    found = _coco_records(_read_json(annotations_json), annotations_json, image_dir)
    _checked_splits({annotations_json: found}, image_dir, check_images, skip_missing=False)
    return [example for example, _ in found]


def _coco_records(data: dict[str, Any], path: Path, image_root: Path) -> list[Labelled]:
    if not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise DataFormatError(f"{path}: expected 'images' and 'annotations' lists")
    files = _coco_images(data["images"], path, image_root)
    captions = _coco_captions(data["annotations"], path, files)
    return [
        (CaptionExample(file, tuple(captions[image_id]), str(image_id)), None)
        for image_id, file in files.items()
        if image_id in captions  # an image without captions teaches nothing
    ]


def _coco_images(images: list[Any], path: Path, image_root: Path) -> dict[Any, Path]:
    """COCO image id -> image_root/<folder>/file_name where that folder exists, else
    image_root/file_name. <folder> is the one in the image's coco_url (`.../train2014/x.jpg`),
    else the file's own name (`captions_train2014.json`)."""
    default = path.stem.removeprefix("captions_") if path.stem.startswith("captions_") else ""
    folders: dict[str, Path] = {}
    files: dict[Any, Path] = {}
    for index, image in enumerate(images):
        try:
            image_id, name = image["id"], image["file_name"]
            url = (image.get("coco_url") or "").rsplit("/", 2)  # [host, folder, file]
            folder = url[1] if len(url) == 3 and url[1] else default
            if image_id in files:
                raise DataFormatError(f"{path}: image id {image_id} is listed twice in 'images'")
            if folder not in folders:
                is_folder = folder and (image_root / folder).is_dir()
                folders[folder] = image_root / folder if is_folder else image_root
            files[image_id] = folders[folder] / name
        except KeyError as error:
            raise DataFormatError(f"{path}: images[{index}] lacks {error}") from None
        except (TypeError, AttributeError) as error:
            raise DataFormatError(
                f"{path}: images[{index}] is not a record with id and file_name: {error}"
            ) from None
    return files


def _coco_captions(
    annotations: list[Any], path: Path, files: dict[Any, Path]
) -> dict[Any, list[str]]:
    """Image id -> its captions in file order; every problem is a DataFormatError."""
    captions: dict[Any, list[str]] = defaultdict(list)
    unknown: list[str] = []
    ids: set[Any] = set()
    for index, annotation in enumerate(annotations):
        try:
            image_id, caption = annotation["image_id"], annotation["caption"].strip()
            number = annotation.get("id", f"#{index}")
            if number in ids:
                raise DataFormatError(f"{path}: annotation id {number} is listed twice")
            ids.add(number)
            if image_id not in files:
                unknown.append(f"annotation {number} -> unknown image {image_id}")
                continue
        except KeyError as error:
            raise DataFormatError(f"{path}: annotations[{index}] lacks {error}") from None
        except (TypeError, AttributeError) as error:
            raise DataFormatError(
                f"{path}: annotations[{index}] is not a record with image_id and caption: {error}"
            ) from None
        if not caption:
            raise DataFormatError(f"{path}: annotation {number} (image {image_id}) is empty")
        captions[image_id].append(caption)
    if unknown:
        raise DataFormatError(
            f"{path}: {len(unknown)} captions refer to images not in its 'images' list: "
            f"{_shown(unknown)}"
        )
    return captions


def _line_records(path: Path, image_root: Path) -> list[Labelled]:
    """Rows `image<sep>caption[<sep>split]`, grouped by image in order of first appearance.

    `.csv` is comma-separated (quote captions with commas), `.tsv` tab-separated, `.txt`
    whichever its first line uses. A first row naming its columns (image, caption) is a header.
    """
    text = read_utf8(path)
    comma = path.suffix.lower() == ".csv" or (
        path.suffix.lower() == ".txt" and "\t" not in text.lstrip("\n").partition("\n")[0]
    )
    quoting = csv.QUOTE_MINIMAL if comma else csv.QUOTE_NONE
    rows = csv.reader(io.StringIO(text), delimiter="," if comma else "\t", quoting=quoting)
    captions: dict[str, list[str]] = {}
    split_of: dict[str, str | None] = {}
    line_of: dict[tuple[str, str], int] = {}  # (image, caption) -> line, to find duplicates
    given: dict[bool, int] = {}  # does a row give a split? -> first such line
    try:
        for row in rows:
            where = f"{path}:{rows.line_num}"
            if not any(cell.strip() for cell in row) or (not given and _is_header(row)):
                continue
            image, caption, split = _row_fields(row, where, comma)
            if (image, caption) in line_of:
                raise DataFormatError(
                    f"{where}: same image and caption as line {line_of[image, caption]}"
                )
            line_of[image, caption] = rows.line_num
            given.setdefault(split is not None, rows.line_num)
            if len(given) == 2:
                raise DataFormatError(
                    f"{where}: some lines give a split (line {given[True]}) and some do not "
                    f"(line {given[False]}); give one on every line or on none"
                )
            if split_of.setdefault(image, split) != split:
                raise DataFormatError(
                    f"{where}: {image} is put in {split}, an earlier line put it in {split_of[image]}"
                )
            captions.setdefault(image, []).append(caption)
    except csv.Error as error:
        raise DataFormatError(f"{path}:{rows.line_num}: {error}") from None
    return [
        (CaptionExample(image_root / image, tuple(texts), image), split_of[image])
        for image, texts in captions.items()
    ]


def _is_header(row: list[str]) -> bool:
    cells = [cell.strip().lower() for cell in row]
    return cells[0] in _HEADER_IMAGE or (len(cells) > 1 and cells[1] in _HEADER_CAPTION)


def _row_fields(row: list[str], where: str, comma: bool) -> tuple[str, str, str | None]:
    """(image, caption, split or None) of one row; DataFormatError saying what is wrong."""
    if len(row) < 2:
        separator = "a comma" if comma else "a tab"
        raise DataFormatError(
            f"{where}: one column; expected image and caption separated by {separator}"
        )
    if len(row) > 3:
        hint = "; put captions that contain commas in double quotes" if comma else ""
        raise DataFormatError(
            f"{where}: {len(row)} columns; expected image, caption and optionally split{hint}"
        )
    image, caption = _CAPTION_NUMBER.sub("", row[0].strip()), row[1].strip()
    if not image:
        raise DataFormatError(f"{where}: no image path in the first column")
    if not caption:
        raise DataFormatError(f"{where}: empty caption")
    if len(row) == 2:
        return image, caption, None
    split = row[2].strip()
    if split not in KNOWN_SPLITS:
        raise DataFormatError(f"{where}: unknown split {split!r} (known: {sorted(KNOWN_SPLITS)})")
    return image, caption, KNOWN_SPLITS[split]


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
