"""The published OpenAPI document (/docs.json) states the service's rules and every route, and
BentoML's typed client reaches every route (the schemathesis run is in tests/reliability)."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from PIL import Image

pytestmark = pytest.mark.service
IMAGE = Path(__file__).parent / "fixtures" / "images" / "emoji_cat_face.png"


@pytest.fixture(scope="module")
def document(server) -> dict:
    return httpx.get(f"{server.url}/docs.json").json()


def body_schema(document: dict, path: str, media: str = "application/json") -> dict:
    return document["paths"][path]["post"]["requestBody"]["content"][media]["schema"]


def test_every_route_is_documented(document) -> None:
    paths = document["paths"]
    for path in ("/caption", "/caption_batch", "/caption_overlay", "/translate", "/inspect"):
        assert "post" in paths[path], path
    for path in ("/generate", "/generate_stream"):
        assert "post" in paths[path], path
    assert {"get", "post"} <= set(paths["/models"])
    models = paths["/models"]["get"]["responses"]["200"]["content"]["application/json"]
    assert {"ready", "models", "default_translator"} <= set(models["schema"]["properties"])
    assert "image/png" in paths["/caption_overlay"]["post"]["responses"]["200"]["content"]
    stream = paths["/generate_stream"]["post"]["responses"]["200"]["content"]
    assert stream["text/event-stream"]["schema"]["properties"]["event"]["enum"] == [
        "text",
        "done",
        "error",
    ]


def test_bodies_refuse_unknown_fields_and_state_cross_field_rules(document, stored_models) -> None:
    for path in ("/translate", "/generate", "/inspect", "/models"):
        assert body_schema(document, path)["additionalProperties"] is False, path
    caption = body_schema(document, "/caption", "multipart/form-data")
    assert caption["additionalProperties"] is False
    inspect = body_schema(document, "/inspect")
    assert inspect["oneOf"] == [
        {"required": ["units"], "not": {"required": ["property"]}},
        {"required": ["property"], "not": {"required": ["units"]}},
    ]
    units = inspect["properties"]["units"]["items"]["enum"]
    assert {"h0.0", "h1.15", "c0.0", "c1.15"} <= set(units) and len(units) == 64  # 2 x 2 x 16
    model = body_schema(document, "/translate")["properties"]["model"]
    assert set(model["enum"]) == {"translator", stored_models.translator, None}
    sentence = body_schema(document, "/translate")["properties"]["sentences"]["items"]
    assert sentence["pattern"].startswith("[^") and sentence["maxLength"] == 1000


def test_image_parts_state_what_they_must_hold(document) -> None:
    form = document["paths"]["/caption_batch"]["post"]["requestBody"]["content"]
    encoding = form["multipart/form-data"]["encoding"]["images"]
    assert "image/jpeg" in encoding["contentType"] and "filename=" in str(encoding["headers"])
    assert (
        "never fetched"
        in form["multipart/form-data"]["schema"]["properties"]["images"]["description"]
    )


def test_every_operation_takes_a_request_id(document) -> None:
    for path in ("/caption", "/translate", "/generate_stream", "/models"):
        parameters = document["paths"][path]["post"]["parameters"]
        assert any(p["name"] == "X-Request-ID" and p["in"] == "header" for p in parameters)


def test_the_typed_client_reaches_models_and_the_overlay(server, stored_models) -> None:
    import bentoml

    with bentoml.SyncHTTPClient(server.url) as client:
        info = client.model_info()
        png = client.caption_overlay(image=IMAGE, token=1, size=64)
    assert stored_models.translator in [model["tag"] for model in info["models"]]
    data = png.read_bytes() if isinstance(png, Path) else png
    picture = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    assert picture.format == "PNG" and picture.size == (64, 64)
