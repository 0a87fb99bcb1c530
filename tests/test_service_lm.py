"""POST /generate and POST /inspect over real HTTP, against the tiny char LM of conftest."""

from __future__ import annotations

import httpx
import pytest

from service import schemas

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def client(server) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def language_model(stored_models):
    """The stored tiny char LM, loaded back in-process the way the service loads it."""
    import bentoml
    import torch

    from models.checkpoint import load_model

    loaded = load_model(bentoml.models.get(stored_models.language_model).path, torch.device("cpu"))
    return loaded.model, loaded.vocabularies["text"]


def error_of(response: httpx.Response, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_bounds_agree_with_the_models() -> None:
    from models import language_model, units

    assert schemas.MAX_SEED_CHARS == language_model.MAX_SEED_CHARS
    assert schemas.MAX_GENERATE_CHARS == language_model.MAX_GENERATE_CHARS
    assert schemas.MAX_LM_BEAM_SIZE == language_model.MAX_BEAM_SIZE
    assert schemas.MAX_INSPECT_CHARS == units.MAX_INSPECT_CHARS
    assert schemas.MAX_UNITS == units.MAX_UNITS
    assert tuple(units.PROPERTIES) == schemas.UNIT_PROPERTIES


def test_greedy_generation_equals_the_in_process_model(
    client, stored_models, language_model
) -> None:
    from models.language_model import generate
    from models.search import SearchOptions

    model, vocabulary = language_model
    for seed_text in ["The cat", "", "Where ?"]:
        response = client.post("/generate", json={"text": seed_text, "length": 30})
        assert response.status_code == 200, response.text
        body = response.json()
        expected = generate(model, vocabulary, seed_text, SearchOptions(max_length=30))
        assert body["text"] == expected
        assert body["seed_text"] == seed_text and body["model"] == stored_models.language_model
    beam = {"text": "The", "length": 10, "decoding": "beam", "beam_size": 3}
    expected = generate(model, vocabulary, "The", SearchOptions("beam", beam_size=3, max_length=10))
    assert client.post("/generate", json=beam).json()["text"] == expected


def test_sampling_with_a_seed_is_reproducible(client) -> None:
    request = {"text": "The", "length": 40, "decoding": "sample", "temperature": 1.5, "seed": 7}
    first, second = (client.post("/generate", json=request).json() for _ in range(2))
    assert first["text"] == second["text"] and len(first["text"]) <= 40
    others = {
        client.post("/generate", json={**request, "seed": seed}).json()["text"] for seed in range(4)
    }
    assert len(others) > 1  # the seed matters


@pytest.mark.parametrize(
    ("body", "field", "allowed"),
    [
        ({"text": "x" * 2001}, "text", "2000"),
        ({"length": 2001}, "length", "1 to 2000"),
        ({"length": 0}, "length", "1 to 2000"),
        ({"decoding": "sample", "temperature": 0}, "temperature", "0.05 to 10"),
        ({"decoding": "sample", "temperature": -1.0}, "temperature", "0.05 to 10"),
        ({"decoding": "sample", "top_k": -1}, "top_k", "0 to 1000"),
        ({"decoding": "beam", "beam_size": 9}, "beam_size", "1 to 8"),
        ({"decoding": "nucleus"}, "decoding", "greedy"),
        ({"seed": -1}, "seed", "0 to 2147483647"),
    ],
)
def test_generate_bounds_answer_400_naming_field_and_range(
    client, body: dict, field: str, allowed: str
) -> None:
    error = error_of(client.post("/generate", json=body))
    assert error["code"] == "invalid_argument" and error["field"] == field, error
    assert allowed in error["message"], error


@pytest.mark.parametrize(
    ("body", "field", "allowed"),
    [
        ({"text": "", "property": "in_word"}, "text", "1 to 4000"),
        ({"text": "x" * 4001, "property": "in_word"}, "text", "1 to 4000"),
        ({"text": "ab", "units": ["h9.0"]}, "units[0]", "h0.0 to h0.15"),
        ({"text": "ab", "units": ["h0.0", "c1.16"]}, "units[1]", "c1.0 to c1.15"),
        ({"text": "ab", "units": []}, "units", "1 to 32"),
        ({"text": "ab", "units": ["h0.0"] * 33}, "units", "1 to 32"),
        ({"text": "ab", "property": "vowels"}, "property", "in_word"),
        ({"text": "ab", "property": "in_word", "top": 0}, "top", "1 to 32"),
        ({"text": "ab", "units": ["h0.0"], "property": "in_word"}, "units", "not both"),
        ({"text": "ab"}, "units", "neither"),
        ({"text": "ab", "units": ["h0.0"], "property": None}, "property", "leave the field out"),
    ],
)
def test_inspect_bounds_answer_400_naming_field_and_range(
    client, body: dict, field: str, allowed: str
) -> None:
    error = error_of(client.post("/inspect", json=body))
    assert error["code"] == "invalid_argument" and error["field"] == field, error
    assert allowed in error["message"], error


def test_a_property_that_never_changes_is_tracked_by_no_unit(client) -> None:
    body = client.post("/inspect", json={"text": "abc", "property": "in_word"}).json()
    assert body["characters"] == ["a", "b", "c"] and body["units"] == []


def test_inspect_named_units_give_one_activation_per_character(client, language_model) -> None:
    from models.units import record_units

    text = "The cat (sat).\nA dog"
    body = client.post("/inspect", json={"text": text, "units": ["c1.3", "h0.0"]}).json()
    assert body["characters"] == list(text) and body["property"] == ""
    assert [u["unit"] for u in body["units"]] == ["c1.3", "h0.0"]
    recording = record_units(*language_model, text)
    for unit in body["units"]:
        assert len(unit["activations"]) == len(text) and unit["correlation"] == 0.0
        column = recording.activations[:, recording.names.index(unit["unit"])]
        assert unit["activations"] == pytest.approx(column.tolist(), abs=1e-4)


def test_inspect_by_property_ranks_units_by_absolute_correlation(client) -> None:
    text = "The cat sat on the mat.\nWhere is the dog?\nIn the park (maybe)."
    body = client.post("/inspect", json={"text": text, "property": "in_word", "top": 6}).json()
    assert body["property"] == "in_word" and len(body["units"]) == 6
    strengths = [abs(u["correlation"]) for u in body["units"]]
    assert strengths == sorted(strengths, reverse=True) and strengths[0] > 0
    assert all(len(u["activations"]) == len(text) for u in body["units"])


def test_docs_list_the_lm_routes_and_wrong_methods_answer_405(client) -> None:
    paths = client.get("/docs.json").json()["paths"]
    assert "post" in paths["/generate"] and "post" in paths["/inspect"]
    assert error_of(client.get("/generate"), 405)["code"] == "method_not_allowed"
    assert error_of(client.post("/inspect", content=b"text"), 415)["code"] == (
        "unsupported_media_type"
    )


def test_models_lists_the_language_model(client, stored_models) -> None:
    models = {m["tag"]: m for m in client.get("/models").json()["models"]}
    assert models[stored_models.language_model]["kind"] == "char_lm"


def test_the_service_is_still_up(client, server) -> None:
    """Runs last: after the bad requests above, the service still answers."""
    assert client.get("/readyz").status_code == 200
    assert client.post("/generate", json={"text": "The", "length": 5}).status_code == 200
    assert server.process.poll() is None
    assert "status=500" not in server.log_text()
