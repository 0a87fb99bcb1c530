"""Hostile and unusual images against the real server: refused cheaply with a 4xx, or captioned."""

from __future__ import annotations

import io
import threading
import time

import httpx
import pytest
from PIL import Image

from service.images import ImageLimits, decode_image
from tests.reliability.checks import assert_error
from tests.reliability.media import (
    bmp_header_bomb,
    encoded,
    fits_file,
    gif_header_bomb,
    jpeg_header_bomb,
    marked,
    photo_like,
    png_of_zeros,
    png_with_text_bomb,
    psd_file,
    random_bytes,
    webp_header_bomb,
)
from tests.serving import rss_mb, worker_of

pytestmark = [pytest.mark.reliability, pytest.mark.service]
CAP = ImageLimits(25_000_000, 4.0)  # the service defaults
SHORT = {"max_length": 4}


def caption(client: httpx.Client, data: bytes, name: str = "x.png", mime: str | None = None):
    file = (name, data, mime) if mime else (name, data)
    return client.post("/caption", files={"image": file}, data={"options": '{"max_length": 4}'})


def assert_captioned(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text[:500]
    body = response.json()
    assert body["caption"] == body["alternatives"][0]["text"]
    return body


class PeakRSS:
    """Samples a process's resident memory in a thread; `peak` is the highest seen, in MB."""

    def __init__(self, process) -> None:
        self.process, self.peak, self._stop = process, rss_mb(process), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.process))
            time.sleep(0.002)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb(self.process))


def test_pixel_bomb_is_refused_in_a_second_without_memory_growth(
    client, server, pixel_bomb: bytes
) -> None:
    worker = worker_of(server.process.pid)
    assert worker is not None
    caption(client, encoded(photo_like()))  # warm: the first request allocates buffers
    before = rss_mb(worker)
    with PeakRSS(worker) as memory:
        started = time.monotonic()
        response = caption(client, pixel_bomb)
        elapsed = time.monotonic() - started
    assert len(pixel_bomb) < 4096
    assert_error(response, 400, "image_too_large")
    assert elapsed < 1.0
    assert memory.peak - before < 50, f"worker RSS grew by {memory.peak - before:.1f} MB"
    print(f"FIGURE pixel bomb: {elapsed * 1000:.0f} ms, RSS peak +{memory.peak - before:.1f} MB")
    assert_captioned(caption(client, encoded(photo_like())))


@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("png 5001x5000 grey, complete", lambda: png_of_zeros(5001, 5000)),
        ("png 20000x20000 1-bit, complete", lambda: png_of_zeros(20000, 20000, bit_depth=1)),
        ("gif 65535x65535", gif_header_bomb),
        ("bmp 100000x100000", bmp_header_bomb),
        ("jpeg 65500x65500", jpeg_header_bomb),
        ("webp 16383x16383", webp_header_bomb),
    ],
)
def test_images_above_the_pixel_cap_are_refused_before_decoding(client, name, build) -> None:
    data = build()
    assert len(data) < 100_000, name
    started = time.monotonic()
    assert_error(caption(client, data), 400, "image_too_large")
    assert time.monotonic() - started < 1.0, name


def test_an_image_exactly_at_the_pixel_cap_is_captioned(client) -> None:
    assert_captioned(caption(client, png_of_zeros(5000, 5000, colour_type=2)))


def test_a_text_chunk_that_inflates_to_64_mb_is_refused_cheaply(client, server) -> None:
    worker = worker_of(server.process.pid)
    before = rss_mb(worker)
    with PeakRSS(worker) as memory:
        assert_error(caption(client, png_with_text_bomb(64)), 400, "invalid_image")
    assert memory.peak - before < 50


@pytest.mark.parametrize(
    ("name", "data", "mime"),
    [
        ("zero bytes", b"", "image/jpeg"),
        ("random bytes", random_bytes(4096), "image/jpeg"),
        ("half a JPEG", encoded(photo_like(320, 240), "JPEG")[:2000], "image/jpeg"),
        ("a text file named .jpg", b"this is not an image\n" * 20, "image/jpeg"),
        ("TIFF declared as JPEG", encoded(photo_like(16, 16), "TIFF"), "image/jpeg"),
        ("PSD declared as JPEG", psd_file(), "image/jpeg"),
        ("FITS declared as JPEG", fits_file(), "image/jpeg"),
        ("PNG signature then garbage", b"\x89PNG\r\n\x1a\n" + random_bytes(500, 1), "image/png"),
        ("JPEG signature then garbage", b"\xff\xd8\xff" + random_bytes(500, 2), "image/jpeg"),
        ("RIFF without WEBP", b"RIFF\x10\x00\x00\x00WAVEfmt " + bytes(8), "image/webp"),
    ],
)
def test_non_images_and_broken_images_are_refused(client, name, data, mime) -> None:
    assert_error(caption(client, data, "photo.jpg", mime), 400, "invalid_image")


@pytest.mark.parametrize("size", [(1, 1), (1, 10000), (10000, 1)])
def test_tiny_and_extremely_thin_images_are_captioned(client, size) -> None:
    assert_captioned(caption(client, encoded(marked(*size))))


def _in_mode(mode: str) -> bytes:
    base = photo_like(48, 32, seed=3)
    if mode == "CMYK":
        return encoded(base.convert("CMYK"), "JPEG")
    if mode == "P+transparency":
        return encoded(base.convert("P"), "PNG", transparency=0)
    if mode == "I;16":
        return encoded(base.convert("I").point(lambda v: v * 256).convert("I;16"), "PNG")
    if mode == "GIF, 10 frames":
        frames = [photo_like(48, 32, seed=i).convert("P") for i in range(10)]
        return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    return encoded(base.convert(mode), "PNG")


@pytest.mark.parametrize(
    "mode", ["CMYK", "P+transparency", "LA", "RGBA", "I;16", "1", "GIF, 10 frames"]
)
def test_every_image_mode_is_captioned(client, mode: str) -> None:
    data = _in_mode(mode)
    if mode == "GIF, 10 frames":
        assert Image.open(io.BytesIO(data)).n_frames == 10
    else:
        assert Image.open(io.BytesIO(data)).mode == mode.split("+")[0]
    assert_captioned(caption(client, data))


def _red_corner(image: Image.Image) -> str:
    rgb = image.convert("RGB")
    width, height = rgb.size
    corners = {"top-left": (0, 0), "top-right": (width - 1, 0)}
    corners |= {"bottom-left": (0, height - 1), "bottom-right": (width - 1, height - 1)}
    (found,) = [name for name, xy in corners.items() if rgb.getpixel(xy)[0] > 200]
    return found


def _with_orientation(image: Image.Image, orientation: int, fmt: str) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(image, fmt, exif=exif)


# EXIF 6: the camera was turned clockwise, so the stored image is shown turned 90 degrees
# clockwise: (w, h) -> (h, w), and the stored top-left corner ends up top-right. 8: the opposite.
@pytest.mark.parametrize(
    ("orientation", "corner", "rotation"),
    [(6, "top-right", Image.Transpose.ROTATE_270), (8, "bottom-left", Image.Transpose.ROTATE_90)],
)
@pytest.mark.parametrize(
    ("fmt", "size"), [("JPEG", (96, 64)), ("PNG", (96, 64)), ("PNG", (400, 64))]
)
def test_exif_orientation_is_applied(client, orientation, corner, rotation, fmt, size) -> None:
    from models.images import to_rgb

    tagged = _with_orientation(marked(*size), orientation, fmt)
    # in-process, the serving path: safe decoding, then the encoder's RGB conversion
    upright = to_rgb(decode_image(tagged, CAP))
    width, height = size
    kept = min(width, 4 * height)  # the aspect-ratio crop keeps at most 4:1
    assert upright.size == (height, kept)
    assert _red_corner(upright) == corner
    # over HTTP: the tagged file answers exactly as the same pixels stored upright (PNG: lossless)
    if fmt == "PNG":
        pixels = photo_like(*size, seed=orientation)
        tagged_photo = caption(client, _with_orientation(pixels, orientation, "PNG"))
        rotated = caption(client, encoded(pixels.transpose(rotation)))
        unrotated = caption(client, encoded(pixels))
        best = [assert_captioned(r)["alternatives"][0]["log_prob"] for r in (tagged_photo, rotated)]
        assert best[0] == best[1]
        assert assert_captioned(unrotated)["alternatives"][0]["log_prob"] != best[0]
    else:
        assert_captioned(caption(client, tagged))


def test_after_every_hostile_image_the_service_still_answers(client, server) -> None:
    assert client.get("/readyz").status_code == 200
    assert_captioned(caption(client, encoded(photo_like())))
    assert server.process.poll() is None
