"""Strict bodies over real HTTP (the session's `bentoml serve`): a field the API does not have,
anywhere in a JSON body or a multipart form, is refused with 400 naming it and the allowed ones."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.service
IMAGE = (Path(__file__).parent / "fixtures" / "images" / "emoji_cat_face.png").read_bytes()
OPTIONS = "allowed: decoding, beam_size, n_best, max_length, min_length, length_penalty"


@pytest.fixture(scope="module")
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def refused(response: httpx.Response, field: str, allowed: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_argument", field), error
    assert f"{field}: unknown field ({allowed}" in error["message"], error


@pytest.mark.parametrize(
    ("route", "body", "field", "allowed"),
    [
        (
            "/translate",
            {"sentences": ["hi"], "option": {}},
            "option",
            "allowed: sentences, options, model",
        ),
        (
            "/translate",
            {"sentences": ["hi"], "options": {"decodng": "beam"}},
            "options.decodng",
            OPTIONS,
        ),
        (
            "/translate",
            {"sentences": ["hi"], "model": None, "x": "y" * 10_000},
            "x",
            "allowed: sentences",
        ),
        ("/generate", {"text": "a", "lenght": 5}, "lenght", "allowed: text, length, decoding"),
        ("/generate_stream", {"text": "a", "stream": True}, "stream", "allowed: text, length"),
        (
            "/inspect",
            {"text": "ab", "property": "in_word", "tpo": 3},
            "tpo",
            "allowed: text, units",
        ),
        ("/models", {"verbose": True}, "verbose", "none"),
    ],
)
def test_unknown_json_fields_are_refused(client, route, body, field, allowed) -> None:
    refused(client.post(route, json=body), field, allowed)


@pytest.mark.parametrize(
    ("route", "files", "form", "field", "allowed"),
    [
        (
            "/caption",
            {"image": IMAGE},
            {"langauge": "de"},
            "langauge",
            "allowed: image, options, language",
        ),
        ("/caption", {"image": IMAGE, "picture": IMAGE}, {}, "picture", "allowed: image, options"),
        (
            "/caption",
            {"image": IMAGE},
            {"options": json.dumps({"beam_width": 3})},
            "options.beam_width",
            OPTIONS,
        ),
        ("/caption_batch", {"images": IMAGE}, {"image": "x"}, "image", "allowed: images, options"),
        (
            "/caption_overlay",
            {"image": IMAGE},
            {"colour": "red"},
            "colour",
            "allowed: image, options, token, alternative, size, language",
        ),
        (
            "/caption_overlay",
            {"image": IMAGE},
            {"options": json.dumps({"return_attentoin": True})},
            "options.return_attentoin",
            OPTIONS,
        ),
    ],
)
def test_unknown_form_fields_are_refused(client, route, files, form, field, allowed) -> None:
    parts = {name: (f"{name}.png", data) for name, data in files.items()}
    refused(client.post(route, files=parts, data=form), field, allowed)


def test_a_form_field_given_twice_is_refused(client) -> None:
    files = [("image", ("a.png", IMAGE)), ("image", ("b.png", IMAGE))]
    response = client.post("/caption", files=files)
    assert response.status_code == 400 and response.json()["error"]["field"] == "image"
    options = [("options", (None, "{}")), ("options", (None, '{"n_best": 2}'))]
    response = client.post("/caption", files=[("image", ("a.png", IMAGE)), *options])
    assert response.status_code == 400 and "more than once" in response.json()["error"]["message"]
    repeated = [("images", ("a.png", IMAGE)), ("images", ("b.png", IMAGE))]  # a list: allowed
    assert client.post("/caption_batch", files=repeated).status_code == 200


def test_the_same_requests_without_the_stray_fields_are_answered(client) -> None:
    assert client.post("/translate", json={"sentences": ["hi"], "options": {}}).status_code == 200
    assert client.post("/caption", files={"image": ("a.png", IMAGE)}).status_code == 200
    assert client.post("/models", json={}).status_code == 200
