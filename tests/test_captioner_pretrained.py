"""The shipped captioners: golden output, never an empty caption, and an honest confidence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from models.checkpoint import LoadedModel, load_model
from models.inference import caption_images, opening_with_a_word
from models.search import SearchOptions

PRETRAINED = Path(__file__).resolve().parents[1] / "pretrained"
IMAGES = Path(__file__).parent / "fixtures" / "images"
EMOJI = ["emoji_cat_face.png", "emoji_dog_face.png", "emoji_pizza.png"]


def _shipped(name: str) -> LoadedModel:
    if not (PRETRAINED / name / "config.json").is_file():
        pytest.skip(f"pretrained/{name} is not there")
    return load_model(PRETRAINED / name)  # checksums verified


@pytest.fixture(scope="module", params=["captioner", "captioner_de"])
def shipped(request: pytest.FixtureRequest) -> LoadedModel:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield _shipped(request.param)
    torch.set_num_threads(threads)


def _pixels(model: torch.nn.Module, names: list[str]) -> torch.Tensor:
    tensors = []
    for name in names:
        with Image.open(IMAGES / name) as image:
            tensors.append(model.encoder.preprocess(image))
    return torch.stack(tensors)  # (B, 3, S, S)


def _noise(model: torch.nn.Module, count: int) -> torch.Tensor:
    size = model.config.encoder.image_size
    generator = torch.Generator().manual_seed(0)
    return torch.rand(count, 3, size, size, generator=generator) * 2 - 1


def test_golden_output_is_reproduced(shipped: LoadedModel) -> None:
    directory = PRETRAINED / _name(shipped)
    golden = json.loads((directory / "golden.json").read_text())
    with Image.open(directory / golden["input"]) as image:
        pixels = shipped.model.encoder.preprocess(image).unsqueeze(0)
    best = caption_images(shipped.model, pixels, SearchOptions(**golden["options"]))[0][0]
    assert _vocabulary(shipped).decode(best.tokens) == golden["output"]


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_no_empty_caption_by_default_even_where_end_is_likeliest(
    shipped: LoadedModel, method: str
) -> None:
    """photo_aqua.jpg made the model shipped before issue 12 answer '' with both searches."""
    pixels = torch.cat([_pixels(shipped.model, ["photo_aqua.jpg"]), _noise(shipped.model, 8)])
    for best, *_ in caption_images(shipped.model, pixels, SearchOptions(method, max_length=20)):
        assert best.tokens


def test_confidence_is_higher_on_training_like_images_than_on_noise(shipped: LoadedModel) -> None:
    model = shipped.model
    assert model.uncertainty is not None  # the shipped captioners are calibrated
    confidences, flags = {}, {}
    for kind, pixels in (("emoji", _pixels(model, EMOJI)), ("noise", _noise(model, 8))):
        found = caption_images(model, pixels, SearchOptions("greedy", max_length=20))
        mean_log_probs = torch.tensor([r[0].log_prob / len(r[0].token_log_probs) for r in found])
        confidence, flagged = model.assess(model.features(pixels)[0], mean_log_probs)
        assert ((confidence >= 0) & (confidence <= 1)).all()
        confidences[kind], flags[kind] = confidence.mean().item(), flagged
    assert confidences["emoji"] > confidences["noise"]
    assert flags["noise"].all() and not flags["emoji"].any()


def _name(loaded: LoadedModel) -> str:
    return (
        "captioner_de"
        if loaded.metadata.get("settings", {}).get("language") == "de"
        else "captioner"
    )


def _vocabulary(loaded: LoadedModel):  # type: ignore[no-untyped-def]
    return loaded.vocabularies.get("caption") or loaded.vocabularies["target"]


def test_a_caption_opens_with_a_word_not_punctuation(shipped: LoadedModel) -> None:
    """A photo of a cat made a captioner trained on COCO-shaped shapes answer "."; the shipped
    one is checked on photos and noise: with the defaults, no caption starts with punctuation."""
    vocabulary = _vocabulary(shipped)
    punctuation = set(vocabulary.punctuation_ids())
    assert punctuation and not {vocabulary.encode(w)[0] for w in ("cat", "face")} & punctuation
    pixels = torch.cat([_pixels(shipped.model, ["photo_aqua.jpg"]), _noise(shipped.model, 8)])
    options = opening_with_a_word(SearchOptions("beam", n_best=3, max_length=20), vocabulary)
    for hypotheses in caption_images(shipped.model, pixels, options):
        assert all(h.tokens[0] not in punctuation for h in hypotheses)
