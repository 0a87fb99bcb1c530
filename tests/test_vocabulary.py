"""Vocabulary and tokenizers: fixed special ids, round trips, JSON storage."""

from __future__ import annotations

import io

import pytest
import sentencepiece as spm

from models.tokenizers import CharTokenizer, SentencePieceTokenizer, WordTokenizer
from models.vocabulary import END, PAD, SPECIALS, START, UNK, Vocabulary

SENTENCES = [
    "Hello, world!",
    "Don't panic: it's only a test.",
    "Müller's café serves crème brûlée (and Äpfel) for 3.50 euros.",
    'She said "good morning" and left.',
    "Was kostet das? Ich weiß es nicht; frag Jürgen.",
    "L'été dernier, nous sommes allés à Besançon.",
    "well-known author's 2nd book [revised] — 100% new...",
]


@pytest.mark.parametrize("sentence", SENTENCES)
def test_word_tokenizer_round_trips_ordinary_sentences(sentence: str) -> None:
    tokenizer = WordTokenizer()
    assert tokenizer.detokenize(tokenizer.tokenize(sentence)) == sentence


def test_word_tokenizer_splits_punctuation_and_keeps_apostrophes() -> None:
    assert WordTokenizer().tokenize("Don't stop, Jürgen!") == ["Don't", "stop", ",", "Jürgen", "!"]
    assert WordTokenizer(lowercase=True).tokenize("Grinning FACE") == ["grinning", "face"]


def test_tokenizers_are_deterministic_under_unicode_normalisation() -> None:
    composed, decomposed = "café", "cafe\u0301"
    assert WordTokenizer().tokenize(composed) == WordTokenizer().tokenize(decomposed)
    assert CharTokenizer().tokenize(decomposed) == list("café")


def test_special_ids_are_fixed() -> None:
    vocabulary = Vocabulary.build(SENTENCES, WordTokenizer())
    assert (PAD, START, END, UNK) == (0, 1, 2, 3)
    assert vocabulary.tokens[:4] == list(SPECIALS)


def test_encode_adds_start_end_and_maps_unknown_words() -> None:
    vocabulary = Vocabulary.build(["the cat sat"], WordTokenizer())
    ids = vocabulary.encode("the dog sat", add_start_end=True)
    assert ids[0] == START and ids[-1] == END
    assert ids[2] == UNK
    assert vocabulary.encode("the cat") == ids[1:2] + [vocabulary.id_of("cat")]


def test_decode_stops_at_end_and_drops_pad_and_start() -> None:
    vocabulary = Vocabulary.build(["the cat sat"], WordTokenizer())
    the, cat = vocabulary.id_of("the"), vocabulary.id_of("cat")
    assert vocabulary.decode([START, the, PAD, cat, END, the, the]) == "the cat"


@pytest.mark.parametrize("sentence", SENTENCES)
def test_vocabulary_round_trips_known_sentences(sentence: str) -> None:
    vocabulary = Vocabulary.build(SENTENCES, WordTokenizer())
    assert vocabulary.decode(vocabulary.encode(sentence, add_start_end=True)) == sentence


def test_build_respects_max_size_and_frequency_order() -> None:
    vocabulary = Vocabulary.build(["a a a b b c"], WordTokenizer(), max_size=6)
    assert vocabulary.tokens[4:] == ["a", "b"]


def test_save_load_round_trip(tmp_path) -> None:
    vocabulary = Vocabulary.build(SENTENCES, WordTokenizer(lowercase=True))
    vocabulary.save(tmp_path / "vocab.json")
    assert Vocabulary.load(tmp_path / "vocab.json") == vocabulary


def test_sentencepiece_vocabulary_round_trips_unseen_words(tmp_path) -> None:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 20),
        model_writer=model,
        vocab_size=80,
        character_coverage=1.0,
        bos_id=-1,
        eos_id=-1,
        unk_id=0,
        minloglevel=2,
    )
    vocabulary = Vocabulary.from_sentencepiece(SentencePieceTokenizer(model.getvalue()))
    vocabulary.save(tmp_path / "vocab.json")
    loaded = Vocabulary.load(tmp_path / "vocab.json")
    assert loaded == vocabulary
    sentence = "Müller's brûlée is well-known."  # unseen as a whole, built from known pieces
    ids = loaded.encode(sentence)
    assert UNK not in ids
    assert loaded.decode(ids) == sentence


def test_char_vocabulary_round_trips() -> None:
    text = 'Ein Äpfel-Test: "quotes" (nested [brackets])\n'
    vocabulary = Vocabulary.build([text], CharTokenizer())
    assert vocabulary.decode(vocabulary.encode(text)) == text
