"""A few hundred optimisation steps on toy tasks drive both models to near-perfect output."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from models.captioner import Captioner, CaptionerConfig
from models.encoders import ImageEncoderConfig, TextEncoderConfig
from models.inference import caption_images, pad_batch, source_ids, translate
from models.search import SearchOptions
from models.translator import Translator, TranslatorConfig
from models.vocabulary import PAD, START
from tests.helpers import WORDS, toy_vocabulary

COLOURS = {"a": (230, 30, 30), "b": (30, 200, 30), "c": (30, 30, 230), "d": (240, 240, 40)}
SEARCHES = [
    SearchOptions("greedy", max_length=10),
    SearchOptions("beam", beam_size=4, max_length=10),
]


def _teacher_forcing_step(
    logits: Tensor, targets: Tensor, optimizer: torch.optim.Optimizer, model: nn.Module
) -> float:
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD)
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item()


def _targets(sentences: list[str]) -> tuple[Tensor, Tensor]:
    """Decoder inputs (START + tokens) and targets (tokens + END), both padded."""
    vocabulary = toy_vocabulary()
    ids = [vocabulary.encode(s, add_start_end=True) for s in sentences]
    padded, _ = pad_batch(ids)
    return padded[:, :-1], padded[:, 1:]


def _reverse_batch(
    generator: torch.Generator, size: int, longest: int = 5
) -> tuple[list[str], list[str]]:
    sources = []
    for _ in range(size):
        length = int(torch.randint(2, longest + 1, (1,), generator=generator))
        sources.append(
            " ".join(
                WORDS[int(i)] for i in torch.randint(0, len(WORDS), (length,), generator=generator)
            )
        )
    return sources, [" ".join(reversed(s.split())) for s in sources]


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["additive", "multiplicative"])
def test_translator_learns_to_reverse(attention: str) -> None:
    """(The attention-free model needs thousands of steps for this; it is trained on real data.)"""
    longest = 5
    torch.manual_seed(0)
    vocabulary, generator = toy_vocabulary(), torch.Generator().manual_seed(0)
    encoder = TextEncoderConfig(len(vocabulary), 32, 64, "lstm", 1, 0.0, bidirectional=True)
    model = Translator(
        TranslatorConfig.create(
            encoder,
            len(vocabulary),
            embed_size=32,
            hidden_size=64,
            dropout=0.0,
            attention=attention,
        )
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(400):
        sources, targets = _reverse_batch(generator, 32, longest)
        ids, lengths = pad_batch([source_ids(vocabulary, s) for s in sources])
        inputs, expected = _targets(targets)
        _teacher_forcing_step(model(ids, lengths, inputs), expected, optimizer, model)
    model.eval()
    sources, targets = _reverse_batch(torch.Generator().manual_seed(99), 100, longest)
    for options in SEARCHES:
        outputs = [r[0] for r in translate(model, vocabulary, sources, options)]
        accuracy = sum(
            vocabulary.decode(h.tokens) == t for h, t in zip(outputs, targets, strict=True)
        ) / len(targets)
        assert accuracy >= 0.95, (options.method, accuracy)
    _assert_beam_never_below_greedy(
        [r[0] for r in translate(model, vocabulary, sources, SEARCHES[0])],
        translate(
            model,
            vocabulary,
            sources,
            SearchOptions("beam", beam_size=4, max_length=10, length_penalty=0),
        ),
    )


def _assert_beam_never_below_greedy(greedy, beam) -> None:
    for g, (b, *_) in zip(greedy, beam, strict=True):
        assert b.log_prob >= g.log_prob - 1e-5


def _stripe_images(
    generator: torch.Generator, size: int, pixels: int = 64
) -> tuple[Tensor, list[str]]:
    """Images of three horizontal colour stripes; the caption names the colours top to bottom."""
    names = list(COLOURS)
    picks = torch.randint(0, len(names), (size, 3), generator=generator)
    images = torch.zeros(size, 3, pixels, pixels)
    for row, pick in enumerate(picks.tolist()):
        for stripe, colour in enumerate(pick):
            band = slice(stripe * pixels // 3, (stripe + 1) * pixels // 3)
            images[row, :, band] = (
                torch.tensor(COLOURS[names[colour]]).view(3, 1, 1) - 127.0
            ) / 128.0
    images += 0.1 * torch.randn(images.shape, generator=generator)
    return images, [" ".join(names[c] for c in pick) for pick in picks.tolist()]


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["additive", "none", "show-attend-tell"])
def test_captioner_learns_to_name_stripes(attention: str) -> None:
    torch.manual_seed(0)
    vocabulary, generator = toy_vocabulary(), torch.Generator().manual_seed(0)
    encoder = ImageEncoderConfig(backbone="small-cnn", trainable=True, image_size=64)
    config = CaptionerConfig.create(
        encoder,
        len(vocabulary),
        embed_size=16,
        hidden_size=64,
        dropout=0.0,
        attention="additive" if attention == "show-attend-tell" else attention,
        attention_input=attention == "show-attend-tell",
        inject_context=attention == "none",
    )
    model = Captioner(config, pretrained=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        images, captions = _stripe_images(generator, 32)
        inputs, expected = _targets(captions)
        _teacher_forcing_step(model(model.encode(images), inputs), expected, optimizer, model)
    model.eval()
    images, captions = _stripe_images(torch.Generator().manual_seed(99), 100)
    for options in SEARCHES:
        outputs = [r[0] for r in caption_images(model, images, options)]
        accuracy = sum(
            vocabulary.decode(h.tokens) == c for h, c in zip(outputs, captions, strict=True)
        ) / len(captions)
        assert accuracy >= 0.95, (options.method, accuracy)
    _assert_beam_never_below_greedy(
        [r[0] for r in caption_images(model, images, SEARCHES[0])],
        caption_images(
            model, images, SearchOptions("beam", beam_size=4, max_length=10, length_penalty=0)
        ),
    )
    assert START not in {t for r in caption_images(model, images, SEARCHES[0]) for t in r[0].tokens}
