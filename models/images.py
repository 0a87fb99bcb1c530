"""Turning any decoded PIL image into the RGB tensor an image encoder expects: one function for
training and serving, so the two can never disagree."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

BACKGROUND = (255, 255, 255)  # transparent pixels (emoji, logos) are composited onto white


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


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` (bilinear, antialiased), then crop the centre square."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def image_to_tensor(image: Image.Image, size: int) -> Tensor:
    """PIL image of any mode -> normalised float tensor (3, size, size).

    Normalisation (x * 255 - 127) / 128 is what EfficientNet-Lite was trained with.
    """
    rgb = resize_center_crop(to_rgb(image), size)
    array = np.asarray(rgb, dtype=np.float32)  # (H, W, 3) in 0..255
    return torch.from_numpy((array - 127.0) / 128.0).permute(2, 0, 1).contiguous()  # (3, H, W)
