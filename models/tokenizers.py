"""Deterministic, reversible tokenizers: words, characters and SentencePiece subwords."""

from __future__ import annotations

import base64
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Protocol

# A number keeps its separators ("3.50", "10:30"), a word its inner apostrophes and hyphens
# ("don't", "Peter's", "well-known"); every other non-space character stands alone.
# \w covers umlauts and accented letters.
_TOKEN = re.compile(r"\d+(?:[.,:]\d+)+|\w+(?:['’-]\w+)*|[^\w\s]", re.UNICODE)
_NO_SPACE_BEFORE = set(".,!?;:%)]}…”’»")
_NO_SPACE_AFTER = set("([{¿¡“‘«")


class Tokenizer(Protocol):
    """Splits text into string tokens and joins them back."""

    kind: str

    def tokenize(self, text: str) -> list[str]: ...

    def detokenize(self, tokens: list[str]) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


def normalize(text: str) -> str:
    """NFC-normalise and collapse runs of white space, so equal-looking text tokenises equally."""
    return " ".join(unicodedata.normalize("NFC", text).split())


@dataclass(frozen=True)
class WordTokenizer:
    """Words and punctuation; `detokenize(tokenize(s)) == s` for ordinary sentences."""

    lowercase: bool = False
    kind: str = "word"

    def tokenize(self, text: str) -> list[str]:
        """Split normalised text into words and punctuation marks."""
        text = normalize(text)
        return _TOKEN.findall(text.lower() if self.lowercase else text)

    def detokenize(self, tokens: list[str]) -> str:
        """Join tokens with spaces except around punctuation that attaches to a neighbour."""
        out: list[str] = []
        attach_next = True  # the first token never takes a leading space
        quote_open = False
        for token in tokens:
            if token == '"':
                glue = attach_next or quote_open  # a closing quote hugs the word before it
                attach_next = not quote_open  # an opening quote hugs the word after it
                quote_open = not quote_open
            else:
                glue = attach_next or token in _NO_SPACE_BEFORE
                attach_next = token in _NO_SPACE_AFTER
            out.append(token if glue else " " + token)
        return "".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "lowercase": self.lowercase}


@dataclass(frozen=True)
class CharTokenizer:
    """One token per Unicode code point (after NFC normalisation); for character language models."""

    kind: str = "char"

    def tokenize(self, text: str) -> list[str]:
        """Split text into characters; white space is kept as it is."""
        return list(unicodedata.normalize("NFC", text))

    def detokenize(self, tokens: list[str]) -> str:
        """Concatenate the characters."""
        return "".join(tokens)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}


class SentencePieceTokenizer:
    """Subword pieces from a trained SentencePiece model, stored inline as its serialized proto."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes) -> None:
        import sentencepiece as spm  # imported lazily: only subword vocabularies need it

        self.model_proto = model_proto
        self._processor = spm.SentencePieceProcessor(model_proto=model_proto)

    def tokenize(self, text: str) -> list[str]:
        """Split normalised text into subword pieces (word starts are marked with '▁')."""
        return list(self._processor.encode(normalize(text), out_type=str))

    def detokenize(self, tokens: list[str]) -> str:
        """Join pieces back into text."""
        return str(self._processor.decode_pieces(tokens))

    def sample(self, text: str, alpha: float) -> list[str]:
        """One segmentation of normalised `text` drawn from the whole lattice (nbest_size=-1),
        smoothed by `alpha` (subword regularisation, Kudo 2018); `seed_sampling` restarts the draws."""
        return list(
            self._processor.encode(
                normalize(text), out_type=str, enable_sampling=True, alpha=alpha, nbest_size=-1
            )
        )

    def pieces(self) -> list[str]:
        """Every piece of the model, in the model's id order."""
        return [self._processor.id_to_piece(i) for i in range(self._processor.get_piece_size())]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "model_proto": base64.b64encode(self.model_proto).decode()}


@dataclass(frozen=True)
class SampledSentencePiece:
    """A SentencePiece model that draws a new segmentation at every `tokenize`, for training
    only: it saves as the model itself (`to_dict`), so nothing sampled reaches inference."""

    model: SentencePieceTokenizer
    alpha: float
    kind: str = "sentencepiece"

    def tokenize(self, text: str) -> list[str]:
        """A sampled segmentation of `text`."""
        return self.model.sample(text, self.alpha)

    def detokenize(self, tokens: list[str]) -> str:
        return self.model.detokenize(tokens)

    def to_dict(self) -> dict[str, Any]:
        return self.model.to_dict()


def seed_sampling(seed: int) -> None:
    """Restart SentencePiece's sampling at `seed`: the draws that follow (in this thread, one
    sentence after another) are then the same on every run and every process."""
    import sentencepiece as spm

    spm.set_random_generator_seed(seed % 2**32)


def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from `to_dict()` output."""
    kind = data.get("kind")
    if kind == "word":
        return WordTokenizer(lowercase=bool(data.get("lowercase", False)))
    if kind == "char":
        return CharTokenizer()
    if kind == "sentencepiece":
        return SentencePieceTokenizer(base64.b64decode(data["model_proto"]))
    raise ValueError(f"unknown tokenizer kind {kind!r}; expected word, char or sentencepiece")
