"""Prepare character-level text from Debian's `fortunes` and `fortunes-min`, split by fortune."""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from models.atomic import write_text
from training.data.builds import add_force_flag, already_built, building, request_of
from training.data.common import (
    SPLITS,
    SplitFractions,
    data_root,
    downloads_dir,
    fetch_deb,
    source_entry,
    stable_split,
    write_manifest,
)
from training.errors import run_main

PACKAGES = ("fortunes-min", "fortunes")
LICENCE = "BSD-3-Clause (Debian copyright file; quoted texts remain their authors')"
FORTUNE_DIR = "usr/share/games/fortunes"
SKIPPED_FILES = frozenset({"ascii-art"})  # pictures, not language
FRACTIONS = SplitFractions(train=0.9, valid=0.05, test=0.05)
SEPARATOR = "%"
_OVERSTRIKE = re.compile(r"[^\n]\x08")  # "_\bA" prints as an underlined A: keep the A
_MOJIBAKE = re.compile(r"[\x80-\x9f]|[ÂÃâ][\x80-\xbf]")  # UTF-8 bytes read as Latin-1
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # everything but tab and newline


def fortune_files(folder: Path) -> list[Path]:
    """Fortune text files in folder: not `.dat` indexes, not `.u8` links, not subfolders."""
    return [
        path
        for path in sorted(folder.iterdir())
        if path.is_file()
        and not path.is_symlink()
        and path.suffix not in (".dat", ".u8")
        and path.name not in SKIPPED_FILES
    ]


def repair_mojibake(line: str) -> str:
    """Undo UTF-8 text that was decoded as Latin-1 (once or more), e.g. `donâ\x80\x99t` -> `don’t`."""
    while _MOJIBAKE.search(line):
        try:
            line = line.encode("latin-1").decode("utf-8")
        except UnicodeError:  # not mojibake after all, or not repairable: leave it
            break
    return line


def clean_fortune(text: str) -> str:
    """Repair mojibake and overstriking, drop control characters and trailing spaces."""
    text = "\n".join(repair_mojibake(line) for line in text.split("\n"))
    previous = None
    while previous != text:
        previous, text = text, _OVERSTRIKE.sub("", text)
    text = _CONTROL.sub("", text)
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def split_fortunes(text: str) -> list[str]:
    """The fortunes in one file: blocks separated by lines holding only `%`, cleaned, non-empty."""
    blocks = re.split(rf"^{SEPARATOR}[ \t]*$", text, flags=re.MULTILINE)
    return [f for f in (clean_fortune(b) for b in blocks) if f.strip()]


def assign(fortunes: Iterable[str]) -> dict[str, list[str]]:
    """De-duplicate fortunes (first occurrence wins) and split them 90/5/5 by hash of their text."""
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    for fortune in dict.fromkeys(fortunes):
        splits[stable_split(f"fortune:{fortune}", FRACTIONS)].append(fortune)
    return splits


def render(fortunes: list[str]) -> str:
    """Fortune-file text: each fortune followed by a `%` line, so a model learns where one ends."""
    return "".join(f"{fortune}\n{SEPARATOR}\n" for fortune in fortunes)


NOTES = [
    f"files: every text file in /{FORTUNE_DIR} except .dat, .u8 links and {sorted(SKIPPED_FILES)}",
    "cleaning: doubly/triply UTF-8-encoded lines repaired, overstrike (x BACKSPACE y -> y) "
    "resolved, control characters and trailing spaces removed, exact duplicates dropped",
    "split: sha256 of the fortune text, 90/5/5; each fortune is followed by a '%' line",
]


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line flags of `python -m training.data.fortunes`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="output folder (default: <data root>/fortunes)"
    )
    add_force_flag(parser)
    return parser


def main(args: argparse.Namespace) -> dict[str, object]:
    """Fetch both packages, split fortunes, write `{train,valid,test}.txt` and manifest."""
    start = time.monotonic()
    out = args.out_dir or data_root() / "fortunes"
    downloads = [fetch_deb(p, downloads_dir() / "extracted" / p) for p in PACKAGES]
    sources = [source_entry(d, LICENCE) for d in downloads]
    request = request_of(args, sources=[source["sha256"] for source in sources])
    if (done := already_built(out, request, args.force)) is not None:
        return done
    fortunes, per_file = [], Counter[str]()
    for package, download in zip(PACKAGES, downloads, strict=True):
        for path in fortune_files(download.extracted / FORTUNE_DIR):
            found = split_fortunes(path.read_text(encoding="utf-8"))
            per_file[f"{package}/{path.name}"] = len(found)
            fortunes += found
    splits = assign(fortunes)
    counts: dict[str, object] = {
        "fortunes_per_split": {name: len(items) for name, items in splits.items()},
        "characters_per_split": {name: len(render(items)) for name, items in splits.items()},
        "duplicates_dropped": len(fortunes) - sum(len(items) for items in splits.values()),
        "fortunes_per_file": dict(per_file),
    }
    with building(out, request) as staged:
        for name, items in splits.items():
            write_text(staged / f"{name}.txt", render(items))
        write_manifest(staged, sources, counts, NOTES, {"request": request})
    print(json.dumps({k: v for k, v in counts.items() if k != "fortunes_per_file"}, indent=2))
    print(f"wrote {out} in {time.monotonic() - start:.1f} s")
    return counts


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())
