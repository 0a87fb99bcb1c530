"""Write the images of the photo-like set (emoji styles, Tux Paint stamps, composites) and list them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from models.atomic import WriteFailedError
from training.data.builds import write_once
from training.data.common import parallel_map
from training.data.composite import (
    Background,
    CompositeJob,
    held_out_backgrounds,
    load_backgrounds,
    write_composite,
)
from training.data.emoji import Concept, concept_split, image_filename
from training.data.iconify import IconSet, match_icons, svg_png
from training.data.photo_records import Item, caption_split_table, composite_seed, composite_styles
from training.data.photo_records import stamp_split as split_of_stamp
from training.data.tuxpaint import Stamp, find_stamps, stamp_filename, stamp_png

EMOJI_SIZE = 64  # as data/emoji
STAMP_SIZE = 224  # the encoder's input size


@dataclass(frozen=True)
class Sources:
    """Everything the set is made from, already on disk."""

    concepts: Mapping[str, Concept]
    labels_de: Mapping[str, str]  # concept key -> German label
    icon_sets: Mapping[str, IconSet]  # style -> Iconify set
    name_index: Mapping[str, str]  # compact name -> concept key, for sets without a hexcode table
    stamps_dir: Path
    backgrounds: list[Background]
    svg_files: Mapping[str, Mapping[str, Path]] = field(default_factory=dict)  # style -> key -> SVG


@dataclass(frozen=True)
class BuildOptions:
    """What to hold out and how many composites to make."""

    held_out_style: str = "fxemoji"
    composites_train: int = 3
    composites_eval: int = 2
    composite_emoji_styles: tuple[str, ...] = ("fluent", "fluent-flat", "emojione", "openmoji")


def _render_job(job: tuple[str, Path]) -> bool:
    try:
        write_once(job[1], lambda: svg_png(job[0], EMOJI_SIZE))  # kept when resumed
        return True
    except WriteFailedError:  # a full disk stops the build
        raise
    except Exception:  # a broken SVG loses only that image
        return False


def emoji_item(style: str, key: str, sources: Sources) -> Item:
    """The record of one emoji image in one style."""
    concept = sources.concepts[key]
    return Item(
        style=style,
        source="emoji",
        folder=style,
        filename=image_filename(key),
        concept=f"emoji:{key}",
        concept_split=concept_split(concept),
        caption=concept.caption,
        caption_de=sources.labels_de.get(key, ""),
    )


def render_icon_sets(
    sources: Sources, images: Path
) -> tuple[dict[str, list[str]], dict[str, object]]:
    """Render every matched icon of every set to images/<style>/<key>.png; keys and match rates."""
    kept: dict[str, list[str]] = {}
    stats: dict[str, object] = {}
    for style, icon_set in sources.icon_sets.items():
        matched = match_icons(icon_set, sources.concepts, sources.name_index)
        (images / style).mkdir(parents=True, exist_ok=True)
        keys = sorted(matched)
        jobs = [(icon_set.svg(matched[k]), images / style / image_filename(k)) for k in keys]
        ok = parallel_map(_render_job, jobs)
        kept[style] = [k for k, good in zip(keys, ok, strict=True) if good]
        stats[style] = {
            "icons": len(icon_set.icons),
            "aliases": len(icon_set.aliases),
            "icons_or_aliases_matched": len(set(matched.values())),
            "match_rate": round(len(set(matched.values())) / max(1, len(icon_set.names())), 3),
            "concepts_rendered": len(kept[style]),
            "failed_to_render": len(keys) - len(kept[style]),
        }
    return kept, stats


def _write_stamp_job(job: tuple[Stamp, Path]) -> bool:
    try:
        write_once(job[1], lambda: stamp_png(job[0], STAMP_SIZE))  # kept when resumed
        return True
    except WriteFailedError:  # a full disk stops the build
        raise
    except Exception:  # an unreadable stamp loses only that stamp
        return False


def stamp_items(sources: Sources, images: Path) -> tuple[list[Item], list[Stamp], int]:
    """Write every stamp to images/tuxpaint; its items, the stamps written, and how many were skipped."""
    stamps, skipped = find_stamps(sources.stamps_dir)
    (images / "tuxpaint").mkdir(parents=True, exist_ok=True)
    ok = parallel_map(
        _write_stamp_job, [(s, images / "tuxpaint" / stamp_filename(s.stamp_id)) for s in stamps]
    )
    emoji_splits = caption_split_table(sources.concepts)
    written = [s for s, good in zip(stamps, ok, strict=True) if good]
    items = [
        Item(
            style="tuxpaint",
            source="tuxpaint",
            folder="tuxpaint",
            filename=stamp_filename(s.stamp_id),
            concept=f"tuxpaint:{s.stamp_id}",
            concept_split=split_of_stamp(s.caption, emoji_splits),
            caption=s.caption,
            caption_de=s.caption_de,
        )
        for s in written
    ]
    return items, written, skipped + len(stamps) - len(written)


def _emoji_svg(
    style: str, key: str, sources: Sources, names: Mapping[str, Mapping[str, str]]
) -> str | Path | None:
    if style in sources.icon_sets:
        name = names[style].get(key)
        return sources.icon_sets[style].svg(name) if name else None
    return sources.svg_files.get(style, {}).get(key)


def _job(
    out: Path, concept: str, index: int, backgrounds: list[int], obj: str | Path, mirror: bool
) -> CompositeJob:
    seed = composite_seed(concept, index)
    svg, image = (obj, None) if isinstance(obj, str) else (None, obj)
    return CompositeJob(out, seed, backgrounds[seed % len(backgrounds)], image, svg, mirror)


def _plan(
    base: Item,
    objects: list[tuple[str, str | Path]],
    mirror: bool,
    groups: Mapping[bool, list[int]],
    folder: Path,
    options: BuildOptions,
) -> list[tuple[Item, CompositeJob]]:
    """The composites of one concept; `objects` are (style, SVG document or image file), cycled."""
    train = base.concept_split == "train"
    stem = base.concept.replace(":", "-").replace("/", "__")
    plans = []
    for index in range(options.composites_train if train else options.composites_eval):
        style, obj = objects[index % len(objects)]
        job = _job(folder / f"{stem}-{index}.jpg", base.concept, index, groups[train], obj, mirror)
        item = replace(
            base, style=style, source="composite", folder="composite", filename=job.out.name
        )
        plans.append((item, job))
    return plans


def composite_items(
    sources: Sources, stamps: list[tuple[Stamp, Item]], images: Path, options: BuildOptions
) -> list[Item]:
    """Write composites of every PNG stamp and every base emoji; val/test ones on held-out photos."""
    folder = images / "composite"
    folder.mkdir(parents=True, exist_ok=True)
    names = [b.name for b in sources.backgrounds]
    held_out = held_out_backgrounds(names)
    groups = {  # is the concept in train -> background indices it may use
        True: [i for i, n in enumerate(names) if n not in held_out] or list(range(len(names))),
        False: [i for i, n in enumerate(names) if n in held_out] or list(range(len(names))),
    }
    styles = [s for s in options.composite_emoji_styles if s != options.held_out_style]
    matched = {
        s: match_icons(sources.icon_sets[s], sources.concepts, sources.name_index)
        for s in styles
        if s in sources.icon_sets
    }
    plans: list[tuple[Item, CompositeJob]] = []
    for stamp, item in stamps:
        if stamp.kind == "png":  # the photographic cut-outs; SVG stamps are clip art
            plans += _plan(item, [("tuxpaint", stamp.image)], stamp.mirror, groups, folder, options)
    count = max(options.composites_train, options.composites_eval)
    for key, concept in sorted(sources.concepts.items()):
        if concept.base_key != key:
            continue  # skin-tone variants would multiply one concept five times
        found = {s: _emoji_svg(s, key, sources, matched) for s in styles}
        available = [s for s, obj in found.items() if obj is not None]
        if available:
            objects = [(s, found[s]) for s in composite_styles(key, available, count)]
            # emoji are never mirrored: arrows and text would change meaning
            base = emoji_item(available[0], key, sources)
            plans += _plan(base, objects, False, groups, folder, options)  # type: ignore[arg-type]
    plans = [(replace(item, background=names[job.background]), job) for item, job in plans]
    ok = parallel_map(
        write_composite,
        [job for _, job in plans],
        setup=partial(load_backgrounds, [b.path for b in sources.backgrounds]),
    )
    return [item for (item, _), good in zip(plans, ok, strict=True) if good]
