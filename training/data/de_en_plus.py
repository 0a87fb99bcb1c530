"""Widen the Ding German-English pairs with every package that has translated text.

Training pairs: the Ding dictionary's train split (`training.data.ding`), LibreOffice's help
(documentation), Wesnoth's campaigns and core data (dialogue and story), Tux Paint's stamp
descriptions and emojibase's emoji labels. Ding's valid and test splits are kept as they are, so
scores compare with models trained on Ding alone; valid also gets a small stable share of the new
sources. A second test set of everyday sentences comes from FreedroidRPG's dialogue, a source no
training pair comes from; German monolingual text for back-translation from `fortunes-de`.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Iterable
from pathlib import Path

from training.data.builds import add_force_flag, already_built, building, request_of
from training.data.catalogs import CLEANING_RULES, Pair, catalog_pairs, help_pairs, keep, tidy
from training.data.common import (
    Download,
    data_root,
    downloads_dir,
    fetch_deb,
    fetch_npm,
    hash_fraction,
    source_entry,
    write_lines,
    write_manifest,
)
from training.data.ding import normalize
from training.data.fortunes import split_fortunes
from training.data.tuxpaint import STAMPS_DIR, parse_description
from training.errors import run_main

WESNOTH = tuple(
    f"wesnoth-1.16-{part}"
    for part in [
        "data",
        "did",
        "dm",
        "dw",
        "ei",
        "httt",
        "l",
        "low",
        "nr",
        "sof",
        "sota",
        "sotbe",
        "thot",
        "trow",
        "tsg",
        "ttb",
        "utbs",
    ]
)
GPL = "GPL-2+"
LICENCES = {
    "libreoffice-help-en-us": "MPL-2.0",
    "libreoffice-help-de": "MPL-2.0",
    "tuxpaint-stamps-default": "GPL-2",
    "freedroidrpg-data": GPL,
    "fortunes-de": GPL,
    **dict.fromkeys(WESNOTH, GPL),
}
EMOJIBASE = ("emojibase-data", "17.0.0", "MIT")
HELP_ROOTS = ("usr/share/libreoffice/help/en-US", "usr/share/libreoffice/help/de")
EVERYDAY_CATALOG = "usr/share/locale/de/LC_MESSAGES/freedroidrpg-dialogs.mo"
EVERYDAY_SIZE = 2000  # a stable sample by hash: enough for BLEU, quick to decode with beam 5
VALID_SHARE, VALID_CAP = 0.02, 500  # of each new source, into valid
_EVERYDAY_SENTENCE = re.compile(r"[\"„“']?[A-Z].*[a-z].*[.!?][\"“”']?")
_GERMAN_TEXT = re.compile(r"[0-9A-Za-zÄÖÜäöüß .,!?:;'\"„“”‚‘»«…()–-]+")
NOTES = [
    *CLEANING_RULES,
    "train: Ding's train split plus every new source, less pairs whose English or German (lower "
    "case, letters and digits) occurs in valid, test or test_everyday",
    f"valid: Ding's valid split plus a stable {VALID_SHARE:.0%} (at most {VALID_CAP}) of each new "
    "source; test: Ding's test split unchanged",
    "test_everyday: FreedroidRPG's dialogue catalog (never trained on), sentences of 3-25 words "
    "that start with a capital and end with . ! ?, less those whose English occurs in training; "
    f"a stable sample of {EVERYDAY_SIZE} by hash of the English",
    "mono.de: fortunes-de split into sentences of 3-40 words, plain German characters only, "
    "less those in any test set",
]


def load_split(ding_dir: Path, split: str) -> list[Pair]:
    """Ding's (English, German) pairs of one split, as `training.data.ding` wrote them."""
    paths = [ding_dir / f"{split}.{language}" for language in ("en", "de")]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{missing[0]} does not exist: run `python -m training.data.ding` first "
            "(or give --ding-dir the folder it wrote)"
        )
    english, german = (p.read_text(encoding="utf-8").splitlines() for p in paths)
    return list(zip(english, german, strict=True))


def tuxpaint_pairs(download: Download) -> list[Pair]:
    """(English first line, German `de.utf8=` line) of every stamp description that has both."""
    pairs = []
    for txt in sorted((download.extracted / STAMPS_DIR).rglob("*.txt")):
        english, german = parse_description(txt.read_text(encoding="utf-8", errors="replace"))
        pairs.append((tidy(english), tidy(german)))
    return [p for p in dict.fromkeys(pairs) if keep(p)]


def emoji_label_pairs(download: Download) -> list[Pair]:
    """(English label, German label) of every emoji both emojibase languages name."""
    labels = {}
    for language in ("en", "de"):
        path = download.extracted / f"package/{language}/data.json"
        entries = json.loads(path.read_text(encoding="utf-8"))
        labels[language] = {e["hexcode"]: e["label"] for e in entries if e.get("label")}
    return [
        p
        for p in dict.fromkeys((en, labels["de"][code]) for code, en in labels["en"].items())
        if keep(p)
    ]


def everyday_pairs(download: Download, training_english: set[str]) -> list[Pair]:
    """A stable sample of FreedroidRPG dialogue sentences of 3-25 words not seen in training."""
    pairs = catalog_pairs([download.extracted / EVERYDAY_CATALOG])
    fitting = [
        (en, de)
        for en, de in pairs
        if 3 <= len(en.split()) <= 25
        and _EVERYDAY_SENTENCE.fullmatch(en)
        and normalize(en) not in training_english
    ]
    return sorted(fitting, key=lambda p: hash_fraction(f"everyday:{p[0]}"))[:EVERYDAY_SIZE]


def german_sentences(download: Download, held_out: set[str]) -> list[str]:
    """Sentences of the German fortunes: 3-40 words, plain characters, none from a test set."""
    sentences: dict[str, None] = {}
    for path in sorted((download.extracted / "usr/share/games/fortunes/de").iterdir()):
        if path.suffix or not path.is_file() or path.name == "asciiart":
            continue
        for fortune in split_fortunes(path.read_text(encoding="utf-8", errors="replace")):
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(fortune.split())):
                if (
                    3 <= len(sentence.split()) <= 40
                    and _GERMAN_TEXT.fullmatch(sentence)
                    and normalize(sentence) not in held_out
                ):
                    sentences[sentence] = None
    return list(sentences)


def carve_valid(name: str, pairs: list[Pair]) -> tuple[list[Pair], list[Pair]]:
    """(train, valid) of one new source: a stable share by hash of the English, capped."""
    chosen = [p for p in pairs if hash_fraction(f"{name}:{normalize(p[0])}") < VALID_SHARE]
    valid = chosen[:VALID_CAP]
    taken = set(valid)
    return [p for p in pairs if p not in taken], valid


def without(pairs: Iterable[Pair], english: set[str], german: set[str]) -> list[Pair]:
    """Pairs neither of whose sides (normalised) is in the given sets."""
    return [p for p in pairs if normalize(p[0]) not in english and normalize(p[1]) not in german]


def fetch_all() -> dict[str, Download]:
    """Every package this corpus reads, fetched once into the download cache."""
    extracted = downloads_dir() / "extracted"
    downloads = {name: fetch_deb(name, extracted / name) for name in LICENCES}
    name, version, _ = EMOJIBASE
    downloads[name] = fetch_npm(name, version, extracted / f"{name}-{version}")
    return downloads


def write_pairs(out: Path, split: str, pairs: list[Pair]) -> int:
    """`<split>.en` and `<split>.de`, line-aligned."""
    write_lines(out / f"{split}.de", (de for _, de in pairs))
    return write_lines(out / f"{split}.en", (en for en, _ in pairs))


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line flags of `python -m training.data.de_en_plus`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="output folder (default: <data root>/de-en-plus)"
    )
    parser.add_argument(
        "--ding-dir",
        type=Path,
        default=None,
        help="the folder `python -m training.data.ding` wrote (default: <data root>/de-en)",
    )
    add_force_flag(parser)
    return parser


def build_sources(downloads: dict[str, Download]) -> dict[str, list[Pair]]:
    """The new training sources' cleaned pairs, by source name."""
    english_help, german_help = (
        downloads[f"libreoffice-help-{lang}"].extracted / root
        for lang, root in zip(("en-us", "de"), HELP_ROOTS, strict=True)
    )
    wesnoth = [
        mo
        for package in WESNOTH
        for mo in downloads[package].extracted.rglob("locale/de/LC_MESSAGES/*.mo")
    ]
    return {
        "libreoffice-help": help_pairs(english_help, german_help),
        "wesnoth": catalog_pairs(wesnoth),
        "tuxpaint": tuxpaint_pairs(downloads["tuxpaint-stamps-default"]),
        "emojibase": emoji_label_pairs(downloads[EMOJIBASE[0]]),
    }


def main(args: argparse.Namespace) -> dict[str, object]:
    """Fetch, clean, de-duplicate against the test sets, write the splits and manifest."""
    start = time.monotonic()
    out = args.out_dir or data_root() / "de-en-plus"
    ding_dir = args.ding_dir or data_root() / "de-en"
    ding = {split: load_split(ding_dir, split) for split in ("train", "valid", "test")}
    downloads = fetch_all()
    sources = [source_entry(d, LICENCES.get(name, EMOJIBASE[2])) for name, d in downloads.items()]
    inputs = [ding_dir / f"{s}.{lang}" for s in ding for lang in ("en", "de")]
    request = request_of(args, inputs, sources=[s["sha256"] for s in sources])
    if (done := already_built(out, request, args.force)) is not None:
        return done
    new = build_sources(downloads)
    train, valid = {"ding": ding["train"]}, list(ding["valid"])
    for name, pairs in new.items():
        train[name], carved = carve_valid(name, pairs)
        valid += carved
    english_seen = {normalize(en) for pairs in train.values() for en, _ in pairs}
    everyday = everyday_pairs(downloads["freedroidrpg-data"], english_seen)
    held = valid + ding["test"] + everyday
    held_en, held_de = {normalize(en) for en, _ in held}, {normalize(de) for _, de in held}
    kept = {name: without(pairs, held_en, held_de) for name, pairs in train.items()}
    all_train = list(dict.fromkeys(p for pairs in kept.values() for p in pairs))
    mono = german_sentences(downloads["fortunes-de"], held_de)
    with building(out, request) as staged:
        counts: dict[str, object] = {
            "pairs": {
                "train": write_pairs(staged, "train", all_train),
                "valid": write_pairs(staged, "valid", valid),
                "test": write_pairs(staged, "test", ding["test"]),
                "test_everyday": write_pairs(staged, "test_everyday", everyday),
            },
            "train_pairs_by_source": {name: len(pairs) for name, pairs in kept.items()},
            "dropped_for_overlap_with_held_out": {
                name: len(train[name]) - len(kept[name]) for name in train
            },
            "mono_de_sentences": write_lines(staged / "mono.de", mono),
        }
        languages = {"languages": {"source": "en", "target": "de"}, "request": request}
        write_manifest(staged, sources, counts, NOTES, languages)
    print(json.dumps(counts, indent=2))
    print(f"wrote {out} in {time.monotonic() - start:.1f} s")
    return counts


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())
