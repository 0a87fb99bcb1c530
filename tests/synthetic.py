"""Synthetic data of the shapes users bring: COCO-shaped caption data (coloured shapes, and
captions saying which and where) and English-French template sentence pairs."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

SIZE = 64  # pixels a side
COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 215),
    "yellow": (235, 200, 30),
}
SHAPES = ("circle", "square", "triangle")
CENTRES = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73)}
WHERE = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
ONE = (
    "a {c} {s} {w}",
    "a {s} in {c} {w}",
    "there is a {c} {s} {w}",
    "a small {c} {s} {w} of the picture",
    "{w} there is a {c} {s}",
)
TWO = (
    "a {c} {s} {w} and a {c2} {s2} {w2}",
    "a {c2} {s2} {w2} and a {c} {s} {w}",
    "two shapes: a {c} {s} and a {c2} {s2}",
    "there is a {c} {s} {w} and a {c2} {s2} {w2}",
    "a {s} in {c} next to a {s2} in {c2}",
)
KARPATHY_VAL2014 = ("val", "test", "restval", "restval")  # cycled over the val2014 images


@dataclass(frozen=True)
class Shape:
    """One shape drawn in a picture."""

    shape: str
    colour: str
    place: str


@dataclass(frozen=True)
class CocoShaped:
    """Paths of one synthetic set: the image root (train2014/, val2014/) and its caption files."""

    images: Path
    karpathy: Path  # dataset_coco.json
    coco: tuple[Path, Path]  # annotations/captions_train2014.json, captions_val2014.json
    tsv: Path  # captions.tsv: image path (from `images`) TAB caption, with a header line


def scene(rng: random.Random) -> list[Shape]:
    """One shape, or (one time in three) two in opposite places."""
    first = Shape(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(CENTRES)))
    if rng.random() > 1 / 3:
        return [first]
    return [first, Shape(rng.choice(SHAPES), rng.choice(list(COLOURS)), OPPOSITE[first.place])]


def draw(shapes: list[Shape]) -> Image.Image:
    """A SIZE x SIZE RGB picture of the shapes on a light background."""
    image = Image.new("RGB", (SIZE, SIZE), (245, 245, 240))
    pen = ImageDraw.Draw(image)
    radius = SIZE * 0.17
    for item in shapes:
        x, y = (SIZE * c for c in CENTRES[item.place])
        box = (x - radius, y - radius, x + radius, y + radius)
        colour = COLOURS[item.colour]
        if item.shape == "circle":
            pen.ellipse(box, fill=colour)
        elif item.shape == "square":
            pen.rectangle(box, fill=colour)
        else:
            pen.polygon(
                [(x, y - radius), (x + radius, y + radius), (x - radius, y + radius)], colour
            )
    return image


def captions(shapes: list[Shape], rng: random.Random) -> list[str]:
    """2 to 5 different captions of the shapes, e.g. "A red circle on the left."."""
    a = shapes[0]
    b = shapes[-1]
    words = {"c": a.colour, "s": a.shape, "w": WHERE[a.place]}
    words |= {"c2": b.colour, "s2": b.shape, "w2": WHERE[b.place]}
    templates = rng.sample(TWO if len(shapes) == 2 else ONE, rng.randint(2, 5))
    return [(t.format(**words) + ".").capitalize() for t in templates]


def write_coco_shaped(root: Path, n_images: int = 300, seed: int = 0) -> CocoShaped:
    """Write n_images JPEGs laid out as COCO 2014 (about 60% train2014, the rest val2014) with
    their captions as a Karpathy split file, two COCO captions files and a TSV; same seed, same
    files. Karpathy splits: train2014 images are train, val2014 images val/test/restval."""
    rng = random.Random(seed)
    root = Path(root)
    coco: dict[str, dict[str, Any]] = {}
    karpathy, lines = [], ["image\tcaption"]
    sentid = 0
    for index in range(n_images):
        image_id = 1 + index
        folder = "train2014" if rng.random() < 0.6 else "val2014"
        name = f"COCO_{folder}_{image_id:012d}.jpg"
        shapes = scene(rng)
        (root / folder).mkdir(parents=True, exist_ok=True)
        draw(shapes).save(root / folder / name, quality=90)
        texts = captions(shapes, rng)
        part = coco.setdefault(folder, _coco_file(folder))
        part["images"].append(_coco_image(folder, name, image_id))
        for text in texts:
            part["annotations"].append({"image_id": image_id, "id": sentid + 1, "caption": text})
            lines.append(f"{folder}/{name}\t{text}")
            sentid += 1
        in_val = len(coco["val2014"]["images"]) if "val2014" in coco else 0
        split = "train" if folder == "train2014" else KARPATHY_VAL2014[(in_val - 1) % 4]
        karpathy.append(_karpathy_record(folder, name, image_id, index, split, texts, sentid))
    return _write_files(root, coco, karpathy, lines)


def _coco_file(folder: str) -> dict[str, Any]:
    return {
        "info": {"description": f"synthetic shapes, COCO {folder} layout", "year": 2014},
        "licenses": [{"id": 1, "name": "CC0-1.0", "url": ""}],
        "images": [],
        "annotations": [],
    }


def _coco_image(folder: str, name: str, image_id: int) -> dict[str, Any]:
    url = f"http://images.cocodataset.org/{folder}/{name}"
    return {"license": 1, "file_name": name, "coco_url": url, "height": SIZE, "width": SIZE,
            "id": image_id}  # fmt: skip


def _karpathy_record(
    folder: str, name: str, image_id: int, imgid: int, split: str, texts: list[str], end: int
) -> dict[str, Any]:
    sentids = list(range(end - len(texts), end))
    sentences = [
        {"tokens": re.findall(r"\w+", text.lower()), "raw": text, "imgid": imgid, "sentid": n}
        for text, n in zip(texts, sentids, strict=True)
    ]
    return {"filepath": folder, "sentids": sentids, "filename": name, "imgid": imgid,
            "split": split, "sentences": sentences, "cocoid": image_id}  # fmt: skip


def _write_files(
    root: Path, coco: dict[str, dict[str, Any]], karpathy: list[dict[str, Any]], lines: list[str]
) -> CocoShaped:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    coco_paths = []
    for folder in ("train2014", "val2014"):
        path = root / "annotations" / f"captions_{folder}.json"
        path.write_text(json.dumps(coco.get(folder, _coco_file(folder))), encoding="utf-8")
        coco_paths.append(path)
    dataset = root / "dataset_coco.json"
    dataset.write_text(json.dumps({"images": karpathy, "dataset": "coco"}), encoding="utf-8")
    tsv = root / "captions.tsv"
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return CocoShaped(root, dataset, (coco_paths[0], coco_paths[1]), tsv)


FR_NOUNS = {
    "cat": "le chat",
    "dog": "le chien",
    "bird": "l'oiseau",
    "horse": "le cheval",
    "house": "la maison",
    "car": "la voiture",
    "boat": "le bateau",
    "tree": "l'arbre",
}
FR_COLOURS = {  # invariable in French: no agreement with la maison
    "red": "rouge",
    "yellow": "jaune",
    "pink": "rose",
    "orange": "orange",
    "beige": "beige",
}
FR_VERBS = {
    "sleeps": "dort",
    "waits": "attend",
    "falls": "tombe",
    "is here": "est ici",
    "is there": "est là",
    "moves": "bouge",
}


def english_french_pairs() -> list[tuple[str, str]]:
    """240 template sentences: "the red cat sleeps ." -> "le chat rouge dort ."."""
    return [
        (
            f"the {colour} {noun} {verb} .",
            f"{FR_NOUNS[noun]} {FR_COLOURS[colour]} {FR_VERBS[verb]} .",
        )
        for noun, colour, verb in product(FR_NOUNS, FR_COLOURS, FR_VERBS)
    ]
