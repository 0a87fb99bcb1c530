"""Prepare the emoji captioning set: CLDR labels for Google, Twitter and OpenMoji images, split by concept."""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from models.atomic import WriteFailedError, write_text
from training.data.builds import add_force_flag, already_built, building, request_of, write_once
from training.data.common import (
    DEFAULT_FRACTIONS,
    SplitFractions,
    data_root,
    downloads_dir,
    fetch_npm,
    source_entry,
    stable_split,
    write_manifest,
)
from training.errors import run_main

LABELS_PACKAGE = ("emojibase-data", "17.0.0", "MIT")
PNG_STYLES = {  # style -> (npm package, version, licence)
    "google": ("emoji-datasource-google", "16.0.0", "Apache-2.0"),
    "twitter": ("emoji-datasource-twitter", "16.0.0", "CC-BY-4.0"),
}
OPENMOJI_PACKAGE = ("openmoji", "17.0.0", "CC-BY-SA-4.0")
IMAGE_SIZE = 64
KARPATHY_SPLIT = {"train": "train", "valid": "val", "test": "test"}
_TOKEN = re.compile(r"\w+(?:['’.-]\w+)*|[#*]")  # words, plus the keycap symbols


@dataclass(frozen=True)
class Concept:
    """One captionable emoji: its key (hexcode without FE0F), caption, and the base emoji it varies."""

    key: str
    hexcode: str
    caption: str
    base_key: str


def emoji_key(hexcode: str) -> str:
    """Matching key for a hexcode or image stem: upper case, `-FE0F` variation selectors removed."""
    parts = [p for p in hexcode.strip().upper().replace("_", "-").split("-") if p and p != "FE0F"]
    return "-".join(parts)


def load_concepts(entries: Iterable[Mapping[str, object]]) -> dict[str, Concept]:
    """Concepts from emojibase entries; skin-tone variants point at their base emoji via `base_key`."""
    concepts: dict[str, Concept] = {}
    for entry in entries:
        base = _concept(entry, base_key=None)
        concepts.setdefault(base.key, base)
        for skin in entry.get("skins") or ():  # type: ignore[union-attr]
            variant = _concept(skin, base_key=base.key)
            concepts.setdefault(variant.key, variant)
    return concepts


def _concept(entry: Mapping[str, object], base_key: str | None) -> Concept:
    hexcode = str(entry["hexcode"])
    key = emoji_key(hexcode)
    caption = str(entry["label"]).lower()
    return Concept(key=key, hexcode=hexcode, caption=caption, base_key=base_key or key)


def concept_split(concept: Concept, fractions: SplitFractions = DEFAULT_FRACTIONS) -> str:
    """Split of a concept: decided by its base emoji, so skin-tone variants follow their base."""
    return stable_split(f"emoji:{concept.base_key}", fractions)


def index_images(folder: Path, suffix: str) -> dict[str, Path]:
    """Map matching key -> image file for every `*.suffix` in folder (names are hexcodes in any case)."""
    index: dict[str, Path] = {}
    for path in sorted(folder.glob(f"*{suffix}")):
        key = emoji_key(path.name[: -len(suffix)])
        if key in index:
            raise ValueError(f"{path} and {index[key]} both map to emoji {key}")
        index[key] = path
    return index


def copy_style(
    style: str, images: Mapping[str, Path], concepts: Mapping[str, Concept], out: Path
) -> list[str]:
    """Copy the raw PNG of every labelled emoji to `out/<style>/<key>.png` (those a resumed
    build already has are kept); return the keys copied."""
    (out / style).mkdir(parents=True, exist_ok=True)
    kept = sorted(key for key in images if key in concepts)
    for key in kept:
        write_once(out / style / image_filename(key), images[key].read_bytes)
    return kept


def render_openmoji(
    svgs: Mapping[str, Path], concepts: Mapping[str, Concept], out: Path
) -> tuple[list[str], int]:
    """Render labelled OpenMoji SVGs to 64x64 RGBA PNGs; return keys rendered and failures."""
    import cairosvg  # optional dependency, only needed for this style

    (out / "openmoji").mkdir(parents=True, exist_ok=True)
    kept, failed = [], 0
    for key in sorted(k for k in svgs if k in concepts):
        try:
            write_once(
                out / "openmoji" / image_filename(key),
                lambda svg=svgs[key]: cairosvg.svg2png(
                    url=str(svg), output_width=IMAGE_SIZE, output_height=IMAGE_SIZE
                ),
            )
            kept.append(key)
        except WriteFailedError:  # a full disk stops the build
            raise
        except Exception:  # a broken SVG loses only that image, not the run
            failed += 1
    return kept, failed


def image_filename(key: str) -> str:
    """File name of an emoji image: lower-case key, e.g. `1f44b-1f3fb.png`."""
    return f"{key.lower()}.png"


def karpathy_images(
    styles: Mapping[str, list[str]], concepts: Mapping[str, Concept]
) -> list[dict[str, object]]:
    """Karpathy-format image records, one per (style, emoji), with one caption each."""
    records: list[dict[str, object]] = []
    for style in sorted(styles):
        for key in styles[style]:
            concept = concepts[key]
            imgid = len(records)
            records.append(
                {
                    "filepath": style,
                    "filename": image_filename(key),
                    "imgid": imgid,
                    "split": KARPATHY_SPLIT[concept_split(concept)],
                    "sentences": [
                        {
                            "raw": concept.caption,
                            "tokens": _TOKEN.findall(concept.caption),
                            "imgid": imgid,
                            "sentid": imgid,
                        }
                    ],
                    "sentids": [imgid],
                    "hexcode": concept.hexcode,
                    "base_key": concept.base_key,
                }
            )
    return records


def count_records(
    records: list[dict[str, object]], concepts: Mapping[str, Concept]
) -> dict[str, object]:
    """Image counts per split and style, and concept counts per split."""
    per_split = Counter(str(r["split"]) for r in records)
    per_style = Counter(f"{r['filepath']}/{r['split']}" for r in records)
    concept_splits = {str(r["hexcode"]): str(r["split"]) for r in records}
    return {
        "images": len(records),
        "images_per_split": dict(sorted(per_split.items())),
        "images_per_style_split": dict(sorted(per_style.items())),
        "concepts_per_split": dict(sorted(Counter(concept_splits.values()).items())),
        "base_concepts": len({r["base_key"] for r in records}),
        "labelled_concepts_in_emojibase": len(concepts),
    }


NOTES = [
    "caption: the CLDR label lower-cased; `tokens` is a convenience, `raw` is the caption",
    "images: raw PNG bytes as shipped (RGBA, some LA or P), never composited onto a background",
    "split: sha256 of 'emoji:<base hexcode>' 80/10/10, so skin-tone variants follow their base emoji",
]


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line flags of `python -m training.data.emoji`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="output folder (default: <data root>/emoji)"
    )
    parser.add_argument(
        "--no-openmoji", action="store_true", help="skip the OpenMoji style (default: include it)"
    )
    add_force_flag(parser)
    return parser


def prepare_images(
    concepts: Mapping[str, Concept], images_dir: Path, openmoji: bool
) -> tuple[dict[str, list[str]], list[dict[str, str]], list[str]]:
    """Fetch every style and write its images; return keys per style, manifest sources and notes."""
    cache = downloads_dir() / "extracted"
    styles: dict[str, list[str]] = {}
    sources: list[dict[str, str]] = []
    notes: list[str] = []
    for style, (package, version, licence) in PNG_STYLES.items():
        download = fetch_npm(package, version, cache / f"{package}-{version}")
        pngs = index_images(download.extracted / f"package/img/{style}/{IMAGE_SIZE}", ".png")
        styles[style] = copy_style(style, pngs, concepts, images_dir)
        sources.append(source_entry(download, licence))
        notes.append(
            f"{style}: {len(pngs)} PNGs, {len(pngs) - len(styles[style])} without an emojibase label"
        )
    if openmoji:
        package, version, licence = OPENMOJI_PACKAGE
        download = fetch_npm(package, version, cache / f"{package}-{version}")
        svgs = index_images(download.extracted / "package/color/svg", ".svg")
        styles["openmoji"], failed = render_openmoji(svgs, concepts, images_dir)
        sources.append(source_entry(download, licence))
        unlabelled = len(svgs) - len(styles["openmoji"]) - failed
        notes.append(
            f"openmoji: {len(svgs)} SVGs, {unlabelled} without an emojibase label (OpenMoji extras), "
            f"{failed} failed to render; rendered with cairosvg to {IMAGE_SIZE}x{IMAGE_SIZE} RGBA"
        )
    return styles, sources, notes


def main(args: argparse.Namespace) -> dict[str, object]:
    """Download sources, write images, `dataset_emoji.json` and `manifest.json`; return the counts."""
    start = time.monotonic()
    out = args.out_dir or data_root() / "emoji"
    package, version, licence = LABELS_PACKAGE
    labels = fetch_npm(package, version, downloads_dir() / "extracted" / f"{package}-{version}")
    concepts = load_concepts(
        json.loads((labels.extracted / "package/en/data.json").read_text(encoding="utf-8"))
    )
    source = source_entry(labels, licence)
    request = request_of(
        args, labels=source["sha256"], styles=PNG_STYLES, openmoji=OPENMOJI_PACKAGE
    )
    if (done := already_built(out, request, args.force)) is not None:
        return done
    with building(out, request, resume=True) as staged:  # a killed run's images are kept
        images = staged / "images"
        styles, sources, notes = prepare_images(concepts, images, openmoji=not args.no_openmoji)
        records = karpathy_images(styles, concepts)
        dataset = {"dataset": "emoji", "images": records}
        write_text(staged / "dataset_emoji.json", json.dumps(dataset, ensure_ascii=False) + "\n")
        counts = count_records(records, concepts)
        found = f"{len(concepts)} labelled emoji in emojibase-data en/data.json"
        notes += [f"{found} (skin-tone variants included)", *NOTES]
        write_manifest(staged, [source, *sources], counts, notes, {"request": request})
    print("\n".join(notes))
    print(json.dumps(counts, indent=2))
    print(f"wrote {out} in {time.monotonic() - start:.1f} s")
    return counts


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())
