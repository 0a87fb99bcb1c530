"""POST /caption_overlay: where the captioner looked for one word, drawn over the image as a PNG.

A multipart form like /caption's (`image`, `options`) plus `token` (which word), `alternative`
(which beam/sample alternative) and `size` (side of the square PNG). The answer is the centre square
the encoder sees, darkened where the word's attention is low and tinted where it is high; headers
name the caption (`X-Caption`), the word (`X-Token`, both percent-encoded) and the model.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import TypeVar
from urllib.parse import quote

import bentoml
import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.errors import RequestError, answers_errors, validation_error
from service.guard import RequestGuard, RouteRule
from service.images import decode_image
from service.schemas import DecodingOptions
from service.settings import Settings

ROUTE = "/caption_overlay"
# service/demo/caption.js draws the same picture on the demo page's canvas, with these numbers
TINT = np.array([255.0, 96.0, 0.0], dtype=np.float32)  # orange where the word looked
TINT_STRENGTH = 0.45  # at the peak of the attention
DIM = 0.7  # unattended pixels keep 30% of their brightness, so the looked-at region stands out
T = TypeVar("T")


class OverlayForm(BaseModel):
    """The text fields of a /caption_overlay form."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    options: DecodingOptions = DecodingOptions()
    token: int = Field(0, ge=0, le=199, description="index of the word in the caption")
    alternative: int = Field(0, ge=0, le=9, description="index of the alternative, best first")
    size: int = Field(384, ge=32, le=1024, description="side of the square PNG, in pixels")


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


def overlay_form(fields: dict[str, str]) -> OverlayForm:
    """The form's text fields -> OverlayForm, or RequestError naming the field at fault."""
    values: dict[str, object] = dict(fields)
    if "options" in values:
        try:
            values["options"] = json.loads(fields["options"])
        except ValueError:
            raise RequestError("options: not valid JSON", "options") from None
    try:
        return OverlayForm.model_validate(values)
    except ValidationError as error:
        # the same words and allowed ranges as every other endpoint's validation errors; the
        # first problem only
        details = error.errors(include_url=False, include_context=False, include_input=False)
        raise validation_error(details[:1], OverlayForm.model_json_schema()) from None


@answers_errors
def answer_overlay(data: bytes | None, fields: dict[str, str]) -> Response:
    """Caption the image with attention and draw the chosen word's attention over it."""
    if data is None:
        raise RequestError("image: an image file is required (multipart file part)", "image")
    form = overlay_form(fields)
    captions = bentoml.get_current_service().captions  # service.tasks.caption.CaptionTask
    options = form.options.model_copy(update={"return_attention": True})
    (found,), tag = captions.captions([data], ["image"], options)
    alternative = _pick(found.alternatives, form.alternative, "alternative")
    token = _pick(alternative.tokens, form.token, "token")
    picture = render_overlay(decode_image(data, captions.image_limits), token.attention, form.size)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    headers = {"X-Caption": quote(alternative.text), "X-Token": quote(token.token), "X-Model": tag}
    return Response(buffer.getvalue(), media_type="image/png", headers=headers)


def _pick(items: Sequence[T], index: int, field: str) -> T:
    if index >= len(items):
        raise RequestError(
            f"{field}: {index} is out of range (allowed for this caption: 0 to {len(items) - 1})",
            field,
        )
    return items[index]


async def caption_overlay(request: Request) -> Response:
    """Read the form (the guard has checked it), then do the blocking work on a thread."""
    async with request.form(max_files=1, max_fields=8) as form:
        upload = form.get("image")
        data = await upload.read() if isinstance(upload, UploadFile) else None
        fields = {name: value for name, value in form.multi_items() if isinstance(value, str)}
    return await run_in_threadpool(answer_overlay, data, fields)


def overlay_app(settings: Settings) -> Starlette:
    """The route, behind its own RequestGuard with /caption's limits (media type, body size)."""
    rule = RouteRule(
        frozenset({"multipart/form-data"}),
        settings.caption_body_bytes,
        frozenset({"image"}),
        OverlayForm.model_json_schema(),
    )
    guard = Middleware(RequestGuard, routes={ROUTE: rule}, max_in_flight=settings.max_in_flight)
    return Starlette(routes=[Route(ROUTE, caption_overlay, methods=["POST"])], middleware=[guard])
