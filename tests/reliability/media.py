"""Hostile and unusual image files, built in code (nothing large on disk)."""

from __future__ import annotations

import io
import random
import struct
import zlib

from PIL import Image


def encoded(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def marked(width: int, height: int) -> Image.Image:
    """Blue with a red top-left quarter: where the red ends up shows any rotation."""
    image = Image.new("RGB", (width, height), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, max(1, width // 4), max(1, height // 4)))
    return image


def photo_like(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    """Smooth random colours, so that different images give different captions."""
    rng = random.Random(seed)
    small = Image.new("RGB", (4, 4))
    small.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(16)])
    return small.resize((width, height), Image.Resampling.BICUBIC)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_of_zeros(width: int, height: int, bit_depth: int = 8, colour_type: int = 0) -> bytes:
    """A complete, valid PNG of `width` x `height` zero pixels, compressed row by row (so even
    gigapixel files are built in little memory). colour_type 0: grey, 2: RGB."""
    channels = {0: 1, 2: 3}[colour_type]
    row = b"\0" + b"\0" * ((width * channels * bit_depth + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def png_with_text_bomb(megabytes: int = 64) -> bytes:
    """A small valid PNG with a zTXt chunk that inflates to `megabytes` of text."""
    small = encoded(Image.new("RGB", (8, 8), (10, 20, 30)))
    text = zlib.compress(b"A" * (megabytes * 2**20), 9)
    bomb = _png_chunk(b"zTXt", b"Comment\0\0" + text)
    end = small.rindex(b"IEND") - 4  # before the IEND chunk's length field
    return small[:end] + bomb + small[end:]


def gif_header_bomb(width: int = 65535, height: int = 65535) -> bytes:
    """A GIF whose logical screen and only frame claim `width` x `height`, with almost no data."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return screen + frame + b"\x02\x02\x4c\x01\x00\x3b"


def bmp_header_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A 24-bit BMP header claiming `width` x `height` and no pixel data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def jpeg_header_bomb(width: int = 65500, height: int = 65500) -> bytes:
    """A baseline JPEG start-of-frame claiming `width` x `height`, then end of image."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


def webp_header_bomb(width: int = 16383, height: int = 16383) -> bytes:
    """An extended WebP (VP8X) whose canvas claims `width` x `height`, with no image chunk."""
    vp8x = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little")
    vp8x += (height - 1).to_bytes(3, "little")
    chunk = b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def psd_file(width: int = 16, height: int = 16) -> bytes:
    """A minimal Photoshop file: header, empty sections, raw RGB data."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    sections = struct.pack(">III", 0, 0, 0)  # colour mode data, resources, layers
    return header + sections + struct.pack(">H", 0) + b"\x80" * (3 * width * height)


def fits_file(width: int = 16, height: int = 16) -> bytes:
    """A minimal FITS image: 80-column header cards padded to 2880 bytes, then 8-bit data."""
    cards = [
        "SIMPLE  =                    T",
        "BITPIX  =                    8",
        "NAXIS   =                    2",
        f"NAXIS1  = {width:20d}",
        f"NAXIS2  = {height:20d}",
        "END",
    ]
    header = "".join(card.ljust(80) for card in cards).encode("ascii")
    header = header.ljust(2880, b" ")
    return header + (b"\x40" * (width * height)).ljust(2880, b"\0")


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)
