"""Check caption data users bring and write it as one Karpathy-format split file with a manifest."""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from models.atomic import write_text
from models.tokenizers import WordTokenizer
from training.data.builds import building, up_to_date
from training.data.common import parallel_map, sha256_file, write_manifest
from training.data.loaders import (
    HELD_OUT_CAP,
    CaptionExample,
    DataFormatError,
    load_caption_dataset,
)

DEFAULT_LICENCE = "unknown — set --licence"
OUTPUTS = frozenset({"dataset.json", "manifest.json"})
KARPATHY_SPLIT = {"train": "train", "valid": "val", "test": "test"}  # extra splits keep their name
_TOKENS = WordTokenizer(lowercase=True)  # how the captioner's vocabulary splits captions
SPLIT_RULE = (
    "splits: as the input gives them (Karpathy `split`, or a third column on every line); "
    "otherwise by training.data.common.stable_split of 'image:<image id>' (COCO id, or the "
    f"image path as a line gives it): valid and test each 5% of the images, at most "
    f"{HELD_OUT_CAP:,}, and at least one image each when there are three or more"
)
DESCRIPTION = """\
Check caption data (COCO captions, a Karpathy split file, or image/caption lines) and write
OUTPUT/dataset.json in Karpathy's format, with image paths relative to IMAGES (no image is
copied: train with --images IMAGES), and OUTPUT/manifest.json (sources, licence, counts).

Checks: the format of every record and line (missing column, empty caption, unknown split,
caption of an unknown image id, an image or a line listed twice), and that every image is a
file (--verify-images also decodes them). Errors name the file, the line or record, and the
first few missing images. Prints images, captions, tokens, vocabulary and tokens per caption
for each split. Re-running with the same inputs only checks that the output is up to date.
"""
EPILOG = """\
formats (told apart by the file):
  COCO captions JSON   captions_train2014.json (images + annotations); several files allowed.
                       Image: IMAGES/<folder>/file_name where <folder> (train2014) is taken from
                       coco_url or the file's name and exists, else IMAGES/file_name.
  Karpathy JSON        dataset_coco.json, dataset_flickr8k.json, dataset_flickr30k.json: keeps
                       its splits (restval -> train); image: IMAGES/filepath/filename.
  .tsv / .csv / .txt   image_path<TAB or ,>caption[<sep>split], one line per caption; an optional
                       header line (image,caption); CSV captions with commas in double quotes;
                       Flickr8k.token.txt's `name.jpg#0` works as is. Paths start at IMAGES.

splits: kept where the input has them; otherwise by the sha256 of each image's id (COCO id,
  or the path as the line gives it): 5% valid, 5% test, each at most 5,000 images.

example:
  python -m training.data.captions --input annotations/captions_train2014.json \\
      annotations/captions_val2014.json --images /data/coco --output data/coco \\
      --licence CC-BY-4.0 --source-name "COCO 2014"
"""


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line flags of `python -m training.data.captions`."""
    parser = argparse.ArgumentParser(
        prog="python -m training.data.captions",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--input",
        type=Path,
        nargs="+",
        required=True,
        metavar="FILE",
        help="COCO captions JSON file(s), one Karpathy JSON, or .tsv/.csv/.txt file(s)",
    )
    parser.add_argument(
        "--images",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder the images' paths start from (training uses the same)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder for dataset.json and manifest.json, e.g. data/coco",
    )
    parser.add_argument(
        "--language",
        default="en",
        help="caption language recorded; a Karpathy input is read from "
        "sentences_<language> unless en (default: en)",
    )
    parser.add_argument(
        "--licence",
        default=DEFAULT_LICENCE,
        help=f"licence of the data, shown in model cards (default: {DEFAULT_LICENCE!r})",
    )
    parser.add_argument(
        "--source-name",
        default=None,
        help="name of the data set in the manifest (default: the input file names)",
    )
    parser.add_argument(
        "--verify-images",
        action="store_true",
        help="decode every image to find corrupt files (slow at COCO size; "
        "default: only check that they exist)",
    )
    parser.add_argument(
        "--skip-missing",
        action="store_true",
        help="leave out images that are missing (or, with --verify-images, "
        "unreadable) instead of stopping (default: stop, naming the first few)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="check and write again even when the output is up to date",
    )
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Load and check the inputs, write dataset.json and manifest.json; return the counts."""
    start = time.monotonic()
    out: Path = args.output
    _check_output_folder(out)
    if not args.images.is_dir():
        raise FileNotFoundError(f"--images {args.images} is not a folder")
    sources = [_source(path, args.source_name, args.licence) for path in args.input]
    request = _request(args, sources)
    if not args.force and (counts := up_to_date(out, request)) is not None:
        print(f"{out} is up to date with these inputs (--force checks and writes again)")
        print(counts_table(counts))
        return counts
    splits, notes = load_checked(args)
    records = karpathy_records(splits, args.images, args.language)
    counts = record_counts(records, args.language)
    dataset = {"dataset": args.source_name or "captions", "language": args.language}
    text = json.dumps({**dataset, "images": records}, ensure_ascii=False, separators=(",", ":"))
    rules = [SPLIT_RULE, "tokens: words and punctuation, lower-cased, as the captioner splits them"]
    with building(out, request) as staged:  # out is replaced whole, never half written
        write_text(staged / "dataset.json", text + "\n")
        write_manifest(staged, sources, counts, rules + notes, extra={"request": request})
    print(counts_table(counts))
    if args.licence == DEFAULT_LICENCE:
        print("warning: the licence is unknown; model cards will say so (set --licence)")
    language = f" --language {args.language}" if args.language != "en" else ""
    print(
        f"wrote {out} in {time.monotonic() - start:.1f} s; train with: python -m "
        f"training.train_captioner --dataset {out / 'dataset.json'} --images {args.images}{language}"
    )
    return counts


def load_checked(args: argparse.Namespace) -> tuple[dict[str, list[CaptionExample]], list[str]]:
    """The inputs' splits, and what was left out (printed, and kept for the manifest's notes)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_caption_dataset(
            args.input, args.images, args.language, skip_missing=args.skip_missing
        )
    notes = [str(warning.message) for warning in caught]
    if args.verify_images:
        splits, unreadable = drop_unreadable(splits, args.images, args.skip_missing)
        notes += [unreadable] if unreadable else []
    for note in notes:
        print(f"warning: {note}")
    return splits, notes


def _check_output_folder(out: Path) -> None:
    """Refuse an output folder holding anything but this command's files (never overwrite data)."""
    if out.exists() and (not out.is_dir() or any(p.name not in OUTPUTS for p in out.iterdir())):
        raise FileExistsError(
            f"--output {out} holds other files; give a new folder (or one this command wrote)"
        )


def _source(path: Path, name: str | None, licence: str) -> dict[str, str]:
    """The manifest's record of one input file (model cards list name and licence)."""
    return {
        "name": name or path.name,
        "licence": licence,
        "file": path.name,
        "sha256": sha256_file(path),
    }


def _request(args: argparse.Namespace, sources: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """Everything the output depends on; equal requests give equal outputs."""
    return {
        "inputs": [
            {"path": str(path.resolve()), "sha256": source["sha256"]}
            for path, source in zip(args.input, sources, strict=True)
        ],
        "images": str(args.images.resolve()),
        **{key: getattr(args, key) for key in ("language", "licence", "source_name")},
        **{key: getattr(args, key) for key in ("skip_missing", "verify_images")},
    }


def _decode_problem(path: Path) -> str | None:
    """Why Pillow cannot decode the image at path, or None when it can."""
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError, bomb errors...
        return f"{type(error).__name__}: {error}"
    return None


def drop_unreadable(
    splits: dict[str, list[CaptionExample]], image_root: Path, skip: bool
) -> tuple[dict[str, list[CaptionExample]], str]:
    """Decode every image (two processes); an error naming the first few that fail, or with
    `skip` the splits without them and a note saying how many were left out."""
    paths = [example.image_path for examples in splits.values() for example in examples]
    bad = {
        p: why for p, why in zip(paths, parallel_map(_decode_problem, paths), strict=True) if why
    }
    if not bad:
        return splits, ""
    shown = "; ".join(f"{path}: {why}" for path, why in list(bad.items())[:5])
    what = f"{len(bad)} of {len(paths)} images under {image_root} cannot be decoded ({shown})"
    if not skip:
        raise DataFormatError(f"{what}; replace them, or leave them out with --skip-missing")
    kept = {
        name: [e for e in examples if e.image_path not in bad] for name, examples in splits.items()
    }
    return kept, f"{what}; left out"


def karpathy_records(
    splits: Mapping[str, list[CaptionExample]], image_root: Path, language: str
) -> list[dict[str, Any]]:
    """Karpathy-format image records, split by split; `filepath` is relative to image_root (or
    absolute for images outside it), `image_id` keeps the input's id, `imgid` counts from 0."""
    field = "sentences" if language == "en" else f"sentences_{language}"
    records: list[dict[str, Any]] = []
    sentid = 0
    for split, examples in splits.items():
        for example in examples:
            folder, name = _folder_and_name(example.image_path, image_root)
            imgid, sentids = len(records), list(range(sentid, sentid + len(example.captions)))
            sentences = [
                {"tokens": _TOKENS.tokenize(raw), "raw": raw, "imgid": imgid, "sentid": number}
                for raw, number in zip(example.captions, sentids, strict=True)
            ]
            records.append(
                {
                    "filepath": folder,
                    "filename": name,
                    "imgid": imgid,
                    "image_id": example.image_id,
                    "split": KARPATHY_SPLIT.get(split, split),
                    "sentids": sentids,
                    field: sentences,
                }
            )
            sentid += len(sentids)
    return records


def _folder_and_name(path: Path, image_root: Path) -> tuple[str, str]:
    """(filepath, filename) of an image: relative to image_root when under it, else absolute.
    String work, not pathlib: this runs for every image of COCO."""
    text, root = path.as_posix(), image_root.as_posix()
    prefix = "" if root == "." else root.rstrip("/") + "/"
    relative = text[len(prefix) :] if text.startswith(prefix) else text
    folder, _, name = relative.rpartition("/")
    return folder, name


def record_counts(records: Sequence[Mapping[str, Any]], language: str) -> dict[str, Any]:
    """Per split and in all: images, captions, tokens, vocabulary size, mean tokens per caption."""
    field = "sentences" if language == "en" else f"sentences_{language}"
    loader_name = {karpathy: name for name, karpathy in KARPATHY_SPLIT.items()}
    images, captions, words = Counter[str](), Counter[str](), {}
    for record in records:
        split = loader_name.get(record["split"], record["split"])
        images[split] += 1
        captions[split] += len(record[field])
        counter = words.setdefault(split, Counter[str]())
        for sentence in record[field]:
            counter.update(sentence["tokens"])
    images["all"], captions["all"] = images.total(), captions.total()
    words["all"] = sum(words.values(), Counter[str]())
    return {
        split: {
            "images": images[split],
            "captions": captions[split],
            "tokens": counter.total(),
            "vocabulary": len(counter),
            "tokens_per_caption": round(counter.total() / max(captions[split], 1), 2),
        }
        for split, counter in words.items()
    }


def counts_table(counts: Mapping[str, Mapping[str, Any]]) -> str:
    """The counts as a plain-text table, one row per split."""
    columns = ("images", "captions", "tokens", "vocabulary", "tokens_per_caption")
    lines = [f"{'split':<15}" + "".join(f"{name:>19}" for name in columns)]
    for split, row in counts.items():
        lines.append(f"{split:<15}" + "".join(f"{row[name]:>19,}" for name in columns))
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> None:
    """The `__main__` entry: data mistakes end in one line naming the file, not a traceback."""
    args = get_args_parser().parse_args(argv)
    try:
        main(args)
    except (DataFormatError, OSError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    run()
