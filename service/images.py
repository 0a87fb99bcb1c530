"""Safe image decoding: formats allowed by magic bytes, pixel count capped before any pixel is decoded."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from service.errors import RequestError

# magic bytes -> (name shown to users, Pillow plugins allowed to open it)
_SIGNATURES: tuple[tuple[bytes, int, str, tuple[str, ...]], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG", ("JPEG", "MPO")),  # MPO: phone JPEGs with a depth map
    (b"\x89PNG\r\n\x1a\n", 0, "PNG", ("PNG",)),
    (b"GIF87a", 0, "GIF", ("GIF",)),
    (b"GIF89a", 0, "GIF", ("GIF",)),
    (b"WEBP", 8, "WebP", ("WEBP",)),  # after b"RIFF" and the chunk size
    (b"BM", 0, "BMP", ("BMP",)),
)
ALLOWED_FORMATS = "JPEG, PNG, WebP, GIF (first frame) or BMP"
MEDIA_TYPES = "image/jpeg, image/png, image/webp, image/gif, image/bmp"  # as the API documents them


@dataclass(frozen=True)
class ImageLimits:
    """What an uploaded image may be."""

    max_pixels: int
    max_aspect_ratio: float


def sniff_format(data: bytes) -> tuple[str, tuple[str, ...]] | None:
    """The allowed format `data` starts like, or None."""
    for magic, offset, name, plugins in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic and (offset == 0 or data[:4] == b"RIFF"):
            return name, plugins
    return None


def decode_image(data: bytes, limits: ImageLimits, field: str = "image") -> Image.Image:
    """Uploaded bytes -> a fully loaded PIL image (first frame), or RequestError naming `field`.

    The client's declared content type is ignored: the format comes from the magic bytes, and
    only that format's decoder may open the file. Width x height is checked from the header,
    before decoding, so a small file that expands to gigabytes is refused cheaply.
    """
    if not data:
        raise RequestError("the image is empty (0 bytes)", field, code="invalid_image")
    sniffed = sniff_format(data)
    if sniffed is None:
        raise RequestError(
            f"not a supported image: expected {ALLOWED_FORMATS}", field, code="invalid_image"
        )
    name, plugins = sniffed
    try:
        image = Image.open(io.BytesIO(data), formats=plugins)
    except Image.DecompressionBombError:
        raise _too_large(None, limits, field) from None
    except Exception:  # Pillow raises many types for malformed headers; all mean a bad upload
        raise RequestError(
            f"the file starts like {name} but its header is invalid", field, code="invalid_image"
        ) from None
    width, height = image.size
    if width < 1 or height < 1 or width * height > limits.max_pixels:
        image.close()
        raise _too_large((width, height), limits, field)
    try:
        image.seek(0)  # the first frame of an animation
        image.load()
    except Exception:
        image.close()
        raise RequestError(
            f"the {name} image is truncated or corrupt", field, code="invalid_image"
        ) from None
    return limit_aspect_ratio(image, limits.max_aspect_ratio)


def _too_large(size: tuple[int, int] | None, limits: ImageLimits, field: str) -> RequestError:
    found = f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels" if size else "far too many pixels"
    return RequestError(
        f"image has {found}; at most {limits.max_pixels:,} pixels (width x height) are allowed",
        field,
        code="image_too_large",
    )


def limit_aspect_ratio(image: Image.Image, max_ratio: float) -> Image.Image:
    """Centre-crop the long side to `max_ratio` times the short side.

    The encoder keeps only the centre square after resizing the short side, so this crop
    removes nothing it would have seen; it only stops a 1x10000 image from being resized to
    224x2,240,000 pixels on the way there.
    """
    width, height = image.size
    if max(width, height) <= max_ratio * min(width, height):
        return image
    if width > height:
        keep = max(1, round(height * max_ratio))
        left = (width - keep) // 2
        return image.crop((left, 0, left + keep, height))
    keep = max(1, round(width * max_ratio))
    top = (height - keep) // 2
    return image.crop((0, top, width, top + keep))
