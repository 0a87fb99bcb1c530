"""Turning any decoded PIL image into the RGB tensor an image encoder expects (torchvision
transforms v2): one function for training and serving, so the two can never disagree. JPEG files
may instead be decoded by torchvision on a device (nvjpeg on CUDA) and go through the same
geometry and normalisation there."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

Picture = TypeVar("Picture", Image.Image, Tensor)

BACKGROUND = (255, 255, 255)  # transparent pixels (emoji, logos) are composited onto white

# RGB in 0..1 -> (x * 255 - 127) / 128, the input EfficientNet-Lite was trained with
TO_TENSOR = v2.Compose(
    [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=[127 / 255] * 3, std=[128 / 255] * 3),
        v2.ToPureTensor(),
    ]
)


def to_rgb(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation and turn any mode (P, LA, RGBA, CMYK, I;16, 1, F...) into RGB."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = _high_depth_to_l(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, BACKGROUND)
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """Scale 16/32-bit or float grey images to 8 bits by their own value range."""
    values = np.asarray(image, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    return Image.fromarray(scaled.round().astype(np.uint8), mode="L")


def resize_center_crop(image: Picture, size: int) -> Picture:
    """Resize the shorter side to `size` (bilinear, antialiased), then crop the centre square.

    Takes a PIL image (resized by Pillow) or a uint8 tensor (3, H, W) (resized by torch, which
    rounds differently), and returns the same kind.
    """
    height, width = F.get_size(image)
    scale = size / min(width, height)
    # rounded sizes and a floored offset, not v2.Resize's truncation and v2.CenterCrop's rounding:
    # the geometry the shipped models were trained with (a pixel off changes non-square inputs)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = F.resize(image, [new_h, new_w], interpolation=v2.InterpolationMode.BILINEAR)
    return F.crop(image, (new_h - size) // 2, (new_w - size) // 2, size, size)


def image_to_tensor(image: Image.Image, size: int) -> Tensor:
    """PIL image of any mode -> normalised float tensor (3, size, size)."""
    return _normalised(resize_center_crop(to_rgb(image), size))


def pixels_to_tensor(pixels: Tensor, size: int, orientation: int = 1) -> Tensor:
    """uint8 RGB (3, H, W) as stored in the file, on any device -> normalised float tensor
    (3, size, size) on that device, with EXIF `orientation` applied as `to_rgb` applies it.

    The same steps as `image_to_tensor`; torch's resize rounds differently from Pillow's, by a
    uint8 level or two (1/128 each after normalisation).
    """
    return _normalised(resize_center_crop(exif_transposed(pixels, orientation), size))


def _normalised(picture: Image.Image | Tensor) -> Tensor:
    # row-major: ToImage keeps Pillow's (H, W, 3) memory order, and the encoder given a
    # channels-last image runs other convolution kernels (features differ by about 1e-5)
    return TO_TENSOR(picture).contiguous()


def exif_transposed(pixels: Tensor, orientation: int) -> Tensor:
    """(C, H, W) as stored -> as shown, for an EXIF orientation tag: the transposition that
    `ImageOps.exif_transpose` (in `to_rgb`) makes; 1 or an unknown value leaves it as it is."""
    rows, columns = pixels.dim() - 2, pixels.dim() - 1
    if orientation == 2:  # mirrored
        return pixels.flip(columns)
    if orientation == 3:  # upside down
        return pixels.flip(rows, columns)
    if orientation == 4:
        return pixels.flip(rows)
    if orientation == 5:  # Pillow's TRANSPOSE: mirrored along the main diagonal
        return pixels.transpose(rows, columns)
    if orientation == 6:  # Pillow's ROTATE_270: a quarter turn clockwise
        return pixels.rot90(-1, (rows, columns))
    if orientation == 7:  # Pillow's TRANSVERSE: mirrored along the other diagonal
        return pixels.transpose(rows, columns).flip(rows, columns)
    if orientation == 8:  # Pillow's ROTATE_90: a quarter turn anticlockwise
        return pixels.rot90(1, (rows, columns))
    return pixels


def decode_jpegs(files: Sequence[bytes], device: torch.device) -> list[Tensor | None]:
    """JPEG files -> uint8 RGB (3, H, W) tensors on `device`, as stored (no EXIF orientation:
    the CUDA decoder ignores `apply_exif_orientation`, so `pixels_to_tensor` applies it for
    both); None for a file the decoder cannot read there.

    One batched `decode_jpeg` call (nvjpeg on CUDA). A batched call that fails returns no image
    at all and does not say which file failed, so after one each file is decoded alone.
    """
    if not files:
        return []
    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in files]
    try:
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except torch.OutOfMemoryError:
        raise  # the batch's problem, not a file's
    except RuntimeError:
        return [_decoded_alone(data, device) for data in encoded]


def _decoded_alone(encoded: Tensor, device: torch.device) -> Tensor | None:
    try:
        (pixels,) = decode_jpeg([encoded], mode=ImageReadMode.RGB, device=device)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError:
        return None
    return pixels
