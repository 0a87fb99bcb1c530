"""Records and splits of the photo-like captioning set: concepts held out, one style held out."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from training.data.common import hash_fraction, stable_split
from training.data.emoji import Concept, concept_split

KARPATHY_SPLIT = {"train": "train", "valid": "val", "test": "test"}
COMPOSITE_SPLIT = {"train": "train", "valid": "val", "test": "test_composite"}
STYLE_SPLIT = "test_style"
_TOKEN = re.compile(r"\w+(?:['’.-]\w+)*|[#*]")  # as in training.data.emoji


@dataclass(frozen=True)
class Item:
    """One image before it gets an id: where it is, what it shows, and in which languages."""

    style: str  # how the object is drawn: google, fluent, tuxpaint, ...
    source: str  # emoji, tuxpaint or composite
    folder: str  # image sub-folder (Karpathy `filepath`); the `styles` filter matches it
    filename: str
    concept: str  # e.g. emoji:1F600 or tuxpaint:animals/mammals/giraffe
    concept_split: str  # train, valid or test
    caption: str
    caption_de: str
    background: str = ""  # composites only


def caption_split_table(concepts: Mapping[str, Concept]) -> dict[str, str]:
    """English caption -> split of the emoji concept carrying it (the emoji split decides first)."""
    return {c.caption: concept_split(c) for c in concepts.values()}


def stamp_split(caption: str, emoji_splits: Mapping[str, str]) -> str:
    """Split of a Tux Paint stamp: its emoji twin's split if one has the same caption, else by hash.

    Hashing the caption (not the file) keeps stamps with equal descriptions in one split.
    """
    return emoji_splits.get(caption) or stable_split(f"tuxpaint:{caption}")


def karpathy_split(item: Item, held_out_style: str) -> str:
    """The record's `split`: test_style for the held-out style, composites' test is test_composite."""
    if item.style == held_out_style:
        return STYLE_SPLIT
    table = COMPOSITE_SPLIT if item.source == "composite" else KARPATHY_SPLIT
    return table[item.concept_split]


def _sentences(caption: str, first_id: int, imgid: int) -> list[dict[str, object]]:
    if not caption:
        return []
    return [{"raw": caption, "tokens": _TOKEN.findall(caption), "imgid": imgid, "sentid": first_id}]


def karpathy_records(items: list[Item], held_out_style: str) -> list[dict[str, object]]:
    """Karpathy-format image records with extra fields: style, source, concept, concept_split,
    background and `sentences_de` (German, same shape as `sentences`, empty when there is none)."""
    records: list[dict[str, object]] = []
    for imgid, item in enumerate(items):
        records.append(
            {
                "filepath": item.folder,
                "filename": item.filename,
                "imgid": imgid,
                "split": karpathy_split(item, held_out_style),
                "sentences": _sentences(item.caption, imgid, imgid),
                "sentids": [imgid],
                "sentences_de": _sentences(item.caption_de, imgid, imgid),
                "style": item.style,
                "source": item.source,
                "concept": item.concept,
                "concept_split": item.concept_split,
                "background": item.background,
            }
        )
    return records


def composite_styles(key: str, available: list[str], count: int) -> list[str]:
    """The emoji style of each of a concept's `count` composites, rotating from a hashed start."""
    start = int(hash_fraction(f"composite-style:{key}") * len(available))
    return [available[(start + i) % len(available)] for i in range(count)]


def composite_seed(concept: str, index: int) -> int:
    """Seed of one composite: fixed by concept and index, independent of run order."""
    return int(hash_fraction(f"composite:{concept}:{index}") * 2**31)


def count_records(records: list[dict[str, object]]) -> dict[str, object]:
    """Images per split, per source/split and per style/split; concepts per split; German coverage."""

    def tally(field: str) -> dict[str, int]:
        return dict(sorted(Counter(f"{r[field]}/{r['split']}" for r in records).items()))

    concepts = {str(r["concept"]): str(r["concept_split"]) for r in records}
    return {
        "images": len(records),
        "images_per_split": dict(sorted(Counter(str(r["split"]) for r in records).items())),
        "images_per_source_split": tally("source"),
        "images_per_style_split": tally("style"),
        "concepts_per_split": dict(sorted(Counter(concepts.values()).items())),
        "images_with_german_caption": sum(1 for r in records if r["sentences_de"]),
    }
