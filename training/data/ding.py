"""Prepare German-English sentence and phrase pairs from Debian's Ding dictionary (`trans-de-en`)."""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter
from collections.abc import Iterable
from itertools import product
from pathlib import Path

from training.data.builds import add_force_flag, already_built, building, request_of
from training.data.common import (
    SPLITS,
    SplitFractions,
    data_root,
    downloads_dir,
    fetch_deb,
    source_entry,
    stable_split,
    write_lines,
    write_manifest,
)
from training.errors import run_main

PACKAGE, LICENCE = "trans-de-en", "GPL-2+"
DICTIONARY = "usr/share/trans/de-en"
MAX_WORDS = 40
MIN_PHRASE_WORDS = 4
Pair = tuple[str, str]  # (German, English)

_ANNOTATIONS = [
    re.compile(r"\s*\{[^{}]*\}"),  # {f} {pl} {vt} {hid; hidden}: grammar
    re.compile(r"\s*\[[^\[\]]*\]"),  # [Br.] [ugs.] [comp.]: region, register, field
    re.compile(r"\s*<[^<>]*>"),  # <genügen>: search keywords
    re.compile(r"\s*~[^;]*"),  # ~Reparationen, ~ legal aid: cross reference to the synonym's end
    re.compile(r"\s+/[^\s/][^/]*[^\s/]/(?=[\s;,]|$)"),  # /IFP/ /bu.; bsh./: abbreviations
]
_PARENTHESES = re.compile(r"\s*\([^()]*\)")  # (zoologische Familie), (on a menu): innermost first
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,!?:;…])")
_ALLOWED = re.compile(r"[0-9A-Za-zÀ-ÖØ-öø-ÿŒœ .,!?:'\"„“”‚‘»«…–%€$£&-]+")
_SENTENCE = re.compile(r"[„“\"‚'»«]?[A-ZÄÖÜ0-9].*[.!?][“”\"'‘«»]?")
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'"})
CLEANING_RULES = [
    "split each line at ' :: ' into German and English; split both at ' | ' into aligned parts",
    "remove {..} grammar, [..] labels, <..> keywords, ~cross references, /abbreviations/, (..) notes",
    "split parts at ';' into synonyms; equal counts pair by position, else every German with every "
    "English synonym",
    "typographic apostrophes become ', spaces are collapsed, no space before punctuation",
    "keep sentences (both sides start with a capital or digit and end with . ! ?) and other phrases "
    f"of {MIN_PHRASE_WORDS}+ words on one side and {MIN_PHRASE_WORDS - 1}+ on the other",
    f"drop empty pairs, pairs over {MAX_WORDS} words on either side, and pairs with other characters "
    "(slashes, brackets, =, +, ...) left after cleaning; drop duplicates",
]


def strip_annotations(text: str) -> str:
    """Remove Ding markup: {grammar}, [labels], <keywords>, ~refs, /abbrevs/ and (notes)."""
    for pattern in _ANNOTATIONS:
        text = pattern.sub("", text)
    previous = None
    while previous != text:  # nested parentheses, innermost first
        previous, text = text, _PARENTHESES.sub("", text)
    return text


def tidy(text: str) -> str:
    """Collapse whitespace, drop spaces before punctuation, use plain apostrophes."""
    text = " ".join(text.translate(_APOSTROPHES).split())
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text).strip(" ,;")


def synonyms(part: str) -> list[str]:
    """The `;`-separated synonyms of one `|` part, cleaned; empty ones are dropped."""
    return [s for s in (tidy(s) for s in strip_annotations(part).split(";")) if s]


def parse_line(line: str) -> list[Pair]:
    """All cleaned (German, English) candidates on one dictionary line, before any filtering."""
    if line.startswith("#") or " :: " not in line:
        return []
    german, english = line.rstrip("\n").split(" :: ", 1)
    de_parts, en_parts = german.split(" | "), english.split(" | ")
    if len(de_parts) != len(en_parts):
        return []
    pairs: list[Pair] = []
    for de_part, en_part in zip(de_parts, en_parts, strict=True):
        de, en = synonyms(de_part), synonyms(en_part)
        pairs += list(zip(de, en, strict=True)) if len(de) == len(en) else list(product(de, en))
    return pairs


def is_sentence(text: str) -> bool:
    """Whether a cleaned text looks like a sentence: capital or digit first, . ! ? last."""
    return _SENTENCE.fullmatch(text) is not None


def classify(pair: Pair) -> str:
    """ "sentence" or "phrase" for a pair to keep, else the reason it is dropped."""
    de, en = pair
    de_words, en_words = len(de.split()), len(en.split())
    if not de_words or not en_words:
        return "empty"
    if max(de_words, en_words) > MAX_WORDS:
        return "too_long"
    if not (_ALLOWED.fullmatch(de) and _ALLOWED.fullmatch(en)):
        return "other_characters"
    if is_sentence(de) and is_sentence(en):
        return "sentence"
    if (
        max(de_words, en_words) >= MIN_PHRASE_WORDS
        and min(de_words, en_words) >= MIN_PHRASE_WORDS - 1
    ):
        return "phrase"
    return "short_phrase"


def extract_pairs(lines: Iterable[str]) -> tuple[list[Pair], Counter[str]]:
    """Kept, de-duplicated pairs in dictionary order, and a count of each keep or drop reason."""
    kept: dict[Pair, None] = {}
    reasons: Counter[str] = Counter()
    for line in lines:
        for pair in parse_line(line):
            reason = classify(pair)
            reasons[reason] += 1
            if reason in ("sentence", "phrase"):
                if pair in kept:
                    reasons["duplicate"] += 1
                kept[pair] = None
    return list(kept), reasons


def normalize(text: str) -> str:
    """Comparison key for leakage checks: lower case, letters and digits only."""
    return " ".join(re.findall(r"\w+", text.lower()))


def split_pairs(pairs: list[Pair], target: int) -> tuple[dict[str, list[Pair]], Counter[str]]:
    """Split by hash of the normalized English; valid/test lose pairs whose sides occur earlier.

    The held-out fraction is chosen so that about `target` pairs are left in valid and in test after
    the overlap filter: one pass measures how many the filter removes, a second pass compensates.
    """
    held_out = min(target / max(len(pairs), 1), 0.25)
    splits, removed = remove_overlap(assign_splits(pairs, held_out))
    left = (len(splits["valid"]) + len(splits["test"])) / 2
    if left:
        held_out = min(held_out * target / left, 0.25)
        splits, removed = remove_overlap(assign_splits(pairs, held_out))
    return splits, removed


def assign_splits(pairs: list[Pair], held_out: float) -> dict[str, list[Pair]]:
    """Assign each pair by the stable hash of its normalized English side (held_out each to valid, test)."""
    fractions = SplitFractions(train=1 - 2 * held_out, valid=held_out, test=held_out)
    assigned: dict[str, list[Pair]] = {name: [] for name in SPLITS}
    for pair in pairs:
        assigned[stable_split(f"ding:{normalize(pair[1])}", fractions)].append(pair)
    return assigned


def remove_overlap(assigned: dict[str, list[Pair]]) -> tuple[dict[str, list[Pair]], Counter[str]]:
    """Drop from each split the pairs whose German or English side occurs in an earlier split."""
    seen_de: set[str] = set()
    seen_en: set[str] = set()
    removed: Counter[str] = Counter()
    result: dict[str, list[Pair]] = {}
    for name in SPLITS:  # train first, so train never loses pairs
        pairs = assigned[name]
        result[name] = [
            p for p in pairs if normalize(p[0]) not in seen_de and normalize(p[1]) not in seen_en
        ]
        removed[name] = len(pairs) - len(result[name])
        seen_de.update(normalize(de) for de, _ in pairs)
        seen_en.update(normalize(en) for _, en in pairs)
    return result, removed


def write_splits(out: Path, splits: dict[str, list[Pair]]) -> dict[str, int]:
    """Write Multi30k-style `<split>.de` / `<split>.en` line-aligned files; return pairs per split."""
    counts = {}
    for name, pairs in splits.items():
        write_lines(out / f"{name}.de", (de for de, _ in pairs))
        counts[name] = write_lines(out / f"{name}.en", (en for _, en in pairs))
    return counts


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line flags of `python -m training.data.ding`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="output folder (default: <data root>/de-en)"
    )
    parser.add_argument(
        "--held-out",
        type=int,
        default=2000,
        help="target pairs in valid and in test (default: 2000)",
    )
    add_force_flag(parser)
    return parser


def main(args: argparse.Namespace) -> dict[str, object]:
    """Fetch `trans-de-en`, extract, clean and split pairs, write files and manifest; return counts."""
    start = time.monotonic()
    out = args.out_dir or data_root() / "de-en"
    download = fetch_deb(PACKAGE, downloads_dir() / "extracted" / PACKAGE)
    source = source_entry(download, LICENCE)
    request = request_of(args, source=source["sha256"])
    if (done := already_built(out, request, args.force)) is not None:
        return done
    with open(download.extracted / DICTIONARY, encoding="utf-8") as f:
        pairs, reasons = extract_pairs(f)
    splits, leaked = split_pairs(pairs, args.held_out)
    with building(out, request) as staged:
        counts: dict[str, object] = {
            "pairs": write_splits(staged, splits),
            "kinds": {name: dict(Counter(map(classify, ps))) for name, ps in splits.items()},
            "dropped_for_overlap_with_earlier_split": dict(leaked),
            "kept_unique": len(pairs),
            "candidates_by_outcome": dict(sorted(reasons.items())),
        }
        write_manifest(staged, [source], counts, CLEANING_RULES, {"request": request})
    print(json.dumps(counts, indent=2))
    print(f"wrote {out} in {time.monotonic() - start:.1f} s")
    return counts


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())
