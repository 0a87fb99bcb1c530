"""Prepare the photo-like captioning set: every emoji style, Tux Paint stamps, composites on photos."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from models.atomic import write_text
from training.data.builds import add_force_flag, already_built, as_json, building
from training.data.common import (
    data_root,
    downloads_dir,
    fetch_deb,
    fetch_npm,
    fetch_pypi,
    source_entry,
    write_manifest,
)
from training.data.composite import Background
from training.data.emoji import (
    LABELS_PACKAGE,
    OPENMOJI_PACKAGE,
    PNG_STYLES,
    emoji_key,
    index_images,
    prepare_images,
)
from training.data.emoji import load_concepts as load_emoji_concepts
from training.data.iconify import IconSet, name_index
from training.data.photo_build import (
    BuildOptions,
    Sources,
    composite_items,
    emoji_item,
    render_icon_sets,
    stamp_items,
)
from training.data.photo_records import count_records, karpathy_records
from training.data.tuxpaint import STAMPS_DIR
from training.errors import run_main

ICONIFY_STYLES = {  # style -> (npm package, version, licence); noto, twemoji and openmoji are the
    # google, twitter and openmoji styles data/emoji already has, so they are not fetched twice
    "fluent": ("@iconify-json/fluent-emoji", "1.2.7", "MIT"),
    "fluent-flat": ("@iconify-json/fluent-emoji-flat", "1.2.6", "MIT"),
    "fluent-high-contrast": ("@iconify-json/fluent-emoji-high-contrast", "1.2.6", "MIT"),
    "emojione": ("@iconify-json/emojione", "1.2.3", "CC-BY-4.0"),
    "fxemoji": ("@iconify-json/fxemoji", "1.2.2", "Apache-2.0"),
}
# The project evaluates on these styles itself: never fetched, never trained or tuned on.
FORBIDDEN_PACKAGES = ("emoji-datasource-facebook", "emoji-datasource-apple")
TUXPAINT = ("tuxpaint-stamps-default", "GPL-2")
BACKGROUND_DEBS = {  # package -> (licence, photos); photos with a salient object of their own are
    # left out (flowers, ladybird, boats, leaf, kite, cups): a second subject the caption never names
    "mate-backgrounds": (
        "GPL-2+",
        [f"usr/share/backgrounds/mate/nature/{n}.jpg" for n in ("Aqua", "Blinds", "Dune")]
        + [f"usr/share/backgrounds/mate/nature/{n}.jpg" for n in ("GreenMeadow", "RainDrops")]
        + [f"usr/share/backgrounds/mate/nature/{n}.jpg" for n in ("Storm", "Wood")],
    ),
    "plasma-workspace-wallpapers": (
        "GPL-2+",
        [
            f"usr/share/wallpapers/{n}"
            for n in ("BytheWater", "ColdRipple", "DarkestHour", "Grey", "OneStandsOut", "Path")
        ]
        + ["usr/share/wallpapers/Volna", "usr/share/wallpapers/summer_1am"],
    ),
}
# chelsea, coffee, astronaut, rocket and motorcycle stay out: they are the real-photo checks.
SKIMAGE = ("scikit-image", "0.26.0", "CC0-1.0", ["brick.png", "grass.png", "gravel.png"])
NAME_TABLES = ["emojibase", "github", "iamcal", "joypixels", "cldr", "emojibase-legacy"]


def _package_dir(name: str, version: str) -> Path:
    return downloads_dir() / "extracted" / f"{name.lstrip('@').replace('/', '-')}-{version}"


def _wallpaper_file(path: Path) -> Path:
    """A wallpaper file, or for a Plasma wallpaper folder its smallest landscape image."""
    if path.is_file():
        return path
    images = [p for p in (path / "contents/images").iterdir() if "x" in p.stem]
    landscape = [p for p in images if int(p.stem.split("x")[0]) > int(p.stem.split("x")[1])]
    return min(landscape or images, key=lambda p: int(p.stem.split("x")[0]))


def fetch_backgrounds() -> tuple[list[Background], list[dict[str, str]]]:
    """Fetch the background packages; the photos and the manifest sources."""
    backgrounds, sources = [], []
    for package, (licence, paths) in BACKGROUND_DEBS.items():
        download = fetch_deb(package, _package_dir(package, "deb"))
        sources.append(source_entry(download, licence))
        for relative in paths:
            file = _wallpaper_file(download.extracted / relative)
            name = f"{package}:{Path(relative).stem if file == download.extracted / relative else Path(relative).name}"
            backgrounds.append(Background(name, file, package, download.version, licence))
    name, version, licence, files = SKIMAGE
    download = fetch_pypi(name, version, _package_dir(name, version))
    sources.append(source_entry(download, licence))
    for file in files:
        path = download.extracted / "skimage/data" / file
        backgrounds.append(Background(f"{name}:{Path(file).stem}", path, name, version, licence))
    return backgrounds, sources


def fetch_sources() -> tuple[Sources, list[dict[str, str]]]:
    """Fetch labels, Iconify sets, Tux Paint and backgrounds; the build inputs and manifest sources."""
    name, version, licence = LABELS_PACKAGE
    labels = fetch_npm(name, version, _package_dir(name, version))
    package = labels.extracted / "package"
    concepts = load_emoji_concepts(json.loads((package / "en/data.json").read_text("utf-8")))
    labels_de = german_labels(json.loads((package / "de/data.json").read_text("utf-8")))
    sources = [source_entry(labels, licence)]
    icon_sets = {}
    for style, (name, version, licence) in ICONIFY_STYLES.items():
        if name in FORBIDDEN_PACKAGES:  # held out for the project's own evaluation
            raise ValueError(f"{name} is held out: never train or tune on it")
        download = fetch_npm(name, version, _package_dir(name, version))
        icon_sets[style] = IconSet.load(download.extracted / "package")
        sources.append(source_entry(download, licence))
    tables = [json.loads((package / "meta/unicode-names.json").read_text("utf-8"))]
    tables += [
        json.loads((package / f"en/shortcodes/{t}.json").read_text("utf-8")) for t in NAME_TABLES
    ]
    tables.append(icon_sets["fluent-flat"].chars)  # Fluent 3D uses Fluent Flat's names
    name, licence = TUXPAINT
    tuxpaint = fetch_deb(name, _package_dir(name, "deb"))
    sources.append(source_entry(tuxpaint, licence))
    backgrounds, background_sources = fetch_backgrounds()
    name, version, licence = OPENMOJI_PACKAGE
    openmoji = fetch_npm(name, version, _package_dir(name, version))
    svgs = index_images(openmoji.extracted / "package/color/svg", ".svg")
    built = Sources(
        concepts=concepts,
        labels_de=labels_de,
        icon_sets=icon_sets,
        name_index=name_index(concepts, tables),
        stamps_dir=tuxpaint.extracted / STAMPS_DIR,
        backgrounds=backgrounds,
        svg_files={"openmoji": svgs},
    )
    return built, sources + background_sources


def german_labels(entries: list[dict[str, object]]) -> dict[str, str]:
    """Concept key -> emojibase German label, case kept (German nouns are capitalised)."""
    labels: dict[str, str] = {}
    for entry in entries:
        for item in [entry, *(entry.get("skins") or ())]:  # type: ignore[misc]
            labels.setdefault(emoji_key(str(item["hexcode"])), str(item["label"]))
    return labels


def build(
    out: Path, sources: Sources, options: BuildOptions, datasource_styles: bool
) -> tuple[list[dict[str, object]], list[dict[str, str]], dict[str, object], list[str]]:
    """Write every image under out/images; the Karpathy records, extra sources, stats and notes."""
    images = out / "images"
    extra_sources: list[dict[str, str]] = []
    notes: list[str] = []
    items = []
    if datasource_styles:  # google, twitter, openmoji exactly as data/emoji writes them
        styles, extra_sources, notes = prepare_images(sources.concepts, images, openmoji=True)
        items += [emoji_item(style, key, sources) for style, keys in styles.items() for key in keys]
    icon_keys, match_stats = render_icon_sets(sources, images)
    items += [emoji_item(style, key, sources) for style, keys in icon_keys.items() for key in keys]
    tux_items, stamps, skipped = stamp_items(sources, images)
    items += tux_items
    items += composite_items(sources, list(zip(stamps, tux_items, strict=True)), images, options)
    records = karpathy_records(items, options.held_out_style)
    stats = {
        "iconify_match": match_stats,
        "tuxpaint_stamps": len(stamps),
        "tuxpaint_skipped": skipped,
    }
    return records, extra_sources, stats, notes


NOTES = [
    "captions: emoji = CLDR label lower-cased (as data/emoji); Tux Paint = first line of NAME.txt "
    "without a leading a/an and final punctuation, lower-cased; German = emojibase de label or the "
    "de.utf8= line (leading ein/eine... and final punctuation removed, case kept)",
    "split: emoji by sha256 of 'emoji:<base hexcode>' 80/10/10 (the same concepts as data/emoji); a "
    "stamp whose caption equals an emoji caption follows that emoji, else sha256 of "
    "'tuxpaint:<caption>'; composites follow their concept",
    "held-out style: every image of it is in test_style (all its concepts; concept_split says "
    "which were seen in other styles), never in train/val, and never composited",
    "composites: 224x224 JPEG; background = random crop (5-60% of the photo area) and flip; object "
    "cropped to its alpha box, mirrored only if allowed (stamps without nomirror; never emoji), "
    "rotated +-12 deg, longer side 35-85% of the image, anywhere inside; then colour jitter, blur "
    "(p=0.4) and JPEG quality 45-95; seed = hash of concept and index",
    "composites of train concepts use the training backgrounds; val and test_composite use the "
    "held-out backgrounds (a third, by hash), so both concept and photo are new",
]


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line flags of `python -m training.data.photo`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="output folder (default: <data root>/photo)"
    )
    parser.add_argument(
        "--held-out-style", default="fxemoji", help="style kept for test_style (default: fxemoji)"
    )
    parser.add_argument(
        "--composites-train", type=int, default=3, help="composites per train concept (default: 3)"
    )
    parser.add_argument(
        "--composites-eval",
        type=int,
        default=2,
        help="composites per val/test concept (default: 2)",
    )
    add_force_flag(parser)
    return parser


def main(args: argparse.Namespace) -> dict[str, object]:
    """Fetch, write images, `dataset_photo.json` and `manifest.json`; return the counts."""
    start = time.monotonic()
    out = args.out_dir or data_root() / "photo"
    options = BuildOptions(args.held_out_style, args.composites_train, args.composites_eval)
    sources, manifest_sources = fetch_sources()
    counts = prepare(out, sources, manifest_sources, options, force=args.force)
    print(f"{out} in {time.monotonic() - start:.1f} s")
    return counts


def prepare(
    out: Path,
    sources: Sources,
    manifest_sources: list[dict[str, str]],
    options: BuildOptions,
    datasource_styles: bool = True,
    force: bool = False,
) -> dict[str, object]:
    """Build the set into `out` unless it is up to date; a build killed part way is carried on
    (its finished images are kept) by the next one with the same sources and options."""
    request = as_json(
        {
            "options": asdict(options),
            "sources": [source.get("sha256") for source in manifest_sources],
            "emoji_styles": [PNG_STYLES, OPENMOJI_PACKAGE] if datasource_styles else None,
        }
    )
    if (done := already_built(out, request, force)) is not None:
        return done
    with building(out, request, resume=True) as staged:
        records, extra_sources, stats, notes = build(staged, sources, options, datasource_styles)
        all_sources = manifest_sources + extra_sources
        write_dataset(staged, records, all_sources, stats, notes, sources, options, request)
    counts = count_records(records)
    print(json.dumps({**counts, **stats}, indent=2))
    print(f"wrote {out}")
    return counts


def write_dataset(
    out: Path,
    records: list[dict[str, object]],
    sources: list[dict[str, str]],
    stats: dict[str, object],
    notes: list[str],
    inputs: Sources,
    options: BuildOptions,
    request: dict[str, Any] | None = None,
) -> None:
    """`dataset_photo.json` (Karpathy format plus extra fields) and the manifest."""
    dataset = {"dataset": "photo", "held_out_style": options.held_out_style, "images": records}
    write_text(out / "dataset_photo.json", json.dumps(dataset, ensure_ascii=False) + "\n")
    extra: dict[str, Any] = {
        "options": asdict(options),
        "backgrounds": [b.record() for b in inputs.backgrounds],
        "request": request,
    }
    write_manifest(out, sources, {**count_records(records), **stats}, [*NOTES, *notes], extra)


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())
