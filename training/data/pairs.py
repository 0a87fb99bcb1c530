"""Prepare a translation dataset from your own sentence pairs: checked, de-duplicated and split.

    python -m training.data.pairs --tsv deu.txt --source en --target de --output data/my-en-de
    python -m training.data.pairs --tsv pairs.csv --source en --target fr --output data/en-fr
    python -m training.data.pairs --aligned corpus --source en --target fr --output data/en-fr
    python -m training.data.pairs --source-file a.txt --target-file b.txt --source en --target fr ...

Writes `{train,valid,test}.<source>` and `.<target>` (line-aligned, UTF-8) and `manifest.json`
into the output folder; `python -m training.train_translator --data-dir DIR --direction SRC-TGT`
trains on them. Rules and limits: docs/data.md, "Your own sentence pairs".
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
from pathlib import Path
from typing import NamedTuple

from training.data.builds import add_force_flag, already_built, building, request_of
from training.data.common import (
    SPLITS,
    SplitFractions,
    hash_fraction,
    sha256_file,
    stable_split,
    write_lines,
    write_manifest,
)
from training.data.loaders import DataFormatError, read_utf8
from training.errors import run_main

# A language code as the data files' suffix: `en`, `fra`, `pt_BR` (a region after an underscore,
# so that a direction `en-pt_BR` has exactly one hyphen; `pt-BR` is accepted and rewritten).
LANGUAGE_CODE = re.compile(r"[a-z]{2,3}(?:_[A-Za-z]{2,4})?")
MADE_BY = "python -m training.data.pairs"
HELD_OUT_FRACTION = 0.1  # of the pairs, to valid and to test each, for sets under 20,000 pairs
HEADER_WORDS = {"source", "src", "target", "tgt", "text", "sentence", "translation", "lang"}
SHOWN = 10  # line numbers listed per finding
RULES = [
    "whitespace inside each side collapsed to single spaces (tabs, line and paragraph separators "
    "included), ends stripped",
    "removed: blank pairs, pairs with one side empty, exact duplicates of an earlier pair",
    "kept but reported: pairs whose two sides are identical, pairs longer than --max-chars",
    "split by the stable hash of the lower-cased source side (every translation of one source "
    "sentence lands in one split); valid and test each get 10% of the pairs, at most about "
    "--held-out, and at least one source sentence",
]


class Pair(NamedTuple):
    """One pair as read, and where: its line in the input (a CSV record's first line)."""

    source: str
    target: str
    line: int


Findings = dict[str, list[int]]  # check name -> line numbers of the pairs it removed or flagged


def language_code(text: str) -> str:
    """`en`, `pt-BR` or `pt_BR` -> the code as a file suffix (`pt_BR`); ValueError otherwise."""
    code = text.strip().replace("-", "_")
    if not LANGUAGE_CODE.fullmatch(code):
        raise ValueError(
            f"{text!r} is not a language code such as en, fra or pt_BR "
            "(2-3 lower-case letters, optionally _ and a region)"
        )
    return code


def split_direction(direction: str) -> tuple[str, str]:
    """`en-fr` -> ("en", "fr"): the languages of a translation direction; ValueError otherwise."""
    source, _, target = direction.partition("-")
    if not (LANGUAGE_CODE.fullmatch(source) and LANGUAGE_CODE.fullmatch(target)) or (
        source == target
    ):
        raise ValueError(
            f"direction {direction!r} is not SOURCE-TARGET: two different language codes, "
            "the data files' suffixes, e.g. en-de, de-en, en-fr, en-pt_BR (a region after _)"
        )
    return source, target


def looks_like_header(cells: tuple[str, str], codes: tuple[str, str]) -> bool:
    """Whether both cells are column names (`source`, `en`, `text_fr`, ...), not a sentence pair."""
    names = HEADER_WORDS | {part for code in codes for part in code.lower().split("_")}
    words = [set(re.findall(r"[a-z]+", cell.lower())) for cell in cells]
    return all(w and w <= names for w in words)


def read_table(
    path: Path, delimiter: str, columns: tuple[int, int], header: str, codes: tuple[str, str]
) -> list[Pair]:
    """Pairs from a TSV (no quoting: quotes are text) or CSV (quoted fields may hold the
    delimiter and line breaks). Blank rows and rows starting with `#` (Anki's headers) are skipped;
    the first row is a header with `header="yes"`, or with "auto" when `looks_like_header`."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(
        io.StringIO(read_utf8(path), newline=""), delimiter=delimiter, quoting=quoting, strict=True
    )
    pairs, next_line, first = [], 1, True
    try:
        for row in reader:
            start, next_line = next_line, reader.line_num + 1
            if not any(cell.strip() for cell in row) or row[0].startswith("#"):
                continue
            if max(columns) >= len(row):
                raise DataFormatError(
                    f"{path}:{start}: {len(row)} column(s) split at {delimiter!r}, need column "
                    f"{max(columns)} (0-based); check --delimiter and --source/--target-column"
                )
            cells = (row[columns[0]], row[columns[1]])
            if first and (
                header == "yes" or (header == "auto" and looks_like_header(cells, codes))
            ):
                print(f"{path}:{start}: header row skipped: {cells[0]!r}, {cells[1]!r}")
            else:
                pairs.append(Pair(*cells, start))
            first = False
    except csv.Error as error:
        raise DataFormatError(f"{path}:{reader.line_num}: {error}; check the quotes") from None
    return pairs


def read_lines(path: Path) -> list[str]:
    """A file's lines, split at line feeds only (a CR before one dropped)."""
    lines = read_utf8(path).split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_aligned(source_path: Path, target_path: Path) -> list[Pair]:
    """Pairs from two line-aligned files; DataFormatError at the first line without a partner."""
    sources, targets = read_lines(source_path), read_lines(target_path)
    if len(sources) != len(targets):
        longer = source_path if len(sources) > len(targets) else target_path
        line = min(len(sources), len(targets)) + 1
        raise DataFormatError(
            f"{longer}:{line}: no partner line: {source_path} has {len(sources)} lines, "
            f"{target_path} has {len(targets)}; line-aligned files need one line per sentence"
        )
    return [Pair(s, t, n) for n, (s, t) in enumerate(zip(sources, targets, strict=True), 1)]


def aligned_files(prefix: str, codes: tuple[str, str]) -> tuple[Path, Path]:
    """`PREFIX.<source>` + `PREFIX.<target>` (`pt_BR` or `pt-BR`), else `PREFIX.src` + `.tgt`."""
    candidates = [codes, tuple(c.replace("_", "-") for c in codes), ("src", "tgt")]
    for source, target in candidates:
        files = (Path(f"{prefix}.{source}"), Path(f"{prefix}.{target}"))
        if all(f.is_file() for f in files):
            return files
    raise FileNotFoundError(
        f"neither {prefix}.{codes[0]} + {prefix}.{codes[1]} nor {prefix}.src + {prefix}.tgt "
        "exist; name the files with --source-file and --target-file"
    )


def tidy(text: str) -> str:
    """Whitespace collapsed: no tab, line or paragraph separator survives into a line file."""
    return " ".join(text.split())


def check_pairs(pairs: list[Pair], max_chars: int) -> tuple[list[tuple[str, str]], Findings]:
    """Tidied unique pairs in input order, and the lines each check removed or flagged."""
    kept: dict[tuple[str, str], None] = {}
    found: Findings = {}
    for source, target, line in pairs:
        source, target = tidy(source), tidy(target)
        if not source or not target:
            empty = "source" if not source else "target"
            found.setdefault("blank" if source == target else f"empty_{empty}", []).append(line)
        elif (source, target) in kept:
            found.setdefault("duplicate", []).append(line)
        else:
            kept[source, target] = None
            if source == target:
                found.setdefault("identical_sides", []).append(line)
            if max(len(source), len(target)) > max_chars:
                found.setdefault("long", []).append(line)
    return list(kept), found


def split_key(source: str) -> str:
    """What decides a pair's split: its lower-cased source side, prefixed by dataset."""
    return f"pairs:{source.lower()}"


def split_pairs(pairs: list[tuple[str, str]], held_out: int) -> dict[str, list[tuple[str, str]]]:
    """train/valid/test by `stable_split` of `split_key`, so every translation of a source
    sentence shares a split. valid and test hold 10% of the pairs each, at most about
    `held_out`; when the hash gives one of them no sentence, the cut points in hash order move
    just enough to give it one (the same sentences `stable_split` would pick next)."""
    keys = sorted({split_key(source) for source, _ in pairs}, key=hash_fraction)  # hash order
    if len(keys) < 3:
        raise DataFormatError(
            f"{len(keys)} distinct source sentence(s): train, valid and test need one each"
        )
    fraction = min(HELD_OUT_FRACTION, held_out / len(pairs))
    fractions = SplitFractions(1 - 2 * fraction, fraction, fraction)
    assigned = [stable_split(key, fractions) for key in keys]  # test, then valid, then train
    n_test, n_valid = max(1, assigned.count("test")), max(1, assigned.count("valid"))
    while n_test + n_valid > len(keys) - 1:  # only with a handful of sentences
        n_test, n_valid = (n_test - 1, n_valid) if n_test > n_valid else (n_test, n_valid - 1)
    split_of = {key: "test" for key in keys[:n_test]}
    split_of.update({key: "valid" for key in keys[n_test : n_test + n_valid]})
    splits: dict[str, list[tuple[str, str]]] = {name: [] for name in SPLITS}
    for pair in pairs:
        splits[split_of.get(split_key(pair[0]), "train")].append(pair)
    return splits


def input_files(args: argparse.Namespace) -> list[Path]:
    """The files the flags name: a table, or the two line-aligned files."""
    if args.tsv is not None:
        return [args.tsv]
    if args.aligned is not None:
        return list(aligned_files(args.aligned, (args.source, args.target)))
    return [args.source_file, args.target_file]


def read_pairs(args: argparse.Namespace) -> list[Pair]:
    """The pairs of the input the flags name."""
    files = input_files(args)
    if args.tsv is not None:
        delimiter = args.delimiter or ("," if args.tsv.suffix.lower() == ".csv" else "\t")
        columns = (args.source_column, args.target_column)
        return read_table(args.tsv, delimiter, columns, args.header, (args.source, args.target))
    return read_aligned(*files)


def check_output(out: Path) -> None:
    """Refuse an output folder holding files this command did not write: the output replaces
    the folder as a whole, and it may be somebody's data. A previous run's files (those its
    manifest lists) are fine."""
    try:
        previous = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none, or not JSON: not ours
        previous = None
    ours = {"manifest.json"}
    if isinstance(previous, dict) and previous.get("made_by") == MADE_BY:
        ours |= set(previous.get("files", {}))
    others = sorted(p.name for p in out.iterdir() if p.name not in ours) if out.exists() else []
    if others:
        raise FileExistsError(
            f"{out} holds files that {MADE_BY} did not write ({', '.join(others[:5])}); "
            "choose an empty --output"
        )


def write_dataset(
    out: Path, splits: dict[str, list[tuple[str, str]]], codes: tuple[str, str]
) -> dict[str, int]:
    """`<split>.<source>` and `<split>.<target>` line-aligned files; pairs per split."""
    counts = {}
    for name, pairs in splits.items():
        write_lines(out / f"{name}.{codes[0]}", (source for source, _ in pairs))
        counts[name] = write_lines(out / f"{name}.{codes[1]}", (target for _, target in pairs))
    return counts


def main(args: argparse.Namespace) -> dict[str, object]:
    """Read, check, split and write the pairs with their manifest; print and return the counts
    (a second run with the same inputs and flags finds its output up to date and stops)."""
    codes = (args.source, args.target)
    check_output(args.output)
    files = input_files(args)
    request = request_of(args, inputs=files)
    if (done := already_built(args.output, request, args.force)) is not None:
        return done
    read = read_pairs(args)
    pairs, found = check_pairs(read, args.max_chars)
    splits = split_pairs(pairs, args.held_out)
    sources = [
        {"name": args.source_name or path.name, "file": str(path), "licence": args.licence}
        | {"sha256": sha256_file(path)}
        for path in files
    ]
    extra = {
        "languages": {"source": codes[0], "target": codes[1]},
        "made_by": MADE_BY,
        "max_chars": args.max_chars,
        "first_lines": {name: lines[:SHOWN] for name, lines in found.items()},
        "request": request,
    }
    with building(args.output, request) as staged:
        counts: dict[str, object] = {
            "pairs": write_dataset(staged, splits, codes),
            "read": len(read),
            "removed_or_flagged": {name: len(lines) for name, lines in found.items()},
        }
        write_manifest(staged, sources, counts, RULES, extra)
    report(found, " and ".join(map(str, files)), args.max_chars)
    print(json.dumps(counts, indent=2))
    print(
        f"wrote {args.output}: python -m training.train_translator --data-dir {args.output} "
        f"--direction {codes[0]}-{codes[1]}"
    )
    return counts


def report(found: Findings, where: str, max_chars: int) -> None:
    """One line per check that removed or flagged pairs, with their first line numbers."""
    what = {
        "blank": "blank pairs removed",
        "empty_source": "pairs with an empty source removed",
        "empty_target": "pairs with an empty target removed",
        "duplicate": "duplicates of an earlier pair removed",
        "identical_sides": "pairs with identical sides kept (names? untranslated?)",
        "long": f"pairs over {max_chars} characters on a side kept (training skips those over "
        "--max-tokens)",
    }
    for name, lines in found.items():
        shown = ", ".join(map(str, lines[:SHOWN])) + (", ..." if len(lines) > SHOWN else "")
        print(f"{len(lines)} {what[name]}: {where}, line {shown}")


def _code(text: str) -> str:
    try:
        return language_code(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _delimiter(text: str) -> str:
    value = {"\\t": "\t", "tab": "\t", "comma": ",", "semicolon": ";"}.get(text.lower(), text)
    if len(value) != 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not one character (or tab, comma)")
    return value


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line flags of `python -m training.data.pairs`."""
    parser = argparse.ArgumentParser(
        prog=MADE_BY, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    given = parser.add_argument_group("input (exactly one of --tsv, --aligned, --source-file)")
    inputs = given.add_mutually_exclusive_group(required=True)
    inputs.add_argument(
        "--tsv",
        type=Path,
        metavar="FILE",
        help="one pair a row: TSV (Anki, Tatoeba; quotes are text), or CSV when the name ends "
        "in .csv (quoted fields may hold commas and line breaks)",
    )
    inputs.add_argument(
        "--aligned",
        metavar="PREFIX",
        help="line-aligned files PREFIX.<source> + PREFIX.<target> (e.g. corpus.en + corpus.fr), "
        "or else PREFIX.src + PREFIX.tgt",
    )
    inputs.add_argument("--source-file", type=Path, metavar="FILE", help="line-aligned source")
    given.add_argument(
        "--target-file", type=Path, metavar="FILE", help="its target lines (with --source-file)"
    )
    table = parser.add_argument_group("--tsv options")
    table.add_argument(
        "--delimiter",
        type=_delimiter,
        default=None,
        help="column separator: one character, or tab (default: comma for .csv, else tab)",
    )
    table.add_argument("--source-column", type=int, default=0, help="0-based (default: 0)")
    table.add_argument("--target-column", type=int, default=1, help="0-based (default: 1)")
    table.add_argument(
        "--header",
        choices=("auto", "yes", "no"),
        default="auto",
        help="whether the first row names the columns; auto: when both cells are words such as "
        "source, target, text or the language codes (default: auto)",
    )
    parser.add_argument(
        "--source", type=_code, required=True, help="source language code, e.g. en (required)"
    )
    parser.add_argument(
        "--target",
        type=_code,
        required=True,
        help="target language code, e.g. fr, pt_BR (required)",
    )
    parser.add_argument(
        "--output", type=Path, required=True, help="folder to write, e.g. data/en-fr (required)"
    )
    parser.add_argument(
        "--licence",
        default="unknown",
        help="the pairs' licence, recorded in the manifest and the model card (default: unknown)",
    )
    parser.add_argument(
        "--source-name", default=None, help="name of the corpus (default: the input file name)"
    )
    parser.add_argument(
        "--held-out",
        type=int,
        default=2000,
        help="at most about this many pairs each in valid and test; smaller sets give 10%% "
        "each (default: 2000)",
    )
    parser.add_argument(
        "--max-chars",
        type=int,
        default=400,
        help="report pairs longer than this on either side (default: 400)",
    )
    add_force_flag(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags, with --source-file and --target-file checked to come together."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if (args.source_file is None) != (args.target_file is None):
        parser.error("--source-file and --target-file go together")
    if args.source == args.target:
        parser.error(f"--source and --target are both {args.source!r}")
    return args


if __name__ == "__main__":
    run_main(main, parse_args())
