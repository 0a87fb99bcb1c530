"""Checkpoint directories: exact reload, fp16 storage, tamper detection, no pickles."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from models.captioner import Captioner, CaptionerConfig
from models.checkpoint import ChecksumError, load_model, save_model
from models.encoders import ImageEncoderConfig
from models.inference import caption_images, translate
from models.search import SearchOptions
from tests.helpers import random_captioner, random_translator, toy_vocabulary

OPTIONS = [
    SearchOptions("greedy", max_length=8),
    SearchOptions("beam", beam_size=3, n_best=3, max_length=8),
]


def _same(a, b) -> bool:
    return [[(h.tokens, h.log_prob) for h in r] for r in a] == [
        [(h.tokens, h.log_prob) for h in r] for r in b
    ]


@pytest.mark.parametrize("options", OPTIONS)
def test_translator_save_load_decodes_bit_identically(tmp_path, options: SearchOptions) -> None:
    model, vocabulary = random_translator(11, "gru", 2, "multiplicative"), toy_vocabulary()
    save_model(tmp_path, model, {"source": vocabulary, "target": vocabulary}, {"note": "test"})
    loaded = load_model(tmp_path)
    assert loaded.kind == "translator" and loaded.metadata == {"note": "test"}
    assert loaded.vocabularies["source"] == vocabulary
    sentences = ["a b c", "d e f g"]
    assert _same(
        translate(model, vocabulary, sentences, options),
        translate(loaded.model, vocabulary, sentences, options),
    )


@pytest.mark.parametrize("options", OPTIONS)
def test_captioner_save_load_decodes_bit_identically(tmp_path, options: SearchOptions) -> None:
    model = random_captioner(12)
    save_model(tmp_path, model, {"target": toy_vocabulary()})
    loaded = load_model(tmp_path).model
    images = torch.randn(3, 3, 56, 56)
    assert _same(caption_images(model, images, options), caption_images(loaded, images, options))


def test_frozen_pretrained_backbone_is_not_stored(tmp_path) -> None:
    config = CaptionerConfig.create(
        ImageEncoderConfig(), len(toy_vocabulary()), hidden_size=16, embed_size=8
    )
    model = Captioner(config).eval()
    save_model(tmp_path, model, {"target": toy_vocabulary()})
    stored = load_file(str(tmp_path / "model.safetensors"))
    assert not any(name.startswith("encoder.backbone.") for name in stored)
    loaded = load_model(tmp_path).model
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_half_precision_storage_loads_as_float32(tmp_path) -> None:
    model = random_translator(13)
    save_model(tmp_path, model, {"source": toy_vocabulary(), "target": toy_vocabulary()}, half=True)
    assert all(
        t.dtype == torch.float16
        for t in load_file(str(tmp_path / "model.safetensors")).values()
        if t.is_floating_point()
    )
    loaded = load_model(tmp_path).model
    weight = loaded.decoder.output.weight
    assert weight.dtype == torch.float32
    torch.testing.assert_close(weight, model.decoder.output.weight, atol=1e-2, rtol=1e-3)


def test_tampered_or_missing_files_are_refused(tmp_path) -> None:
    save_model(
        tmp_path, random_translator(14), {"source": toy_vocabulary(), "target": toy_vocabulary()}
    )
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="model.safetensors"):
        load_model(tmp_path)
    (tmp_path / "checksums.json").unlink()
    with pytest.raises(ChecksumError, match="missing"):
        load_model(tmp_path)


def test_checkpoint_holds_only_json_and_safetensors(tmp_path) -> None:
    save_model(
        tmp_path,
        random_captioner(15),
        {"target": toy_vocabulary()},
        extra_files={"golden.json": b"{}"},
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "checksums.json",
        "config.json",
        "golden.json",
        "model.safetensors",
        "vocab.target.json",
    ]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["config"]["encoder"]["backbone"] == "small-cnn"
