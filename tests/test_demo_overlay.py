"""POST /caption_overlay: the rendering in-process, then the route over real HTTP (see conftest)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from urllib.parse import unquote

import httpx
import numpy as np
import pytest
from PIL import Image

from service.overlay import DIM, TINT, TINT_STRENGTH, heat_map, render_overlay

EXAMPLES = Path(__file__).resolve().parents[1] / "service" / "demo" / "examples"


def white(size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.new("RGB", size, (255, 255, 255))


def test_heat_map_is_scaled_to_its_peak_and_upsampled_to_the_size():
    grid = [[0.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.25]]
    heat = heat_map(grid, 90)
    assert heat.shape == (90, 90)
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    peak_row, peak_column = np.unravel_index(heat.argmax(), heat.shape)
    assert 30 <= peak_row < 60 and 30 <= peak_column < 60  # inside the peak cell
    assert heat[45, 45] == pytest.approx(1.0, abs=0.05)  # bilinear: near the cell's centre
    assert heat[75, 75] == pytest.approx(0.5, abs=0.05)  # the quarter cell, relative to the peak
    assert heat[2, 2] == 0.0


def test_a_zero_grid_dims_everything_without_dividing_by_zero():
    picture = np.asarray(render_overlay(white(), [[0.0] * 7] * 7, 32)).astype(float)
    assert picture.shape == (32, 32, 3)
    assert picture == pytest.approx(np.full((32, 32, 3), 255 * (1 - DIM)), abs=1)


def test_the_attended_cells_are_tinted_and_the_rest_dimmed():
    grid = np.zeros((7, 7))
    grid[0:3, 4:7] = 1.0  # the top right block; cell (1, 5) is inside it, (6, 0) far from it
    picture = np.asarray(render_overlay(white(), grid.tolist(), 7 * 20)).astype(float)
    expected = 255 * (1 - TINT_STRENGTH) + TINT * TINT_STRENGTH
    assert picture[1 * 20 + 10, 5 * 20 + 10] == pytest.approx(expected, abs=0.5)
    assert picture[6 * 20 + 10, 10] == pytest.approx([255 * (1 - DIM)] * 3, abs=1)


def test_the_overlay_covers_the_centre_square_the_encoder_sees():
    wide = Image.new("RGB", (300, 100), (0, 0, 255))
    wide.paste((255, 0, 0), (100, 0, 200, 100))  # the centre square is red, the sides blue
    picture = np.asarray(render_overlay(wide, [[1.0]], 50))
    assert picture.shape == (50, 50, 3)
    assert picture[..., 2].max() < 60  # no blue from the sides


# ---------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
def client(server) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def overlay(client: httpx.Client, data: bytes, **fields: object) -> httpx.Response:
    form = {k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in fields.items()}
    return client.post("/caption_overlay", files={"image": ("x.jpg", data)}, data=form)


@pytest.mark.service
def test_the_png_is_the_chosen_words_attention_over_the_image(client):
    data = (EXAMPLES / "photo_pier.jpg").read_bytes()
    options = {"decoding": "beam", "beam_size": 3, "n_best": 2, "max_length": 4}
    response = overlay(client, data, options=options, alternative=1, token=2, size=96)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"

    asked = {**options, "return_attention": True}
    found = client.post(
        "/caption", files={"image": ("x.jpg", data)}, data={"options": json.dumps(asked)}
    ).json()
    alternative = found["alternatives"][1]
    token = alternative["tokens"][2]
    assert unquote(response.headers["x-caption"]) == alternative["text"]
    assert unquote(response.headers["x-token"]) == token["token"]
    assert response.headers["x-model"] == found["model"]
    expected = render_overlay(Image.open(io.BytesIO(data)), token["attention"], 96)
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(response.content))), np.asarray(expected)
    )


@pytest.mark.service
def test_bad_overlay_requests_get_the_one_error_shape(client):
    data = (EXAMPLES / "emoji_cat_face.png").read_bytes()
    for response, status, code, field in (
        (
            overlay(client, data, token=99, options={"max_length": 3}),
            400,
            "invalid_argument",
            "token",
        ),
        (overlay(client, data, alternative=1), 400, "invalid_argument", "alternative"),
        (overlay(client, b"just some text\n"), 400, "invalid_image", "image"),
        (
            overlay(client, data, options={"beam_size": 0}),
            400,
            "invalid_argument",
            "options.beam_size",
        ),
        (
            client.post("/caption_overlay", files={"token": (None, "1")}),
            400,
            "invalid_argument",
            "image",
        ),
        (client.post("/caption_overlay", data={"token": "1"}), 415, "unsupported_media_type", None),
        (client.post("/caption_overlay", json={}), 415, "unsupported_media_type", None),
        (client.get("/caption_overlay"), 405, "method_not_allowed", None),
    ):
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert (error["code"], error["field"]) == (code, field), error
        assert error["message"]
