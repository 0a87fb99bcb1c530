"""Tux Paint stamps: one-sentence English and German descriptions beside PNG or SVG images."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

STAMPS_DIR = "usr/share/tuxpaint/stamps"
_ARTICLE = {
    "en": re.compile(r"^(?:a|an)\s+", re.IGNORECASE),
    "de": re.compile(r"^(?:ein|eine|einen|einem|einer|eines)\s+", re.IGNORECASE),
}
_END_PUNCTUATION = re.compile(r"[\s.!?]+$")


@dataclass(frozen=True)
class Stamp:
    """One stamp: its id (path under the stamps folder), image, and normalised captions."""

    stamp_id: str
    image: Path
    caption: str
    caption_de: str
    description: str
    mirror: bool = True  # False when the stamp's `.dat` says `nomirror` (letters, signs)

    @property
    def kind(self) -> str:
        """`png` (mostly photographic cut-outs) or `svg` (clip art)."""
        return self.image.suffix.lstrip(".")


def normalise_caption(text: str, language: str) -> str:
    """A description as a caption, like the CLDR emoji labels: no leading a/an, no final full stop.

    English is lower-cased as the emoji captions are; German keeps its capitalised nouns.
    """
    text = " ".join(text.split())
    text = _END_PUNCTUATION.sub("", _ARTICLE[language].sub("", text, count=1))
    return text.lower() if language == "en" else text


def parse_description(text: str) -> tuple[str, str]:
    """(English first line, German `de.utf8=` line or "") of a stamp's `.txt` file."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    english = lines[0] if lines and "=" not in lines[0].split(" ")[0] else ""
    german = next((line.split("=", 1)[1] for line in lines if line.startswith("de.utf8=")), "")
    return english, german.strip()


def find_stamps(stamps_dir: Path) -> tuple[list[Stamp], int]:
    """Every stamp with a description and an image (SVG preferred when both exist); also the skips."""
    stamps, skipped = [], 0
    for txt in sorted(stamps_dir.rglob("*.txt")):
        image = next(
            (p for p in (txt.with_suffix(".svg"), txt.with_suffix(".png")) if p.is_file()), None
        )
        english, german = parse_description(txt.read_text(encoding="utf-8", errors="replace"))
        if image is None or not english:
            skipped += 1
            continue
        stamps.append(
            Stamp(
                stamp_id=txt.relative_to(stamps_dir).with_suffix("").as_posix(),
                image=image,
                caption=normalise_caption(english, "en"),
                caption_de=normalise_caption(german, "de") if german else "",
                description=english,
                mirror=not _says_nomirror(txt.with_suffix(".dat")),
            )
        )
    return stamps, skipped


def _says_nomirror(dat: Path) -> bool:
    return dat.is_file() and "nomirror" in dat.read_text(encoding="utf-8", errors="replace")


def stamp_filename(stamp_id: str) -> str:
    """Flat file name of a stamp image: `animals/mammals/giraffe` -> `animals__mammals__giraffe.png`."""
    return stamp_id.replace("/", "__") + ".png"


def load_stamp(stamp: Stamp, size: int) -> Image.Image:
    """The stamp as RGBA, its longer side `size` px (SVGs rendered at that size, PNGs resized)."""
    if stamp.kind == "svg":
        import cairosvg

        png = cairosvg.svg2png(url=str(stamp.image), output_width=size)
        image = Image.open(io.BytesIO(png)).convert("RGBA")
    else:
        image = Image.open(stamp.image).convert("RGBA")
    scale = size / max(image.size)
    new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(new_size, Image.Resampling.LANCZOS)


def stamp_png(stamp: Stamp, size: int) -> bytes:
    """The stamp centred on a transparent size x size square, as PNG (a centre crop keeps it whole)."""
    image = load_stamp(stamp, size)
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
