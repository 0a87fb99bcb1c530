"""The same request gives the same answer: greedy and beam always, sampling with a seed."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.reliability.media import encoded, photo_like

pytestmark = [pytest.mark.reliability, pytest.mark.service]
SENTENCES = ["the cat sits on the mat .", "where is the station ?"]
OPTIONS = {
    "greedy": {"max_length": 12},
    "beam": {"decoding": "beam", "beam_size": 4, "n_best": 3, "max_length": 12},
    "sample with a seed": {
        "decoding": "sample",
        "seed": 1234,
        "n_best": 3,
        "temperature": 1.5,
        "top_k": 5,
        "max_length": 12,
    },
}


def answer(client: httpx.Client, endpoint: str, options: dict) -> list:
    """What a request decoded: texts, tokens and log-probabilities of every alternative."""
    if endpoint == "translate":
        response = client.post("/translate", json={"sentences": SENTENCES, "options": options})
        items = response.json()["translations"]
    else:
        image = encoded(photo_like(seed=7))
        response = client.post(
            "/caption", files={"image": ("a.png", image)}, data={"options": json.dumps(options)}
        )
        items = [response.json()]
    assert response.status_code == 200, response.text
    return [
        [
            (a["text"], a["log_prob"], [t["log_prob"] for t in a["tokens"]])
            for a in item["alternatives"]
        ]
        for item in items
    ]


@pytest.mark.parametrize("endpoint", ["translate", "caption"])
@pytest.mark.parametrize("method", list(OPTIONS))
def test_the_same_request_gives_the_same_answer(client, endpoint: str, method: str) -> None:
    options = OPTIONS[method]
    first = answer(client, endpoint, options)
    assert answer(client, endpoint, options) == first  # bit for bit
    with ThreadPoolExecutor(6) as pool:  # batched with copies of itself
        batched = list(pool.map(lambda _: answer(client, endpoint, options), range(6)))
    # the same texts; log-probabilities within float32 rounding (a bigger batch takes other
    # matrix kernels, measured: 2.4e-7 apart)
    for other in batched:
        assert texts(other) == texts(first)
        assert log_probs(other) == pytest.approx(log_probs(first), abs=1e-5)


def texts(found: list) -> list:
    return [[text for text, _, _ in item] for item in found]


def log_probs(found: list) -> list[float]:
    return [p for item in found for _, total, steps in item for p in (total, *steps)]


def test_a_different_seed_samples_differently(client) -> None:
    options = dict(OPTIONS["sample with a seed"], top_k=0, temperature=3.0)
    seeds = {seed: answer(client, "translate", dict(options, seed=seed)) for seed in (1, 2, 3)}
    assert len({json.dumps(a) for a in seeds.values()}) > 1
