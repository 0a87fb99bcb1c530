"""Safe image decoding: formats allowed by magic bytes, pixel count capped before any pixel is decoded."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import ExifTags, Image

from service.errors import RequestError

if TYPE_CHECKING:  # imports torch, which BentoML's parent process must not load
    from torch import Tensor

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


Box = tuple[int, int, int, int]  # (left, upper, right, lower), as PIL's `crop` takes it
# JPEG modes that go to the device decoder: YCbCr (Pillow's "RGB") and grey. CMYK and YCCK
# JPEGs (Pillow's "CMYK"), rare in uploads, keep Pillow: nvjpeg's reading of them is unchecked.
DEVICE_JPEG_MODES = ("RGB", "L")


@dataclass(frozen=True)
class EncodedJpeg:
    """A JPEG upload checked from its header only, left encoded for the batch worker to decode
    on the device (`models.images.decode_jpegs`)."""

    data: bytes
    orientation: int  # EXIF orientation as Pillow reads it for `to_rgb` (1: as stored)
    box: Box | None  # `limit_aspect_ratio`'s crop in stored pixels; None: nothing to crop
    limits: ImageLimits  # what it was checked against, for decoding it with Pillow after all

    def cropped(self, pixels: Tensor) -> Tensor:
        """Its decoded (C, H, W) pixels, cropped as `decode_image` crops the PIL image."""
        if self.box is None:
            return pixels
        left, upper, right, lower = self.box
        return pixels[:, upper:lower, left:right]


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
    image, name = _opened(data, limits, field)
    return _loaded(image, name, limits, field)


def decode_or_defer(
    data: bytes, limits: ImageLimits, field: str = "image"
) -> Image.Image | EncodedJpeg:
    """`decode_image`, except that a YCbCr or grey JPEG is checked from its header only (format,
    pixel cap) and comes back still encoded, with what its decoding on the device needs."""
    image, name = _opened(data, limits, field)
    if name == "JPEG" and image.mode in DEVICE_JPEG_MODES:
        try:
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        except Exception:  # a malformed EXIF block: Pillow's path answers it as it always has
            orientation = None
        if isinstance(orientation, int):
            box = aspect_ratio_box(image.size, limits.max_aspect_ratio)
            image.close()
            return EncodedJpeg(data, orientation, box, limits)
    return _loaded(image, name, limits, field)


def _opened(data: bytes, limits: ImageLimits, field: str) -> tuple[Image.Image, str]:
    """The image opened from its header, its pixel count checked, and the format's name."""
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
    return image, name


def _loaded(image: Image.Image, name: str, limits: ImageLimits, field: str) -> Image.Image:
    """The opened image's first frame decoded, then cropped to the aspect-ratio limit."""
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
    box = aspect_ratio_box(image.size, max_ratio)
    return image if box is None else image.crop(box)


def aspect_ratio_box(size: tuple[int, int], max_ratio: float) -> Box | None:
    """The centre box of a (width, height) image whose long side is at most `max_ratio` times
    its short side; None when the whole image already is."""
    width, height = size
    if max(width, height) <= max_ratio * min(width, height):
        return None
    if width > height:
        keep = max(1, round(height * max_ratio))
        left = (width - keep) // 2
        return (left, 0, left + keep, height)
    keep = max(1, round(width * max_ratio))
    top = (height - keep) // 2
    return (0, top, width, top + keep)
