"""Schemathesis hooks for tests/reliability/test_schema_fuzzing.py (SCHEMATHESIS_HOOKS).

The document says an image part must hold a JPEG, PNG, WebP, GIF or BMP image; schemathesis
fills `format: binary` with arbitrary bytes, so it is given real images of those formats.
"""

from __future__ import annotations

import io

import schemathesis
from hypothesis import strategies as st
from PIL import Image
from schemathesis.transport.serialization import Binary


def _image(fmt: str, size: tuple[int, int]) -> Binary:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 90)).save(buffer, format=fmt)
    return Binary(buffer.getvalue())


IMAGES = [
    _image(fmt, size)
    for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP")
    for size in ((32, 24), (1, 1), (3, 400))
]
schemathesis.openapi.format("binary", st.sampled_from(IMAGES))
