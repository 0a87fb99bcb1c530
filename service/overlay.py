"""POST /caption_overlay: where the captioner looked for one word, drawn over the image as a PNG.

A multipart form like /caption's (`image`, `options`) plus `token` (which word), `alternative`
(which beam/sample alternative) and `size` (side of the square PNG), typed in `service.schemas`.
The answer is the centre square the encoder sees, darkened where the word's attention is low and
tinted where it is high; headers name the caption (`X-Caption`), the word (`X-Token`, both
percent-encoded) and the model.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote

import numpy as np
from PIL import Image
from starlette.responses import Response

from service.errors import RequestError
from service.images import decode_image
from service.schemas import DecodingOptions

if TYPE_CHECKING:  # imports torch, which BentoML's parent process must not load
    from service.tasks.caption import CaptionTask

# service/demo/caption.js draws the same picture on the demo page's canvas, with these numbers
TINT = np.array([255.0, 96.0, 0.0], dtype=np.float32)  # orange where the word looked
TINT_STRENGTH = 0.45  # at the peak of the attention
DIM = 0.7  # unattended pixels keep 30% of their brightness, so the looked-at region stands out
T = TypeVar("T")


def heat_map(grid: Sequence[Sequence[float]], size: int) -> np.ndarray:
    """An H x W attention grid -> (size, size) weights in 0..1, bilinear, scaled to its own peak."""
    weights = np.asarray(grid, dtype=np.float32)  # (H, W)
    peak = float(weights.max()) if weights.size else 0.0
    scaled = weights / peak if peak > 0 else np.zeros_like(weights)
    upsampled = Image.fromarray(scaled).resize((size, size), Image.Resampling.BILINEAR)  # mode F
    return np.clip(np.asarray(upsampled, dtype=np.float32), 0.0, 1.0)  # (size, size)


def render_overlay(image: Image.Image, grid: Sequence[Sequence[float]], size: int) -> Image.Image:
    """The centre square the encoder sees, `size` px, dimmed where `grid` is low, tinted where high."""
    # imported here: models.images imports torch, and the parent `bentoml serve` process must not
    from models.images import resize_center_crop, to_rgb

    base = np.asarray(resize_center_crop(to_rgb(image), size), dtype=np.float32)  # (S, S, 3)
    heat = heat_map(grid, size)[..., None]  # (S, S, 1)
    lit = base * (1.0 - DIM * (1.0 - heat))
    blended = lit * (1.0 - TINT_STRENGTH * heat) + TINT * (TINT_STRENGTH * heat)
    return Image.fromarray(np.clip(blended.round(), 0, 255).astype(np.uint8))


def overlay_png(
    captions: CaptionTask,
    image: Path,
    options: DecodingOptions,
    token: int,
    alternative: int,
    size: int,
    language: str,
) -> Response:
    """Caption the image with attention and draw the chosen word's attention over it."""
    data = image.read_bytes()
    options = options.model_copy(update={"return_attention": True})
    (found,), tag = captions.captions([data], ["image"], options, language)
    chosen = _pick(found.alternatives, alternative, "alternative")
    word = _pick(chosen.tokens, token, "token")
    grid = word.attention or [[0.0]]  # a captioner without attention: nothing highlighted
    picture = render_overlay(decode_image(data, captions.image_limits), grid, size)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    headers = {"X-Caption": quote(chosen.text), "X-Token": quote(word.token), "X-Model": tag}
    return Response(buffer.getvalue(), media_type="image/png", headers=headers)


def _pick(items: Sequence[T], index: int, field: str) -> T:
    if index >= len(items):
        raise RequestError(
            f"{field}: {index} is out of range (allowed for this caption: 0 to {len(items) - 1})",
            field,
        )
    return items[index]
