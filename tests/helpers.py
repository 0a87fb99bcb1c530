"""Small random models and vocabularies shared by the core tests."""

from __future__ import annotations

import asyncio

import pytest
import torch

from models.captioner import Captioner, CaptionerConfig
from models.encoders import ImageEncoderConfig, TextEncoderConfig
from models.inference import translate
from models.search import SearchOptions
from models.tokenizers import WordTokenizer
from models.translator import Translator, TranslatorConfig
from models.vocabulary import Vocabulary

WORDS = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"]


# what the tiny test-store captioners (tests/conftest.py) were built on
CAPTIONS = ["cat face", "dog face", "slice of pizza", "a house under the sun", "white daisy"]
CAPTIONS_DE = ["Katzengesicht", "Hundegesicht", "Stück Pizza", "ein Haus unter der Sonne"]


def toy_vocabulary() -> Vocabulary:
    """Specials plus twelve one-letter words."""
    return Vocabulary.build([" ".join(WORDS)], WordTokenizer())


def random_translator(
    seed: int = 0, cell: str = "lstm", layers: int = 1, attention: str = "additive", size: int = 16
) -> Translator:
    """An untrained translator with peaked (low-entropy) output distributions."""
    torch.manual_seed(seed)
    vocab_size = len(toy_vocabulary())
    encoder = TextEncoderConfig(vocab_size, 8, size, cell, layers, 0.0)
    config = TranslatorConfig.create(
        encoder,
        vocab_size,
        embed_size=8,
        hidden_size=size,
        cell=cell,
        num_layers=layers,
        dropout=0.0,
        attention=attention,
    )
    model = Translator(config).eval()
    with torch.no_grad():
        model.decoder.output.weight.mul_(8.0)  # sharper distributions make search choices matter
    return model


def random_captioner(seed: int = 0, attention: str = "additive", image_size: int = 56) -> Captioner:
    """An untrained captioner on the small CNN backbone."""
    torch.manual_seed(seed)
    config = CaptionerConfig.create(
        ImageEncoderConfig(backbone="small-cnn", trainable=True, image_size=image_size),
        len(toy_vocabulary()),
        embed_size=8,
        hidden_size=16,
        dropout=0.0,
        attention=attention,
    )
    return Captioner(config, pretrained=False).eval()


# the tiny models' text and golden options (tests/conftest.py builds the store from them)
GOLDEN_OPTIONS = {"method": "greedy", "max_length": 12}
SOURCE_TEXT = [
    "the cat sits on the mat .",
    "a dog runs in the park .",
    "I like green tea and pizza .",
    "where is the station ?",
]
TARGET_TEXT = [
    "die Katze sitzt auf der Matte .",
    "ein Hund rennt im Park .",
    "ich mag grünen Tee und Pizza .",
    "wo ist der Bahnhof ?",
]


def assert_alone_as_in_a_batch(model, options: SearchOptions, sentences: list[str]) -> None:
    """Each sentence translated alone gets the hypotheses it gets inside the batch of all."""
    batched = translate(model, toy_vocabulary(), sentences, options)
    for sentence, together in zip(sentences, batched, strict=True):
        (alone,) = translate(model, toy_vocabulary(), [sentence], options)
        assert [h.tokens for h in alone] == [h.tokens for h in together]
        for a, b in zip(alone, together, strict=True):
            assert a.score == pytest.approx(b.score, abs=1e-4)


def translators_runtime(names: str):
    """A running Runtime with only the translate task's models loaded, as the service loads them."""
    from service.runtime import Runtime
    from service.settings import Settings
    from service.tasks import load_models
    from service.tasks.translate import TranslateTask

    runtime = Runtime(Settings(torch_threads=1, translators=names, language_model=""))
    task = TranslateTask(runtime)
    runtime.batcher.start()
    load_models(runtime, [task])
    return runtime, task


def translated(task, sentences, options, model):
    """POST /translate's task method (async), called from a test's thread."""
    return asyncio.run(task.translate(sentences, options, model))
