"""The service over real HTTP: one `bentoml serve` process (see conftest) with tiny random models."""

from __future__ import annotations

import io
import json
import math
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from tests.helpers import CAPTIONS, CAPTIONS_DE
from tests.serving import start_server

pytestmark = pytest.mark.service
IMAGES = Path(__file__).parent / "fixtures" / "images"
PHOTOS = ["photo_house.jpg", "photo_daisy.webp"]
EMOJI = ["emoji_cat_face.png", "emoji_dog_face.png", "emoji_pizza.png"]


@pytest.fixture(scope="module")
def client(server) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def examples(stored_models) -> list[str]:
    return list(stored_models.sentences)


def encoded(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def caption(
    client: httpx.Client, data: bytes, options: dict | None = None, name: str = "x.png"
) -> httpx.Response:
    form = {"options": json.dumps(options)} if options is not None else {}
    return client.post("/caption", files={"image": (name, data)}, data=form)


def translate(
    client: httpx.Client, sentences: list[str], options: dict | None = None, **extra
) -> httpx.Response:
    return client.post(
        "/translate", json={"sentences": sentences, "options": options or {}, **extra}
    )


def assert_error(
    response: httpx.Response, status: int, code: str, field: str | None = None
) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    if field is not None:
        assert error["field"] == field, error
    assert "Traceback" not in response.text and "/work/" not in response.text
    return error


def best(response: httpx.Response) -> tuple[str, float]:
    body = response.json()
    return body["alternatives"][0]["text"], body["alternatives"][0]["log_prob"]


# -- health and information -------------------------------------------------------------------


def test_health_endpoints_and_model_information(client, stored_models) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    info = client.get("/models").json()
    assert info["ready"] and info["device"] == "cpu"
    tags = {m["name"]: m for m in info["models"]}
    assert tags["captioner"]["tag"] == stored_models.captioner
    assert tags["translator"]["vocab_size"]["source"] > 4
    assert tags["captioner"]["scores"] == {"random_weights": True}
    assert not tags["captioner"]["uncertainty_fitted"]
    assert tags["captioner_de"]["uncertainty_fitted"] and tags["captioner_de"]["language"] == "de"
    assert "bentoml_service_request_total" in client.get("/metrics").text


# -- captions -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PHOTOS + EMOJI)
def test_caption_photos_and_emoji(client, stored_models, name: str) -> None:
    response = caption(client, (IMAGES / name).read_bytes(), name=name)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == stored_models.captioner and body["time_ms"] > 0
    alternative = body["alternatives"][0]
    assert body["caption"] == alternative["text"] and body["truncated"] == alternative["truncated"]
    assert math.isclose(
        sum(t["log_prob"] for t in alternative["tokens"]), alternative["log_prob"], abs_tol=1e-4
    )
    assert (alternative["tokens"][-1]["token"] == "</s>") != alternative["truncated"]


def _noise_png(seed: int) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (224, 224, 3), generator=generator, dtype=torch.uint8)
    return encoded(Image.fromarray(pixels.numpy()))


@pytest.mark.parametrize("language", ["en", "de"])
def test_every_caption_carries_a_confidence_and_a_domain_flag(client, language: str) -> None:
    options = {"decoding": "beam", "beam_size": 3, "n_best": 3}
    response = client.post(
        "/caption",
        files={"image": ("x.png", (IMAGES / "emoji_pizza.png").read_bytes())},
        data={"options": json.dumps(options), "language": language},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["language"] == language and isinstance(body["out_of_domain"], bool)
    confidences = [a["confidence"] for a in body["alternatives"]]
    assert body["confidence"] == confidences[0] and all(0 <= c <= 1 for c in confidences)


def test_out_of_domain_flag_separates_unlike_images(client) -> None:
    """The tiny German captioner's feature distribution was fitted on uniform-noise images."""

    def flagged(data: bytes) -> bool:
        response = client.post(
            "/caption", files={"image": ("x.png", data)}, data={"language": "de"}
        )
        assert response.status_code == 200, response.text
        return response.json()["out_of_domain"]

    assert flagged((IMAGES / "emoji_pizza.png").read_bytes())
    assert sum(flagged(_noise_png(seed)) for seed in range(4)) <= 1  # a 99% quantile threshold
    english = client.post("/caption", files={"image": ("x.png", _noise_png(11))}).json()
    assert english["out_of_domain"] is False  # no fitted distribution: never flagged


def test_german_captions_use_the_german_vocabulary(client) -> None:
    german = {w.lower() for c in CAPTIONS_DE for w in c.split()} | {"<unk>"}
    english = {w for c in CAPTIONS for w in c.split()}
    for name in PHOTOS + EMOJI:
        response = client.post(
            "/caption",
            files={"image": (name, (IMAGES / name).read_bytes())},
            data={"language": "de"},
        )
        words = set(response.json()["caption"].split())
        assert words and words <= german and not words <= english, words


def test_caption_language_must_be_known(client) -> None:
    response = client.post(
        "/caption",
        files={"image": ("x.png", (IMAGES / "emoji_pizza.png").read_bytes())},
        data={"language": "fr"},
    )
    assert_error(response, 400, "invalid_argument", "language")


def test_golden_image_gives_the_golden_caption(client, stored_models) -> None:
    golden = stored_models.golden["captioner"]
    response = caption(client, (IMAGES / "emoji_cat_face.png").read_bytes(), {"max_length": 12})
    assert response.json()["caption"] == golden["output"]


def test_the_declared_content_type_is_ignored(client) -> None:
    data = (IMAGES / "photo_house.jpg").read_bytes()
    plain = caption(client, data)
    lying = client.post("/caption", files={"image": ("x.gif", data, "text/plain")})
    assert best(plain) == best(lying)


@pytest.mark.parametrize(
    ("mode", "fmt", "params"),
    [
        ("CMYK", "JPEG", {}),
        ("P", "PNG", {"transparency": 0}),
        ("LA", "PNG", {}),
        ("RGBA", "PNG", {}),
        ("I;16", "PNG", {}),
        ("1", "PNG", {}),
        ("RGB", "BMP", {}),
        ("P", "GIF", {}),
    ],
)
def test_any_mode_and_allowed_format_is_captioned(
    client, mode: str, fmt: str, params: dict
) -> None:
    image = (
        Image.open(IMAGES / "photo_house.jpg")
        .convert(mode if mode != "I;16" else "I")
        .resize((64, 48))
    )
    if mode == "I;16":
        image = image.convert("I;16")
    assert caption(client, encoded(image, fmt, **params)).status_code == 200


@pytest.mark.parametrize("size", [(1, 1), (1, 10000), (10000, 1)])
def test_tiny_and_extremely_thin_images_are_captioned(client, size: tuple[int, int]) -> None:
    assert caption(client, encoded(Image.new("RGB", size, (200, 30, 30)))).status_code == 200


def test_an_upload_larger_than_the_in_memory_spool_is_captioned(client) -> None:
    noise = encoded(Image.effect_noise((760, 760), 90).convert("RGB"))
    assert 1024 * 1024 < len(noise) < 2 * 1024 * 1024  # spooled to disk, under the test limit
    assert caption(client, noise).status_code == 200


@pytest.mark.parametrize(
    ("orientation", "rotation"), [(6, Image.Transpose.ROTATE_270), (8, Image.Transpose.ROTATE_90)]
)
def test_exif_orientation_is_applied(client, orientation: int, rotation: Image.Transpose) -> None:
    photo = Image.open(IMAGES / "photo_house.jpg").resize((96, 64))
    exif = Image.Exif()
    exif[0x0112] = orientation
    tagged = encoded(photo, "PNG", exif=exif)
    upright = encoded(photo.transpose(rotation))
    assert best(caption(client, tagged)) == best(caption(client, upright))


def test_animated_gif_is_captioned_from_its_first_frame(client) -> None:
    frames = [Image.open(IMAGES / name).convert("RGB") for name in EMOJI]
    animation = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    first = encoded(Image.open(io.BytesIO(animation)).convert("RGB"))
    assert best(caption(client, animation)) == best(caption(client, first))


def test_caption_batch_equals_single_captions_in_order(client) -> None:
    files = [("images", (n, (IMAGES / n).read_bytes())) for n in [*PHOTOS, EMOJI[0]]]
    response = client.post(
        "/caption_batch", files=files, data={"options": json.dumps({"max_length": 8})}
    )
    assert response.status_code == 200, response.text
    texts = [c["caption"] for c in response.json()["captions"]]
    singles = [caption(client, data, {"max_length": 8}).json()["caption"] for _, (_, data) in files]
    assert texts == singles


# -- every decoding option ------------------------------------------------------------------------


def test_beam_returns_n_best_sorted_and_beam_one_equals_greedy(client) -> None:
    data = (IMAGES / "photo_house.jpg").read_bytes()
    beam = caption(
        client, data, {"decoding": "beam", "beam_size": 4, "n_best": 3, "max_length": 10}
    ).json()
    scores = [a["score"] for a in beam["alternatives"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert len({a["text"] for a in beam["alternatives"]}) == 3
    greedy = caption(client, data, {"max_length": 10})
    assert (
        best(caption(client, data, {"decoding": "beam", "beam_size": 1, "max_length": 10}))[0]
        == best(greedy)[0]
    )
    assert beam["alternatives"][0]["score"] >= greedy.json()["alternatives"][0]["score"] - 1e-6


def test_sampling_is_reproducible_with_a_seed_and_top_k_one_is_greedy(client) -> None:
    data = (IMAGES / "emoji_pizza.png").read_bytes()
    options = {"decoding": "sample", "seed": 11, "n_best": 2, "temperature": 1.5, "max_length": 10}
    first, again = caption(client, data, options).json(), caption(client, data, options).json()
    assert first["alternatives"] == again["alternatives"] and len(first["alternatives"]) == 2
    top1 = caption(client, data, {"decoding": "sample", "top_k": 1, "max_length": 10})
    assert best(top1)[0] == best(caption(client, data, {"max_length": 10}))[0]


def test_length_options_and_ngram_block(client) -> None:
    data = (IMAGES / "photo_daisy.webp").read_bytes()
    short = caption(client, data, {"max_length": 3}).json()["alternatives"][0]
    assert len(short["tokens"]) <= 3
    longer = caption(client, data, {"min_length": 5, "max_length": 8}).json()["alternatives"][0]
    assert "</s>" not in [t["token"] for t in longer["tokens"][:5]]
    blocked = caption(client, data, {"no_repeat_ngram_size": 1, "max_length": 10}).json()[
        "alternatives"
    ][0]
    words = [t["token"] for t in blocked["tokens"]]
    assert len(words) == len(set(words))
    penalised = caption(
        client, data, {"decoding": "beam", "length_penalty": 0.0, "max_length": 6}
    ).json()
    assert penalised["alternatives"][0]["score"] == pytest.approx(
        penalised["alternatives"][0]["log_prob"]
    )
    # no rule ties two options: min_length above max_length runs the caption to max_length
    forced = caption(client, data, {"min_length": 9, "max_length": 4}).json()["alternatives"][0]
    assert forced["truncated"] and len(forced["tokens"]) == 4


def test_n_best_is_capped_at_what_the_method_gives(client) -> None:
    data = (IMAGES / "emoji_pizza.png").read_bytes()
    for options, alternatives in (
        ({"n_best": 3}, 1),  # greedy
        ({"decoding": "beam", "beam_size": 2, "n_best": 3}, 2),
        ({"decoding": "sample", "n_best": 3, "seed": 1}, 3),
    ):
        response = caption(client, data, {**options, "max_length": 5})
        assert response.status_code == 200, response.text
        assert len(response.json()["alternatives"]) == alternatives


def test_caption_attention_is_a_7x7_grid_per_word(client) -> None:
    response = caption(
        client,
        (IMAGES / "photo_house.jpg").read_bytes(),
        {"return_attention": True, "max_length": 5},
    )
    for token in response.json()["alternatives"][0]["tokens"]:
        grid = token["attention"]
        assert len(grid) == 7 and all(len(row) == 7 for row in grid)
        assert sum(map(sum, grid)) == pytest.approx(1.0, abs=1e-3)


# -- translation ----------------------------------------------------------------------------------


def test_translate_sentences_in_order_with_attention(client, examples, stored_models) -> None:
    response = translate(client, examples, {"return_attention": True, "max_length": 12})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == stored_models.translator
    assert [t["source"] for t in body["translations"]] == examples
    assert body["translations"][0]["translation"] == stored_models.golden["translator"]["output"]
    for item in body["translations"]:
        for token in item["alternatives"][0]["tokens"]:
            assert len(token["attention"]) == len(item["source_tokens"])
            assert sum(token["attention"]) == pytest.approx(1.0, abs=1e-3)


def test_translate_alone_equals_inside_a_request_and_model_by_name_or_tag(
    client, examples, stored_models
) -> None:
    together = translate(client, examples, {"decoding": "beam", "n_best": 2}).json()["translations"]
    for sentence, expected in zip(examples, together, strict=True):
        alone = translate(
            client, [sentence], {"decoding": "beam", "n_best": 2}, model="translator"
        ).json()
        assert alone["translations"][0]["translation"] == expected["translation"]
    by_tag = translate(client, examples[:1], model=stored_models.translator)
    assert by_tag.json()["model"] == stored_models.translator


def test_bentoml_python_client_works(server, examples) -> None:
    import bentoml

    with bentoml.SyncHTTPClient(server.url) as service:
        result = service.caption(
            image=IMAGES / "photo_house.jpg", options={"decoding": "beam", "n_best": 2}
        )
        assert (
            len(result["alternatives"]) == 2
            and result["alternatives"][0]["tokens"][0]["attention"] == []
        )
        batch = service.caption_batch(images=[IMAGES / EMOJI[0], IMAGES / EMOJI[1]])
        assert len(batch["captions"]) == 2
        assert service.translate(sentences=examples[:2])["translations"][1]["source"] == examples[1]


# -- batching: concurrent answers equal sequential ones ---------------------------------------------


def test_concurrent_requests_are_batched_and_answer_as_if_alone(client, examples) -> None:
    images = [(IMAGES / n).read_bytes() for n in PHOTOS + EMOJI]
    option_sets = [
        {},
        {"decoding": "beam", "beam_size": 3, "n_best": 2},
        {"max_length": 6},
        {"decoding": "sample", "seed": 5, "n_best": 2},
    ]
    jobs = [("caption", images[i % 5], option_sets[i % 4]) for i in range(24)]
    jobs += [("translate", examples[i % 4 :], option_sets[i % 4]) for i in range(12)]

    def run(job):
        kind, payload, options = job
        response = (
            caption(client, payload, options)
            if kind == "caption"
            else translate(client, payload, options)
        )
        assert response.status_code == 200, response.text
        body = response.json()
        items = [body] if kind == "caption" else body["translations"]
        return [
            [(a["text"], round(a["log_prob"], 4)) for a in item["alternatives"]] for item in items
        ]

    before = batch_counts(client)
    with ThreadPoolExecutor(16) as pool:
        concurrent = list(pool.map(run, jobs))
    during = batch_counts(client)
    sequential = [run(job) for job in jobs]
    assert concurrent == sequential
    batches, rows = during[0] - before[0], during[1] - before[1]
    assert rows == 24 and batches < 24, "concurrent captions were never merged into one batch"


def batch_counts(client) -> tuple[float, float]:
    """(batches, images) the captioner ran so far, from the service's Prometheus histogram."""
    text = client.get("/metrics").text
    values = [
        float(
            re.search(
                rf'seqserve_batch_rows_{kind}{{[^}}]*task="caption"[^}}]*}} (\S+)', text
            ).group(1)
        )
        for kind in ("count", "sum")
    ]
    return values[0], values[1]


def test_two_workers_both_answer_the_same(stored_models, examples, tmp_path) -> None:
    """SEQSERVE_WORKERS=2 (the default on a multi-core CPU): each worker loads the models and
    passes its golden check, fresh connections reach both, both answer alike, and with one of
    them killed the other keeps answering while the killed one is restarted."""
    log = tmp_path / "serve.log"
    two = start_server(Path(os.environ["BENTOML_HOME"]), log, {"SEQSERVE_WORKERS": "2"})
    try:
        two.wait_ready()  # /readyz answers 200 and both workers logged "all models ready"
        assert two.log_text().count("all models ready") == 2

        def fresh(_: int) -> str:  # a new connection each time, so either worker may accept it
            response = httpx.post(f"{two.url}/translate", json={"sentences": examples[:1]})
            assert response.status_code == 200, response.text
            return response.json()["translations"][0]["alternatives"][0]["text"]

        with ThreadPoolExecutor(8) as pool:
            answers = set(pool.map(fresh, range(64)))
        served_by = set(
            re.findall(r"\[entry_service:seqserve:(\d+)\][^\n]*path=/translate", log.read_text())
        )
        assert answers == {fresh(0)} and served_by == {"1", "2"}

        two.worker().kill()  # SIGKILL one of the two
        assert [fresh(i) for i in range(20)] == [fresh(0)] * 20  # all 200, from the survivor
        deadline = time.monotonic() + 60
        while two.log_text().count("all models ready") < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert two.log_text().count("all models ready") == 3  # the replacement is back
    finally:
        two.stop()


# -- bad input: one JSON error shape, a 4xx, and the next request still works ------------------------


def test_bad_images_are_refused(client) -> None:
    photo = (IMAGES / "photo_house.jpg").read_bytes()
    tiff = encoded(Image.new("RGB", (8, 8)), "TIFF")
    for data in (b"", b"\x00" * 100, b"just text, named .jpg", photo[: len(photo) // 2], tiff):
        assert_error(caption(client, data, name="photo.jpg"), 400, "invalid_image", "image")
    files = [("images", ("a.jpg", photo)), ("images", ("b.jpg", b"garbage"))]
    assert_error(client.post("/caption_batch", files=files), 400, "invalid_image", "images[1]")


def test_pixel_bomb_is_refused_fast(client, pixel_bomb: bytes) -> None:
    response = caption(client, pixel_bomb)
    assert_error(response, 400, "image_too_large", "image")
    assert response.elapsed.total_seconds() < 1.0


def test_image_given_as_url_is_refused_and_never_fetched(client) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/cat.jpg"
        assert_error(client.post("/caption", data={"image": url}), 415, "unsupported_media_type")
        assert_error(
            client.post("/caption", files={"image": (None, url)}), 400, "invalid_image", "image"
        )
        assert_error(client.post("/caption", json={"image": url}), 415, "unsupported_media_type")
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_pickle_and_unknown_media_types_are_refused(client) -> None:
    import pickle

    body = pickle.dumps({"sentences": ["hi"]})
    for route in ("/translate", "/caption"):
        response = client.post(
            route, content=body, headers={"content-type": "application/vnd.bentoml+pickle"}
        )
        assert_error(response, 415, "unsupported_media_type")
    assert_error(
        client.post("/translate", content=b"hi", headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    )


def test_oversized_bodies_get_413_before_being_read(client, server) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(
            b"POST /caption HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 50000000\r\n\r\n"
        )
        assert raw.recv(4096).split(b"\r\n")[0].endswith(b"413 Request Entity Too Large")

    def chunks():
        for _ in range(40):
            yield b"x" * 65536

    streamed = client.post(
        "/caption", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert_error(streamed, 413, "payload_too_large")
    big = json.dumps({"sentences": ["a " * 400] * 400})
    assert_error(
        client.post("/translate", content=big, headers={"content-type": "application/json"}),
        413,
        "payload_too_large",
    )


@pytest.mark.parametrize(
    ("sentences", "field"),
    [
        ([], "sentences"),
        (["   "], "sentences[0]"),
        (["ok", "\t\n"], "sentences[1]"),
        (["x"] * 33, "sentences"),
        (["a" * 1001], "sentences[0]"),
        (["word " * 150], "sentences[0]"),
        ("not a list", "sentences"),
    ],
)
def test_bad_sentences_name_their_field(client, sentences, field: str) -> None:
    assert_error(translate(client, sentences), 400, "invalid_argument", field)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"decoding": "best"}, "options.decoding"),
        ({"beam_size": 0}, "options.beam_size"),
        ({"beam_size": 11}, "options.beam_size"),
        ({"n_best": 11}, "options.n_best"),
        ({"max_length": 0}, "options.max_length"),
        ({"max_length": 201}, "options.max_length"),
        ({"min_length": -1}, "options.min_length"),
        ({"length_penalty": 2.5}, "options.length_penalty"),
        ({"no_repeat_ngram_size": 11}, "options.no_repeat_ngram_size"),
        ({"temperature": 0}, "options.temperature"),
        ({"top_k": -1}, "options.top_k"),
        ({"seed": -5}, "options.seed"),
        ({"beam_width": 3}, "options.beam_width"),
    ],
)
def test_out_of_range_options_name_field_and_range(client, options: dict, field: str) -> None:
    error = assert_error(translate(client, ["hello"], options), 400, "invalid_argument", field)
    assert field.split(".")[-1] in error["message"]
    data = (IMAGES / "emoji_pizza.png").read_bytes()
    assert_error(caption(client, data, options), 400, "invalid_argument", field)


def test_range_is_stated_in_the_message(client) -> None:
    error = assert_error(translate(client, ["hi"], {"beam_size": 50}), 400, "invalid_argument")
    assert "1 to 10" in error["message"]


def test_unknown_model_and_malformed_requests(client) -> None:
    assert_error(client.get("/caption"), 405, "method_not_allowed")
    error = assert_error(translate(client, ["hi"], model="klingon"), 400, "unknown_model", "model")
    assert "translator" in error["message"]
    bad_json = client.post(
        "/translate", content=b'{"sentences": ["hi"', headers={"content-type": "application/json"}
    )
    assert_error(bad_json, 400, "invalid_argument")
    deep = b'{"sentences": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert_error(
        client.post("/translate", content=deep, headers={"content-type": "application/json"}),
        400,
        "invalid_argument",
    )
    not_utf8 = client.post(
        "/translate",
        content=b'{"sentences": ["\xff\xfe"]}',
        headers={"content-type": "application/json"},
    )
    assert_error(not_utf8, 400, "invalid_argument")
    broken_form = client.post(
        "/caption",
        content=b"--b\r\nnonsense",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert broken_form.status_code == 400 and "error" in broken_form.json()
    assert_error(
        client.post(
            "/caption",
            files={"image": ("a.png", (IMAGES / EMOJI[0]).read_bytes())},
            data={"options": "[" * 100 + "]" * 100},
        ),
        400,
        "invalid_argument",
        "options",
    )
    files = {"image": ("a.png", (IMAGES / EMOJI[0]).read_bytes()), "options": ("o.json", b"{}")}
    assert_error(client.post("/caption", files=files), 400, "invalid_argument", "options")
    # a model without attention (the tiny German captioner) answers empty attention lists
    german = client.post(
        "/caption",
        files={"image": ("a.png", (IMAGES / EMOJI[0]).read_bytes())},
        data={"options": json.dumps({"return_attention": True}), "language": "de"},
    )
    assert german.status_code == 200, german.text
    assert all(not t["attention"] for t in german.json()["alternatives"][0]["tokens"])


def test_unusual_text_is_translated(client) -> None:
    texts = ["\u202eevil\u202c", "e\u0301" * 300, "😀👩‍👩‍👧 ok", "\ue000 私は猫", "tab\tand\x00nul"]
    response = translate(client, texts)
    assert response.status_code == 200, response.text
    assert len(response.json()["translations"]) == len(texts)


def test_the_service_is_still_up_and_answering(client, examples, server) -> None:
    """Runs last in this module: after every bad request above, the service still works."""
    assert client.get("/readyz").status_code == 200
    assert caption(client, (IMAGES / PHOTOS[0]).read_bytes()).status_code == 200
    assert translate(client, examples[:1]).status_code == 200
    assert server.process.poll() is None
    assert "status=500" not in server.log_text()
