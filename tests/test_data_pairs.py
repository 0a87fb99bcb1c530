"""`python -m training.data.pairs`: the user's own pairs from TSV, CSV or aligned files -> splits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.data import pairs
from training.data.loaders import DataFormatError, load_aligned

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = [f"{split}.{code}" for split in ("train", "valid", "test") for code in ("en", "fr")]
PAIRS = [(f"sentence {i}, with a comma", f"phrase {i}, avec une virgule") for i in range(60)]
PAIRS.append(('he said "yes"', 'il a dit "oui"'))  # quotes are text in a TSV, escaped in a CSV


def prepare(*argv: str | Path) -> dict[str, object]:
    """Run the command's main with these flags; its counts."""
    return pairs.main(pairs.parse_args([str(a) for a in argv]))


def outputs(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in OUTPUTS}


def write_tsv(path: Path, rows: list[tuple[str, str]], head: str = "") -> Path:
    path.write_text(head + "".join(f"{s}\t{t}\tCC-BY 2.0\n" for s, t in rows), encoding="utf-8")
    return path


def test_tsv_csv_and_aligned_files_give_the_same_splits(tmp_path: Path) -> None:
    tsv = write_tsv(tmp_path / "pairs.tsv", PAIRS, head="#separator:tab\n#html:false\n")
    rows = ['"{}","{}"'.format(*(side.replace('"', '""') for side in pair)) for pair in PAIRS]
    rows[3] = '"sentence 3,\nwith   a comma","phrase 3, avec une virgule"'  # tidied to one line
    (tmp_path / "pairs.csv").write_text("en,fr\n" + "\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "corpus.en").write_text("".join(f"{s}\n" for s, _ in PAIRS), encoding="utf-8")
    (tmp_path / "corpus.fr").write_text("".join(f"{t}\r\n" for _, t in PAIRS), encoding="utf-8")
    (tmp_path / "train.src").write_bytes((tmp_path / "corpus.en").read_bytes())
    (tmp_path / "train.tgt").write_bytes((tmp_path / "corpus.fr").read_bytes())
    languages = ["--source", "en", "--target", "fr", "--output"]
    prepare("--tsv", tsv, *languages, tmp_path / "a")
    prepare("--tsv", tmp_path / "pairs.csv", *languages, tmp_path / "b")
    prepare("--aligned", tmp_path / "corpus", *languages, tmp_path / "c")
    prepare("--aligned", tmp_path / "train", *languages, tmp_path / "d")
    files = ["--source-file", tmp_path / "corpus.en", "--target-file", tmp_path / "corpus.fr"]
    counts = prepare(*files, *languages, tmp_path / "e")
    expected = outputs(tmp_path / "a")
    for folder in "bcde":
        assert outputs(tmp_path / folder) == expected, folder
    split = counts["pairs"]
    assert sum(split.values()) == len(PAIRS) and min(split.values()) >= 1
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["languages"] == {"source": "en", "target": "fr"}
    assert manifest["counts"]["pairs"] == split and manifest["sources"][0]["licence"] == "unknown"
    assert set(manifest["files"]) == set(OUTPUTS)
    train = load_aligned(tmp_path / "a" / "train.en", tmp_path / "a" / "train.fr")
    assert len(train) == split["train"]  # the trainer's loader reads what was written


def test_csv_quotes_hold_delimiters_quotes_and_line_breaks(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text(
        'source,target\n"Hello, world","Bonjour, le monde"\n'
        '"She said ""hi""","Elle a dit ""salut"""\n"two\nlines","deux\r\nlignes"\na,b\n',
        encoding="utf-8",
    )
    prepare(
        "--tsv", tmp_path / "p.csv", "--source", "en", "--target", "fr", "--output", tmp_path / "o"
    )
    written = set()
    for split in ("train", "valid", "test"):
        written |= set(load_aligned(tmp_path / "o" / f"{split}.en", tmp_path / "o" / f"{split}.fr"))
    assert written == {
        ("Hello, world", "Bonjour, le monde"),
        ('She said "hi"', 'Elle a dit "salut"'),
        ("two lines", "deux lignes"),
        ("a", "b"),
    }


def test_rerun_gives_identical_files(tmp_path: Path) -> None:
    tsv = write_tsv(tmp_path / "p.tsv", PAIRS)
    flags = ["--tsv", tsv, "--source", "en", "--target", "fr", "--licence", "CC-BY-2.0"]
    prepare(*flags, "--output", tmp_path / "o")
    first = {p.name: p.read_bytes() for p in (tmp_path / "o").iterdir()}
    prepare(*flags, "--output", tmp_path / "o")
    assert {p.name: p.read_bytes() for p in (tmp_path / "o").iterdir()} == first


def test_checks_remove_duplicates_and_empty_sides_and_report_the_rest(tmp_path: Path) -> None:
    rows = [*PAIRS[:10], PAIRS[0], ("Paris", "Paris"), ("lonely", ""), ("", "seule"), ("  ", " ")]
    rows.append(("x " * 300, "y"))
    tsv = write_tsv(tmp_path / "p.tsv", rows)
    counts = prepare("--tsv", tsv, "--source", "en", "--target", "fr", "--output", tmp_path / "o")
    assert counts["read"] == len(rows)
    assert counts["removed_or_flagged"] == {
        "blank": 1,  # both sides empty (the attribution column is not)
        "duplicate": 1,
        "identical_sides": 1,
        "empty_target": 1,
        "empty_source": 1,
        "long": 1,
    }
    assert sum(counts["pairs"].values()) == 12  # 10 + Paris + the long one: flagged, kept
    first_lines = json.loads((tmp_path / "o" / "manifest.json").read_text())["first_lines"]
    assert first_lines["duplicate"] == [11] and first_lines["empty_source"] == [14]


def test_tabs_and_unicode_line_separators_never_reach_a_line_file(tmp_path: Path) -> None:
    rows = [("one\u2028two", "un\x85deux"), ("three\x0bfour", "trois\x1cquatre"), ("a", "b")]
    tsv = write_tsv(tmp_path / "p.tsv", rows)
    prepare("--tsv", tsv, "--source", "en", "--target", "fr", "--output", tmp_path / "o")
    texts = [(tmp_path / "o" / name).read_text(encoding="utf-8") for name in OUTPUTS]
    lines = [line for text in texts for line in text.splitlines()]  # what load_aligned splits at
    assert sorted(lines) == sorted(["one two", "un deux", "three four", "trois quatre", "a", "b"])


@pytest.mark.parametrize(
    ("name", "content", "where"),
    [
        ("p.tsv", "a\tb\nonly one column\n", "p.tsv:2:"),
        ("p.csv", 'a,b\n"c,d\n', "p.csv:2:"),  # an unterminated quote
        ("p.tsv", "a\tb\nc\t\xff\n", r"p.tsv: not UTF-8 text.*line 2"),
    ],
)
def test_errors_name_file_and_line(tmp_path: Path, name: str, content: str, where: str) -> None:
    path = tmp_path / name
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(DataFormatError, match=where):
        prepare("--tsv", path, "--source", "en", "--target", "fr", "--output", tmp_path / "o")
    assert not (tmp_path / "o").exists()  # nothing is written before the input is read


def test_mismatched_aligned_files_name_the_first_line_without_a_partner(tmp_path: Path) -> None:
    (tmp_path / "c.en").write_text("a\nb\nc\nd\n")
    (tmp_path / "c.fr").write_text("a\nb\nc\n")
    with pytest.raises(DataFormatError, match=r"c\.en:4: no partner line.* 4 lines.* 3"):
        prepare(
            "--aligned",
            tmp_path / "c",
            "--source",
            "en",
            "--target",
            "fr",
            "--output",
            tmp_path / "o",
        )
    with pytest.raises(FileNotFoundError, match=r"c\.de .*--source-file"):
        prepare(
            "--aligned",
            tmp_path / "c",
            "--source",
            "en",
            "--target",
            "de",
            "--output",
            tmp_path / "o",
        )


def test_header_row_detection(tmp_path: Path) -> None:
    for head, header, kept in [
        ("source\ttarget\n", "auto", 3),
        ("text_en\ttext_fr\n", "auto", 3),
        ("cat\tchat\n", "auto", 4),  # a real pair stays
        ("cat\tchat\n", "yes", 3),
        ("source\ttarget\n", "no", 4),
    ]:
        path = tmp_path / "p.tsv"
        path.write_text(head + "a\tb\nc\td\ne\tf\n")
        out = tmp_path / f"o-{header}-{kept}-{len(head)}"
        flags = ["--header", header, "--source", "en", "--target", "fr", "--output", out]
        assert prepare("--tsv", path, *flags)["read"] == kept, (head, header)


def test_columns_and_delimiter_are_chosen_by_flag(tmp_path: Path) -> None:
    path = tmp_path / "tatoeba.txt"
    path.write_text("1;hello;2;bonjour\n3;cat;4;chat\n5;dog;6;chien\n")
    flags = ["--delimiter", ";", "--source-column", "1", "--target-column", "3"]
    prepare("--tsv", path, *flags, "--source", "en", "--target", "fr", "--output", tmp_path / "o")
    written = set()
    for split in ("train", "valid", "test"):
        written |= set(load_aligned(tmp_path / "o" / f"{split}.en", tmp_path / "o" / f"{split}.fr"))
    assert written == {("hello", "bonjour"), ("cat", "chat"), ("dog", "chien")}


def test_splits_keep_a_source_sentence_together_and_are_stable() -> None:
    many = [(f"s{i}", f"t{i}") for i in range(1000)]
    with_translations = many + [(s, t + " bis") for s, t in many[:300]]
    splits = pairs.split_pairs(with_translations, 2000)
    split_of = {}
    for name, members in splits.items():
        for source, _ in members:
            assert split_of.setdefault(source, name) == name  # one split per source sentence
    grown = pairs.split_pairs(many + [(f"new{i}", "x") for i in range(500)], 2000)
    grown_of = {s: name for name, members in grown.items() for s, _ in members}
    assert all(grown_of[s] == split_of[s] for s, _ in many)  # adding pairs moves none


def test_held_out_splits_are_capped_for_large_sets_and_never_empty() -> None:
    large = pairs.split_pairs([(f"s{i}", "t") for i in range(60_000)], 2000)
    assert all(1800 < len(large[name]) < 2200 for name in ("valid", "test"))
    for n in (3, 4, 7, 12):
        small = pairs.split_pairs([(f"s{i}", "t") for i in range(n)], 2000)
        assert all(len(small[name]) >= 1 for name in ("train", "valid", "test")), n
    with pytest.raises(DataFormatError, match="2 distinct source"):
        pairs.split_pairs([("a", "b"), ("A", "c"), ("d", "e")], 2000)


def test_language_codes_and_directions() -> None:
    assert [pairs.language_code(c) for c in ("en", "fra", "pt-BR", "zh_Hant")] == [
        "en",
        "fra",
        "pt_BR",
        "zh_Hant",
    ]
    for bad in ("english", "EN", "e", "pt-", "en fr"):
        with pytest.raises(ValueError, match="not a language code"):
            pairs.language_code(bad)
    assert pairs.split_direction("en-pt_BR") == ("en", "pt_BR")
    for bad in ("en", "en-en", "en-pt-BR", "english-german", "en_de"):
        with pytest.raises(ValueError, match="SOURCE-TARGET"):
            pairs.split_direction(bad)


def test_an_output_folder_with_other_files_is_refused_not_emptied(tmp_path: Path) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    tsv = write_tsv(tmp_path / "p.tsv", PAIRS)
    with pytest.raises(FileExistsError, match="notes.txt"):
        prepare("--tsv", tsv, "--source", "en", "--target", "fr", "--output", tmp_path / "o")
    assert (tmp_path / "o" / "notes.txt").read_text() == "mine"


def test_command_line_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "p.tsv").write_text("a\tb\nno tab here\n")
    command = [sys.executable, "-m", "training.data.pairs", "--tsv", str(tmp_path / "p.tsv")]
    command += ["--source", "en", "--target", "pt-BR", "--output", str(tmp_path / "o")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'p.tsv'}:2: 1 column(s) split at '\\t', need column 1 (0-based); "
        "check --delimiter and --source/--target-column"
    ]
    help_text = subprocess.run(
        [sys.executable, "-m", "training.data.pairs", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    assert "--aligned PREFIX" in help_text and "(default: 2000)" in help_text
