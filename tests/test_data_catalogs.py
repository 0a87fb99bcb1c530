"""Pairs from gettext catalogs and LibreOffice help, and the widened German-English corpus's rules."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from training.data.catalogs import catalog_pairs, help_pairs, keep, segments, tidy
from training.data.common import Download
from training.data.de_en_plus import carve_valid, german_sentences, load_split, without


def write_mo(path: Path, messages: dict[str, str]) -> Path:
    """A GNU `.mo` catalog of `messages` (msgid -> msgstr), as msgfmt writes one."""
    entries = sorted({"": "Content-Type: text/plain; charset=UTF-8\n", **messages}.items())
    ids, strs = (b"".join(x.encode() + b"\0" for x in part) for part in zip(*entries, strict=True))
    count, header = len(entries), 28
    id_start = header + 16 * count
    str_start = id_start + len(ids)
    table_ids, table_strs, offset_id, offset_str = [], [], id_start, str_start
    for key, value in entries:
        table_ids += [len(key.encode()), offset_id]
        table_strs += [len(value.encode()), offset_str]
        offset_id += len(key.encode()) + 1
        offset_str += len(value.encode()) + 1
    data = struct.pack("<7I", 0x950412DE, 0, count, header, header + 8 * count, 0, 0)
    data += struct.pack(f"<{2 * count}I", *table_ids) + struct.pack(f"<{2 * count}I", *table_strs)
    path.write_bytes(data + ids + strs)
    return path


def test_a_catalog_gives_its_plain_translated_sentences(tmp_path: Path) -> None:
    mo = write_mo(
        tmp_path / "game.mo",
        {
            "Trouble? What kind of trouble?": "Probleme? Welche Art von Problemen?",
            "$unit.name| lifts the sword.": "$unit.name| hebt das Schwert.",
            "<i>Run!</i>": "<i>Lauf!</i>",
            "Graak": "Graak",
            "Line one.\nLine two.": "Zeile eins.\nZeile zwei.",
            "menu\x04Open": "Öffnen",
        },
    )
    assert sorted(catalog_pairs([mo])) == [
        ("Line one.", "Zeile eins."),
        ("Line two.", "Zeile zwei."),
        ("Run!", "Lauf!"),
        ("Trouble?", "Probleme?"),
        ("What kind of trouble?", "Welche Art von Problemen?"),
    ]


def test_segments_pair_sentences_only_when_both_sides_have_as_many() -> None:
    assert segments("One. Two.", "Eins. Zwei.") == [("One.", "Eins."), ("Two.", "Zwei.")]
    assert segments("One. Two.", "Eins und zwei.") == [("One. Two.", "Eins und zwei.")]
    assert segments("a\nb", "x") == [("a b", "x")]


@pytest.mark.parametrize(
    ("pair", "kept"),
    [
        (("Hello there.", "Hallo."), True),
        (("Same", "Same"), False),
        (("100 %", "100 %"), False),
        (("{count} files", "{count} Dateien"), False),
        (("...", "…"), False),
        ((" ".join(["word"] * 41), "Wort"), False),
    ],
)
def test_keep(pair: tuple[str, str], kept: bool) -> None:
    assert keep(pair) is kept


def test_tidy_drops_markup_entities_and_typographic_apostrophes() -> None:
    assert tidy("<b>Don’t</b>  &amp; <span class='x'>go</span>") == "Don't & go"


def test_help_pages_pair_by_page_and_paragraph_id(tmp_path: Path) -> None:
    page = "text/shared/page.html"
    for lang, first, second in [
        ("en", "Choose <emph>Tools - Options</emph>.", "Only in English."),
        ("de", "Wählen Sie <emph>Extras - Optionen</emph>.", "Nur deutsch."),
    ]:
        (tmp_path / lang / "text/shared").mkdir(parents=True)
        (tmp_path / lang / page).write_text(
            f'<p id="par_1" class="paragraph">{first}\n</p>'
            f'<p id="par_{2 if lang == "en" else 3}">{second}</p>',
            encoding="utf-8",
        )
    assert help_pairs(tmp_path / "en", tmp_path / "de") == [
        ("Choose Tools - Options.", "Wählen Sie Extras - Optionen.")
    ]


def test_held_out_sentences_never_reach_training() -> None:
    pairs = [("The cat sleeps.", "Die Katze schläft."), ("A dog.", "Ein Hund.")]
    assert without(pairs, {"the cat sleeps"}, set()) == [("A dog.", "Ein Hund.")]
    assert without(pairs, set(), {"ein hund"}) == [("The cat sleeps.", "Die Katze schläft.")]


def test_carving_valid_is_stable_and_disjoint() -> None:
    pairs = [(f"Sentence number {i}.", f"Satz Nummer {i}.") for i in range(2000)]
    train, valid = carve_valid("source", pairs)
    assert carve_valid("source", list(reversed(pairs)))[1] == list(reversed(valid))
    assert 10 < len(valid) < 100 and not set(train) & set(valid)
    assert len(train) + len(valid) == len(pairs)


def test_german_fortunes_become_sentences_without_test_sentences(tmp_path: Path) -> None:
    folder = tmp_path / "usr/share/games/fortunes/de"
    folder.mkdir(parents=True)
    (folder / "sprueche").write_text(
        "Wer zuletzt lacht, lacht am besten. Das ist so.\n%\nEin Test mit <html> drin.\n%\n"
        "Morgen ist auch ein Tag.\n%\n",
        encoding="utf-8",
    )
    (folder / "sprueche.dat").write_bytes(b"\0")
    download = Download("fortunes-de", "1", tmp_path / "x.deb", tmp_path)
    held = {"morgen ist auch ein tag"}
    assert german_sentences(download, held) == [
        "Wer zuletzt lacht, lacht am besten.",
        "Das ist so.",
    ]


def test_a_missing_ding_split_says_which_command_makes_it(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"train\.en does not exist: run `python -m training"
    ):
        load_split(tmp_path, "train")
