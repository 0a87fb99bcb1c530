"""Iconify JSON emoji sets: match icon names to emojibase concepts and render their SVG bodies."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from training.data.emoji import Concept, emoji_key

_NOT_ALNUM = re.compile(r"[^a-z0-9]+")
# Fluent names skin tones by a bare suffix ("boy-medium-dark"), emojibase by "skin tone".
_FLUENT_TONES = ("medium-light", "medium-dark", "light", "medium", "dark")


@dataclass(frozen=True)
class IconSet:
    """One Iconify JSON set: icon bodies, aliases, default size and its hexcode -> name table."""

    prefix: str
    icons: Mapping[str, Mapping[str, object]]
    aliases: Mapping[str, Mapping[str, object]]
    width: int
    height: int
    chars: Mapping[str, str]

    @classmethod
    def load(cls, package_dir: Path) -> IconSet:
        """Read `icons.json` (and `chars.json` when present) from an extracted npm package."""
        data = json.loads((package_dir / "icons.json").read_text(encoding="utf-8"))
        chars_path = package_dir / "chars.json"
        chars = json.loads(chars_path.read_text(encoding="utf-8")) if chars_path.exists() else {}
        return cls(
            prefix=str(data["prefix"]),
            icons=data["icons"],
            aliases=data.get("aliases", {}),
            width=int(data.get("width", 16)),
            height=int(data.get("height", 16)),
            chars=chars,
        )

    def names(self) -> list[str]:
        """Every icon and alias name, sorted."""
        return sorted({*self.icons, *self.aliases})

    def svg(self, name: str) -> str:
        """A standalone SVG document for one icon or alias (aliases may flip their parent)."""
        h_flip = v_flip = False
        while name in self.aliases:  # an alias names its parent and may add flips
            alias = self.aliases[name]
            h_flip ^= bool(alias.get("hFlip"))
            v_flip ^= bool(alias.get("vFlip"))
            name = str(alias["parent"])
        icon = self.icons[name]
        h_flip ^= bool(icon.get("hFlip"))
        v_flip ^= bool(icon.get("vFlip"))
        left, top = int(icon.get("left", 0)), int(icon.get("top", 0))  # type: ignore[call-overload]
        width = int(icon.get("width", self.width))  # type: ignore[call-overload]
        height = int(icon.get("height", self.height))  # type: ignore[call-overload]
        body = str(icon["body"])
        if h_flip or v_flip:
            sx, sy = (-1 if h_flip else 1), (-1 if v_flip else 1)
            tx = 2 * left + width if h_flip else 0
            ty = 2 * top + height if v_flip else 0
            body = f'<g transform="translate({tx} {ty}) scale({sx} {sy})">{body}</g>'
        return (
            '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'viewBox="{left} {top} {width} {height}" width="{width}" height="{height}">{body}</svg>'
        )


def compact(name: str) -> str:
    """Name reduced for matching: ASCII, lower case, letters and digits only ("Flag: Côte" -> "flagcote")."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return _NOT_ALNUM.sub("", ascii_name.lower())


def name_index(
    concepts: Mapping[str, Concept], name_tables: Iterable[Mapping[str, str]]
) -> dict[str, str]:
    """Compact name -> concept key; labels first, then each hexcode -> name table in order.

    An earlier source wins a clash, so a CLDR label is never overridden by a legacy shortcode.
    """
    index: dict[str, str] = {}
    for key, concept in concepts.items():
        index.setdefault(compact(concept.caption), key)
    for table in name_tables:
        for hexcode, names in table.items():
            key = emoji_key(hexcode)
            if key not in concepts:
                continue
            for name in [names] if isinstance(names, str) else names:
                index.setdefault(compact(name), key)
    return index


def name_candidates(name: str) -> list[str]:
    """Compact spellings an icon name may match: as is, `flag-for-x` as `flag-x`, Fluent skin tones."""
    candidates = [compact(name)]
    if name.startswith("flag-for-"):
        candidates.append(compact("flag " + name.removeprefix("flag-for-")))
    for tone in _FLUENT_TONES:
        if name.endswith("-" + tone):
            candidates.append(compact(f"{name.removesuffix('-' + tone)} {tone} skin tone"))
            break
    return candidates


def match_icons(
    icon_set: IconSet, concepts: Mapping[str, Concept], index: Mapping[str, str]
) -> dict[str, str]:
    """Concept key -> icon name: by the set's own hexcode table, else by name; first name wins."""
    matched: dict[str, str] = {}
    for hexcode, name in sorted(icon_set.chars.items()):
        key = emoji_key(hexcode)
        if key in concepts and (name in icon_set.icons or name in icon_set.aliases):
            matched.setdefault(key, name)
    for name in icon_set.names():
        for candidate in name_candidates(name):
            key = index.get(candidate)
            if key is not None:
                matched.setdefault(key, name)
                break
    return matched


def svg_png(svg: str, size: int) -> bytes:
    """An SVG document rendered as a size x size RGBA PNG (cairosvg, imported only when rendering)."""
    import cairosvg

    return cairosvg.svg2png(bytestring=svg.encode("utf-8"), output_width=size, output_height=size)
