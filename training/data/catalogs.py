"""Sentence pairs from translated text that packages ship: gettext catalogs and LibreOffice help.

A program's German message catalog (`.mo`) maps each English message to a human translation; a
game's catalog is mostly dialogue and story, which is closer to everyday English than a dictionary.
LibreOffice's help pages carry the same paragraph ids in every language, so English and German
paragraphs pair up by (page, id).
"""

from __future__ import annotations

import gettext
import html
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

Pair = tuple[str, str]  # (English, German)
MAX_WORDS = 40

_MARKUP = re.compile(r"<[^<>]*>")  # <i>, <span ...>, </b>: formatting, dropped with its brackets
_PLACEHOLDER = re.compile(
    r"[$%{}\[\]=@_\\|#^~*]"
)  # $unit.name|, %s, {count}, [WML]: templated text
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+(?=[\"„“‚'»«(]?[A-ZÄÖÜ0-9])")
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "\u00a0": " "})
CLEANING_RULES = [
    "drop markup tags (<i>, <span ...>) and HTML entities; typographic apostrophes become '",
    "drop messages with template characters ($ % { } [ ] = @ _ \\ | # ^ ~ *) or no letter",
    "a message of several lines or sentences pairs line by line and sentence by sentence when "
    "both sides have the same number, else whole",
    f"keep pairs of 1 to {MAX_WORDS} words on each side whose sides differ; drop duplicates",
]


def tidy(text: str) -> str:
    """Markup and entities removed, plain apostrophes, whitespace collapsed."""
    text = html.unescape(_MARKUP.sub("", text)).translate(_APOSTROPHES)
    return " ".join(text.split())


def segments(english: str, german: str) -> list[Pair]:
    """The aligned pieces of one translated message: lines, then sentences, when counts agree."""
    en_lines = [line for line in english.split("\n") if line.strip()]
    de_lines = [line for line in german.split("\n") if line.strip()]
    if len(en_lines) != len(de_lines):
        return [(tidy(english), tidy(german))]
    pairs: list[Pair] = []
    for en_line, de_line in zip(en_lines, de_lines, strict=True):
        en_parts = _SENTENCE_END.split(tidy(en_line))
        de_parts = _SENTENCE_END.split(tidy(de_line))
        if len(en_parts) == len(de_parts):
            pairs += zip(en_parts, de_parts, strict=True)
        else:
            pairs.append((tidy(en_line), tidy(de_line)))
    return pairs


def keep(pair: Pair) -> bool:
    """Whether a cleaned pair is plain text of a sensible length, translated (sides differ)."""
    en, de = pair
    if not en or not de or en == de or _PLACEHOLDER.search(en + de):
        return False
    if not (re.search(r"[A-Za-z]", en) and re.search(r"[A-Za-zÄÖÜäöüß]", de)):
        return False
    return max(len(en.split()), len(de.split())) <= MAX_WORDS


def unique(pairs: Iterable[Pair]) -> list[Pair]:
    """Kept pairs in first-seen order, each once."""
    return list(dict.fromkeys(p for p in pairs if keep(p)))


def catalog_messages(mo_file: Path) -> Iterator[Pair]:
    """(English msgid, German msgstr) of a compiled catalog: singular, translated, no context."""
    with open(mo_file, "rb") as f:
        catalog = gettext.GNUTranslations(f)._catalog  # type: ignore[attr-defined]
    for key, value in catalog.items():
        if isinstance(key, str) and key and value and "\x04" not in key:  # \x04: msgctxt
            yield key, value


def catalog_pairs(mo_files: Iterable[Path]) -> list[Pair]:
    """Cleaned, de-duplicated sentence pairs of several German catalogs."""
    return unique(
        pair
        for mo_file in sorted(mo_files)
        for english, german in catalog_messages(mo_file)
        for pair in segments(english, german)
    )


_PARAGRAPH = re.compile(r'<p id="([^"]+)"[^>]*>(.*?)</p>', re.DOTALL)


def help_paragraphs(page: Path) -> dict[str, str]:
    """Paragraph id -> text of one LibreOffice help page."""
    text = page.read_text(encoding="utf-8", errors="replace")
    return {pid: body for pid, body in _PARAGRAPH.findall(text)}


def help_pairs(english_root: Path, german_root: Path) -> list[Pair]:
    """Paragraphs with the same id on the same page of the English and German help, cleaned."""
    pairs: list[Pair] = []
    for en_page in sorted(english_root.rglob("*.html")):
        relative = en_page.relative_to(english_root)
        de_page = german_root / relative
        if not de_page.is_file():
            continue
        german = help_paragraphs(de_page)
        for pid, en_text in help_paragraphs(en_page).items():
            if pid in german:
                pairs += segments(html_text(en_text), html_text(german[pid]))
    return unique(pairs)


def html_text(fragment: str) -> str:
    """A help paragraph on one line (its line breaks are the HTML's layout, not the text's)."""
    return " ".join(fragment.split())
