"""Hostile text and JSON against the real server: 200 with valid UTF-8 and in-vocabulary tokens,
or a 4xx in the one error shape; never a 5xx."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.inference import source_ids
from models.vocabulary import Vocabulary
from service.schemas import NOT_BLANK
from tests.reliability.checks import assert_error, assert_ok_or_refused
from tests.reliability.media import encoded, photo_like

pytestmark = [pytest.mark.reliability, pytest.mark.service]
JSON = {"content-type": "application/json"}
FEW = {"max_length": 3}
# bounded and reproducible: the same examples on every run
PROPERTY = settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def stored_vocabulary(tag: str, role: str) -> Vocabulary:
    name, version = tag.split(":")
    home = Path(os.environ["BENTOML_HOME"])
    return Vocabulary.load(home / "models" / name / version / f"vocab.{role}.json")


@pytest.fixture(scope="module")
def vocabularies(stored_models) -> dict[str, Vocabulary]:
    return {
        "source": stored_vocabulary(stored_models.translator, "source"),
        "target": stored_vocabulary(stored_models.translator, "target"),
        "caption": stored_vocabulary(stored_models.captioner, "target"),
    }


def post_json(client: httpx.Client, body: bytes, path: str = "/translate") -> httpx.Response:
    return client.post(path, content=body, headers=JSON)


def assert_translated(response: httpx.Response, sentences: list[str], target: Vocabulary) -> None:
    """200, strict UTF-8 JSON, sources echoed in order, every output token in the vocabulary."""
    assert response.status_code == 200, response.text[:500]
    body = json.loads(response.content.decode("utf-8"))
    assert [t["source"] for t in body["translations"]] == sentences
    known = set(target.tokens)
    for translation in body["translations"]:
        for alternative in translation["alternatives"]:
            assert {t["token"] for t in alternative["tokens"]} <= known


UNUSUAL = {
    "control characters": "a\x01b\x02c\x1b[31mred\x7f",
    "NUL": "the cat\x00 sits",
    "right-to-left override": "\u202eteg ot erehw\u202c the cat",
    "zero-width and BOM": "the\u200bcat\u200d\ufeffsits",
    "50 combining marks": "the cat" + "\u0301" * 50,  # one token each, under the limit
    "emoji sequences": "👩‍👩‍👧‍👦 🏳️‍🌈 👍🏽 🇩🇪 ❤️‍🔥",
    "private use": "\ue000\uf8ff \U000f0000 the cat",
    "CJK": "猫がマットの上に座っている。我喜欢绿茶。고양이",
    "astral plane": "𝔱𝔥𝔢 𝔠𝔞𝔱 \U0001d54f",
    "only punctuation": "?!.,;:",
    "one long word": "x" * 1000,
    "100 tokens": " ".join(["the"] * 100),
    "newlines and tabs": "the\ncat\r\nsits\ton\vthe\fmat",
    "surrogate pair escape": "\U0001f600 ok",
}


@pytest.mark.parametrize("name", list(UNUSUAL))
def test_unusual_text_is_translated_into_valid_utf8(client, vocabularies, name: str) -> None:
    sentence = UNUSUAL[name]
    response = post_json(client, json.dumps({"sentences": [sentence], "options": FEW}).encode())
    assert_translated(response, [sentence], vocabularies["target"])


def test_32_sentences_of_1000_characters_are_translated(client, vocabularies) -> None:
    sentences = [f"{i} " + "ab " * 332 for i in range(32)]
    response = post_json(client, json.dumps({"sentences": sentences, "options": FEW}).encode())
    # 333 tokens each: over the 100-token limit, refused by index before any model work
    assert assert_error(response, 400, "invalid_argument")["field"] == "sentences[0]"
    hundred_tokens = " ".join(["cat"] * 100)
    sentences = [hundred_tokens + "x" * (1000 - len(hundred_tokens)) for _ in range(32)]
    assert all(len(s) == 1000 for s in sentences)
    response = post_json(client, json.dumps({"sentences": sentences, "options": FEW}).encode())
    assert_translated(response, sentences, vocabularies["target"])


@pytest.mark.parametrize(
    ("name", "body", "field"),
    [
        ("empty list", {"sentences": []}, "sentences"),
        ("empty sentence", {"sentences": [""]}, "sentences[0]"),
        ("whitespace only", {"sentences": [" \t\n\u3000\u00a0"]}, "sentences[0]"),
        ("1001 characters", {"sentences": ["a" * 1001]}, "sentences[0]"),
        ("10,000 combining marks", {"sentences": ["e" + "\u0301" * 10_000]}, "sentences[0]"),
        ("999 combining marks: 999 tokens", {"sentences": ["e" + "\u0301" * 999]}, "sentences[0]"),
        ("101 tokens", {"sentences": [" ".join(["the"] * 101)]}, "sentences[0]"),
        ("33 sentences", {"sentences": ["the cat"] * 33}, "sentences"),
        ("a string, not a list", {"sentences": "the cat"}, "sentences"),
        ("a number in the list", {"sentences": ["ok", 5]}, "sentences[1]"),
        ("null sentence", {"sentences": [None]}, "sentences[0]"),
        ("nested list", {"sentences": [["the cat"]]}, "sentences[0]"),
        ("no sentences", {"options": {}}, "sentences"),
    ],
)
def test_bad_sentences_are_refused_with_their_field(client, name, body, field) -> None:
    error = assert_error(post_json(client, json.dumps(body).encode()), 400, "invalid_argument")
    assert error["field"] == field, (name, error)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"beam_size": "3"}, "options.beam_size"),
        ({"beam_size": True}, "options.beam_size"),
        ({"beam_size": 3.5}, "options.beam_size"),
        ({"max_length": "1e3"}, "options.max_length"),
        ({"temperature": "hot"}, "options.temperature"),
        ({"length_penalty": False}, "options.length_penalty"),
        ({"return_attention": 0}, "options.return_attention"),
        ({"return_attention": "true"}, "options.return_attention"),
        ({"seed": "7"}, "options.seed"),
        ({"decoding": ["beam"]}, "options.decoding"),
        ({"decoding": "GREEDY"}, "options.decoding"),
    ],
)
def test_options_of_the_wrong_type_are_refused_not_coerced(client, options, field) -> None:
    """The published schema says integer, number, boolean: "3", true or 0 are not those."""
    body = json.dumps({"sentences": ["the cat"], "options": options}).encode()
    assert assert_error(post_json(client, body), 400, "invalid_argument")["field"] == field


RAW_BODIES = {
    "lone high surrogate escape": b'{"sentences": ["\\ud800 the cat"]}',
    "lone low surrogate escape": b'{"sentences": ["\\udc00"]}',
    "surrogate as UTF-8 bytes (CESU)": b'{"sentences": ["\xed\xa0\x80"]}',
    "overlong UTF-8 slash": b'{"sentences": ["\xc0\xaf"]}',
    "Latin-1 body": '{"sentences": ["Käse"]}'.encode("latin-1"),
    "UTF-16 body with BOM": '{"sentences": ["the cat"]}'.encode("utf-16"),
    "invalid continuation byte": b'{"sentences": ["a\x80b"]}',
    "raw control character in a string": b'{"sentences": ["a\x01b"]}',
    "empty body": b"",
    "only whitespace": b" \n\t ",
    "null": b"null",
    "a list": b'[{"sentences": ["the cat"]}]',
    "a string": b'"the cat"',
    "NaN option": b'{"sentences": ["a"], "options": {"length_penalty": NaN}}',
    "Infinity option": b'{"sentences": ["a"], "options": {"temperature": Infinity}}',
    "huge integer": b'{"sentences": ["a"], "options": {"seed": ' + b"9" * 5000 + b"}}",
    "huge exponent": b'{"sentences": ["a"], "options": {"max_length": 1e999}}',
    "trailing garbage": b'{"sentences": ["a"]} {"sentences": ["b"]}',
    "single quotes": b"{'sentences': ['a']}",
    "comment": b'{"sentences": ["a"] /* hi */}',
    "deeply nested sentences": b'{"sentences": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "deeply nested options": b'{"sentences": ["a"], "options": '
    + b'{"a": ' * 20_000
    + b"1"
    + b"}" * 20_000
    + b"}",
    "deeply nested unclosed": b"[" * 200_000,
}


@pytest.mark.parametrize("name", list(RAW_BODIES))
def test_malformed_json_and_encodings_are_refused(client, name: str) -> None:
    assert_error(post_json(client, RAW_BODIES[name]), 400, "invalid_argument")


def test_every_truncation_of_a_valid_body_is_refused(client) -> None:
    body = json.dumps(
        {"sentences": ["the cat sits", "ein Hund"], "options": {"decoding": "beam", **FEW}}
    ).encode()
    for end in range(0, len(body) - 1, 3):
        assert_error(post_json(client, body[:end]), 400, "invalid_argument")
    assert post_json(client, body).status_code == 200


@pytest.mark.parametrize(
    ("path", "content_type", "body"),
    [
        ("/translate", "text/plain", b'{"sentences": ["a"]}'),
        ("/translate", "application/x-www-form-urlencoded", b"sentences=a"),
        ("/translate", "multipart/form-data; boundary=b", b'--b\r\n\r\n{"sentences": ["a"]}'),
        ("/translate", "application/octet-stream", b'{"sentences": ["a"]}'),
        ("/translate", "application/x-ndjson", b'{"sentences": ["a"]}\n'),
        ("/translate", "application/msgpack", b"\x81\xa9sentences\x91\xa1a"),
        ("/translate", "application/jsonx", b'{"sentences": ["a"]}'),
        ("/translate", "", b'{"sentences": ["a"]}'),
        ("/caption", "application/json", b'{"image": "aGVsbG8="}'),
        ("/caption", "image/png", encoded(photo_like())),
        ("/caption", "application/x-www-form-urlencoded", b"image=http%3A%2F%2F127.0.0.1%2F"),
        ("/caption_batch", "text/plain", b"images"),
    ],
)
def test_wrong_content_types_are_refused(client, path, content_type, body) -> None:
    response = client.post(path, content=body, headers={"content-type": content_type})
    assert_error(response, 415, "unsupported_media_type")


# -- property-based: arbitrary text and options, only 200 or a 4xx in the error shape ----------

OPTION_NAMES = [
    "decoding",
    "beam_size",
    "n_best",
    "max_length",
    "min_length",
    "length_penalty",
    "no_repeat_ngram_size",
    "temperature",
    "top_k",
    "seed",
    "return_attention",
    "beam_width",
]
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["greedy", "beam", "sample", "", "3", "1e3", "true"])
)
plausible = {
    "decoding": st.sampled_from(["greedy", "beam", "sample"]),
    "beam_size": st.integers(0, 12),
    "n_best": st.integers(0, 12),
    "max_length": st.integers(0, 8),  # kept short: every example runs the model
    "min_length": st.integers(0, 8),
    "length_penalty": st.floats(-0.5, 2.5),
    "no_repeat_ngram_size": st.integers(0, 11),
    "temperature": st.floats(0.0, 11.0),
    "top_k": st.integers(-1, 1001),
    "seed": st.none() | st.integers(-1, 2**31),
    "return_attention": st.booleans(),
}
options_strategy = st.dictionaries(
    st.sampled_from(OPTION_NAMES),
    json_scalars | st.sampled_from(list(plausible.values())).flatmap(lambda s: s),
    max_size=6,
)


@PROPERTY
@given(sentences=st.lists(st.text(max_size=60), min_size=1, max_size=3))
def test_any_text_translates_or_is_refused(client, vocabularies, sentences: list[str]) -> None:
    source = vocabularies["source"]
    for sentence in sentences:  # in-process: every id the text maps to is in the vocabulary
        assert all(0 <= i < len(source) for i in source_ids(source, sentence))
    body = json.dumps({"sentences": sentences, "options": FEW}).encode()
    response = post_json(client, body)
    assert_ok_or_refused(response)
    if response.status_code == 200:
        assert_translated(response, sentences, vocabularies["target"])
    elif all(
        re.search(NOT_BLANK, s) and not any(0xD800 <= ord(c) <= 0xDFFF for c in s)
        for s in sentences
    ):
        pytest.fail(f"refused a valid request: {response.text}")


@PROPERTY
@given(options=options_strategy)
def test_any_options_translate_or_are_refused(client, options: dict) -> None:
    options.setdefault("max_length", 3)
    response = post_json(
        client, json.dumps({"sentences": ["the cat"], "options": options}).encode()
    )
    assert_ok_or_refused(response)


@PROPERTY
@given(options=options_strategy, as_text=st.booleans())
def test_any_caption_options_caption_or_are_refused(client, options: dict, as_text) -> None:
    options.setdefault("max_length", 3)
    text = json.dumps(options) if as_text else json.dumps(options)[:-1]  # also truncated JSON
    response = client.post(
        "/caption", files={"image": ("a.png", encoded(photo_like(32, 24)))}, data={"options": text}
    )
    assert_ok_or_refused(response)
    if not as_text:
        assert response.status_code == 400


@PROPERTY
@given(body=st.binary(max_size=300))
def test_any_bytes_as_json_are_refused_or_answered(client, body: bytes) -> None:
    assert_ok_or_refused(post_json(client, body))


@PROPERTY
@given(data=st.binary(max_size=300))
def test_any_bytes_as_an_image_are_refused(client, data: bytes) -> None:
    assert_error(client.post("/caption", files={"image": ("x.jpg", data)}), 400, "invalid_image")
