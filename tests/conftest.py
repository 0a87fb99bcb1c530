"""Shared fixtures: an isolated BentoML home, tiny random-weight models in it, one served process."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.helpers import CAPTIONS, CAPTIONS_DE, GOLDEN_OPTIONS, SOURCE_TEXT, TARGET_TEXT
from tests.serving import Server, start_server

# Tests run torch on one thread: tiny models are fastest there, and two OpenMP threads spinning
# against other processes made a toy training step 17x slower.
torch.set_num_threads(1)

# BENTOML_HOME is read once, at bentoml's first use: point it at a throw-away store before any
# test module imports bentoml, so no test ever touches the real store.
BENTOML_HOME = Path(tempfile.mkdtemp(prefix="seqserve-test-bentoml-"))
os.environ["BENTOML_HOME"] = str(BENTOML_HOME)
os.environ["BENTOML_DO_NOT_TRACK"] = "true"

ROOT = Path(__file__).resolve().parents[1]
IMAGES = Path(__file__).parent / "fixtures" / "images"
LM_TEXT = 'The cat sat on the mat. (A dog ran) "in the park".\nWhere is the station?\n'


def pytest_sessionfinish(session: pytest.Session) -> None:
    shutil.rmtree(BENTOML_HOME, ignore_errors=True)


@dataclass(frozen=True)
class StoredModels:
    """Tags and golden records of the tiny models written into the test store."""

    captioner: str
    translator: str
    golden: dict[str, dict]
    sentences: tuple[str, ...] = tuple(SOURCE_TEXT)  # in the translator's source vocabulary
    language_model: str = ""  # the tiny char LM's tag, stored as "charlm"
    captioner_de: str = ""  # the tiny German captioner's tag, stored as "captioner_de"


def _peaked(model) -> None:
    """Random weights give near-uniform outputs; scaling the output layer makes decisions clear."""
    with torch.no_grad():
        model.decoder.output.weight.mul_(6.0)


def build_tiny_models(seed: int = 0) -> StoredModels:
    """A small-CNN captioner and a small translator with random weights, saved into the store
    with the golden output they produce themselves (greedy, max_length 12)."""
    import bentoml
    from PIL import Image

    from models.captioner import Captioner, CaptionerConfig
    from models.checkpoint import save_model
    from models.encoders import ImageEncoderConfig, TextEncoderConfig
    from models.inference import caption_images, translate
    from models.search import SearchOptions
    from models.tokenizers import WordTokenizer
    from models.translator import Translator, TranslatorConfig
    from models.vocabulary import Vocabulary

    torch.manual_seed(seed)
    options = SearchOptions(**GOLDEN_OPTIONS)
    words = Vocabulary.build(CAPTIONS, WordTokenizer(lowercase=True))
    captioner = Captioner(
        CaptionerConfig.create(
            ImageEncoderConfig(backbone="small-cnn"),
            len(words),
            embed_size=16,
            hidden_size=32,
            attention="additive",
            attention_size=16,
        )
    ).eval()
    _peaked(captioner)
    golden_png = (IMAGES / "emoji_cat_face.png").read_bytes()
    image = captioner.encoder.preprocess(Image.open(io.BytesIO(golden_png)))
    found = caption_images(captioner, image.unsqueeze(0), options)[0][0]
    caption_golden = {
        "input": "golden.png",
        "options": GOLDEN_OPTIONS,
        "output": words.decode(found.tokens),
    }

    source = Vocabulary.build(SOURCE_TEXT, WordTokenizer())
    target = Vocabulary.build(TARGET_TEXT, WordTokenizer())
    translator = Translator(
        TranslatorConfig.create(
            TextEncoderConfig(len(source), embed_size=16, hidden_size=16),
            len(target),
            embed_size=16,
            hidden_size=32,
            attention="multiplicative",
        )
    ).eval()
    _peaked(translator)
    found = translate(translator, source, [SOURCE_TEXT[0]], options)[0][0]
    translate_golden = {
        "input": SOURCE_TEXT[0],
        "options": GOLDEN_OPTIONS,
        "output": target.decode(found.tokens),
    }

    german, german_words, german_golden = tiny_german_captioner(golden_png)
    language_model, text, lm_golden = tiny_language_model()
    tags = {}
    for name, model, vocabularies, golden, extra in (
        ("captioner", captioner, {"target": words}, caption_golden, {"golden.png": golden_png}),
        (
            "captioner_de",
            german,
            {"caption": german_words},
            german_golden,
            {"golden.png": golden_png},
        ),
        ("translator", translator, {"source": source, "target": target}, translate_golden, {}),
        ("charlm", language_model, {"text": text}, lm_golden, {}),
    ):
        files = {"golden.json": json.dumps(golden).encode(), **extra}
        settings = {"settings": {"language": "de"}} if name == "captioner_de" else {}
        with bentoml.models.create(name, metadata={"scores": {"random_weights": True}}) as stored:
            save_model(stored.path, model, vocabularies, settings, extra_files=files)
        tags[name] = str(stored.tag)
    return StoredModels(
        tags["captioner"],
        tags["translator"],
        {"captioner": caption_golden, "translator": translate_golden, "charlm": lm_golden},
        language_model=tags["charlm"],
        captioner_de=tags["captioner_de"],
    )


def tiny_german_captioner(golden_png: bytes) -> tuple[torch.nn.Module, object, dict]:
    """A random small-CNN captioner over German words, with a fitted Uncertainty (confidence
    calibration and feature distribution), its vocabulary and golden."""
    from PIL import Image

    from models.captioner import Captioner, CaptionerConfig
    from models.encoders import ImageEncoderConfig
    from models.inference import caption_images
    from models.search import SearchOptions
    from models.tokenizers import WordTokenizer
    from models.vocabulary import Vocabulary

    words = Vocabulary.build(CAPTIONS_DE, WordTokenizer(lowercase=True))
    config = CaptionerConfig.create(
        ImageEncoderConfig(backbone="small-cnn"), len(words), embed_size=16, hidden_size=32
    )
    config = dataclasses.replace(config, uncertainty_components=4)
    model = Captioner(config).eval()
    _peaked(model)
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(240, 3, 224, 224, generator=generator) * 2 - 1
    pooled, _ = model.features(images)
    model.uncertainty.fit_domain(pooled[:160], pooled[160:])
    model.uncertainty.fit_confidence(torch.linspace(-3, 0, 20), torch.linspace(0, 1, 20))
    image = model.encoder.preprocess(Image.open(io.BytesIO(golden_png))).unsqueeze(0)
    found = caption_images(model, image, SearchOptions(**GOLDEN_OPTIONS))[0][0]
    golden = {
        "input": "golden.png",
        "options": GOLDEN_OPTIONS,
        "output": words.decode(found.tokens),
    }
    return model, words, golden


def tiny_language_model() -> tuple[torch.nn.Module, object, dict]:
    """A 2-layer LSTM char LM (2 x 16 units) with random weights, its vocabulary and golden."""
    from models.language_model import CharLanguageModel, CharLMConfig, generate
    from models.search import SearchOptions
    from models.tokenizers import CharTokenizer
    from models.vocabulary import Vocabulary

    text = Vocabulary.build([LM_TEXT], CharTokenizer())
    config = CharLMConfig(len(text), embed_size=8, hidden_size=16, num_layers=2, dropout=0.0)
    model = CharLanguageModel(config).eval()
    _peaked(model)
    golden = {"input": "The cat", "options": GOLDEN_OPTIONS}
    golden["output"] = generate(model, text, golden["input"], SearchOptions(**GOLDEN_OPTIONS))
    return model, text, golden


@pytest.fixture(scope="session")
def stored_models() -> StoredModels:
    """The tiny models, built once per session into the temporary store."""
    return build_tiny_models()


@pytest.fixture(scope="session")
def pixel_bomb() -> bytes:
    """A 20000x20000 PNG of a few bytes: a valid header and almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="session")
def server(
    stored_models: StoredModels, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One `bentoml serve` process for the whole session, ready (golden checks passed)."""
    log = tmp_path_factory.mktemp("server") / "serve.log"
    env = {
        "SEQSERVE_CAPTION_BODY_BYTES": str(2 * 1024 * 1024),  # small, so 413 is cheap to test
        "SEQSERVE_TRANSLATE_BODY_BYTES": str(256 * 1024),
    }
    with start_server(BENTOML_HOME, log, env) as process:
        process.wait_ready()
        yield process
