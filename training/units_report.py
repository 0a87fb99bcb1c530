"""Find interpretable hidden units of a character LM and render text coloured by their activation."""

from __future__ import annotations

import argparse
import html
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from models.checkpoint import load_model
from models.units import UnitRecording, UnitScore, best_units, record_units
from training.data.text import load_text

_COLOURS = colormaps["bwr"]  # blue low, white middle, red high
_TAB = "    "


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command-line flags."""
    p = argparse.ArgumentParser(description="Interpretable units of a char LM", add_help=add_help)
    p.add_argument(
        "--model", default="pretrained/charlm", help="model directory (default: pretrained/charlm)"
    )
    p.add_argument(
        "--text",
        default="data/fortunes/valid.txt",
        help="text file or folder to read (default: data/fortunes/valid.txt)",
    )
    p.add_argument(
        "--max-chars",
        type=int,
        default=20000,
        help="characters recorded for the search (default: 20000)",
    )
    p.add_argument("--top", type=int, default=3, help="units reported per property (default: 3)")
    p.add_argument(
        "--render-chars", type=int, default=1500, help="characters shown coloured (default: 1500)"
    )
    p.add_argument(
        "--render-offset", type=int, default=0, help="first character shown coloured (default: 0)"
    )
    p.add_argument(
        "--width", type=int, default=80, help="characters per rendered row in the PNG (default: 80)"
    )
    p.add_argument(
        "--output-dir",
        default="runs/units",
        help="where report.json/.html and PNGs go (default: runs/units)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    return p


def colour_of(values: np.ndarray) -> np.ndarray:
    """Activations (T,) -> RGB (T, 3) in [0, 1]: the lowest shown value blue, the highest red."""
    low, high = float(values.min()), float(values.max())
    return _COLOURS((values - low) / ((high - low) or 1.0))[:, :3]


def render_html(characters: list[str], values: np.ndarray, title: str) -> str:
    """A <div> of the characters, each on a background coloured by its value (red high, blue low)."""
    spans = []
    for ch, (r, g, b), v in zip(characters, colour_of(values), values, strict=True):
        shown = "\n" if ch == "\n" else html.escape(_TAB if ch == "\t" else ch)
        rgb = f"rgb({int(r * 255)},{int(g * 255)},{int(b * 255)})"
        spans.append(f'<span style="background:{rgb}" title="{v:.3f}">{shown}</span>')
    body = "".join(spans)
    return f'<h3>{html.escape(title)}</h3>\n<pre style="font-size:13px">{body}</pre>\n'


def _grid(characters: list[str], width: int) -> list[list[tuple[str, int]]]:
    """Rows of (character, index) cells: a newline ends a row (shown as an empty cell), long lines wrap."""
    rows: list[list[tuple[str, int]]] = [[]]
    for i, ch in enumerate(characters):
        if len(rows[-1]) >= width:
            rows.append([])
        rows[-1].append((" " if ch in "\n\t" else ch, i))
        if ch == "\n":
            rows.append([])
    return rows


def render_png(
    characters: list[str], values: np.ndarray, title: str, path: Path, width: int
) -> None:
    """Save the characters as a monospace grid coloured by value (red high, blue low)."""
    rows = _grid(characters, width)
    image = np.ones((len(rows), width, 3))
    colours = colour_of(values)
    for y, row in enumerate(rows):
        for x, (_, i) in enumerate(row):
            image[y, x] = colours[i]
    fig = Figure(figsize=(width * 0.095 + 0.2, len(rows) * 0.2 + 0.6))  # no pyplot: no display
    ax = fig.subplots()
    ax.imshow(image, aspect="auto", interpolation="nearest")
    for y, row in enumerate(rows):
        for x, (ch, _) in enumerate(row):
            ax.text(x, y, ch, ha="center", va="center", fontsize=9, family="monospace")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(
    recording: UnitRecording, found: dict[str, list[UnitScore]], args: argparse.Namespace
) -> Path:
    """report.json, report.html and one PNG per property (its best unit) under --output-dir."""
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    shown = slice(args.render_offset, args.render_offset + args.render_chars)
    characters = recording.characters[shown]
    report = {name: [asdict(s) for s in scores] for name, scores in found.items()}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    parts = ["<html><meta charset='utf-8'><body>"]
    for name, scores in found.items():
        best = scores[0]
        title = f"{name}: unit {best.unit}, r = {best.correlation:+.3f}"
        values = recording.activations[shown, best.index]
        parts.append(render_html(characters, values, title))
        render_png(characters, values, title, out / f"unit_{name}.png", args.width)
    (out / "report.html").write_text("".join(parts) + "</body></html>", encoding="utf-8")
    return out


def main(args: argparse.Namespace) -> dict[str, list[UnitScore]]:
    """Record every unit over the text, report each property's best units and render them."""
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    vocabulary = loaded.vocabularies["text"]
    text = load_text(Path(args.text))[: args.max_chars]
    recording = record_units(loaded.model, vocabulary, text)
    found = best_units(recording, args.top)
    for name, scores in found.items():
        listed = ", ".join(f"{s.unit} (r={s.correlation:+.3f})" for s in scores)
        print(f"{name:>14}: {listed}")
    print(f"report in {write_report(recording, found, args)}")
    return found


if __name__ == "__main__":
    main(get_args_parser().parse_args())
