"""Token <-> id mapping with fixed special ids, built from text and stored as JSON."""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from models.atomic import DamagedFileError, write_text
from models.tokenizers import SentencePieceTokenizer, Tokenizer, tokenizer_from_dict

PAD, START, END, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


class Vocabulary:
    """Maps tokens to ids; ids 0-3 are always PAD, START, END, UNK."""

    def __init__(self, tokens: Sequence[str], tokenizer: Tokenizer) -> None:
        if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("vocabulary tokens must be unique")
        self.tokens = list(tokens)
        self.tokenizer = tokenizer
        self._ids = {token: i for i, token in enumerate(self.tokens)}

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        tokenizer: Tokenizer,
        max_size: int | None = None,
        min_freq: int = 1,
    ) -> Vocabulary:
        """Count tokens over `texts`; keep the most frequent (ties broken alphabetically)."""
        counts = Counter(token for text in texts for token in tokenizer.tokenize(text))
        ranked = sorted(
            (t for t, c in counts.items() if c >= min_freq and t not in SPECIALS),
            key=lambda t: (-counts[t], t),
        )
        if max_size is not None:
            ranked = ranked[: max(0, max_size - len(SPECIALS))]
        return cls([*SPECIALS, *ranked], tokenizer)

    @classmethod
    def from_sentencepiece(cls, tokenizer: SentencePieceTokenizer) -> Vocabulary:
        """Every piece of a SentencePiece model, after our fixed special tokens."""
        pieces = [p for p in tokenizer.pieces() if p not in SPECIALS and p not in ("<unk>",)]
        return cls([*SPECIALS, *dict.fromkeys(pieces)], tokenizer)

    def __len__(self) -> int:
        return len(self.tokens)

    def punctuation_ids(self) -> tuple[int, ...]:
        """Ids of ordinary tokens with no letter or digit in them (".", ",", "!"); found once,
        as every caption request asks (a pass over the vocabulary took 1.5 ms)."""
        return self._punctuation_ids

    @functools.cached_property
    def _punctuation_ids(self) -> tuple[int, ...]:
        return tuple(
            i
            for i, token in enumerate(self.tokens)
            if i >= len(SPECIALS) and not any(c.isalnum() for c in token)
        )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Vocabulary)
            and self.tokens == other.tokens
            and self.tokenizer.to_dict() == other.tokenizer.to_dict()
        )

    def id_of(self, token: str) -> int:
        """The id of `token`, or UNK."""
        return self._ids.get(token, UNK)

    def encode(self, text: str, add_start_end: bool = False) -> list[int]:
        """Tokenize `text` into ids, optionally wrapped in START ... END."""
        ids = [self.id_of(t) for t in self.tokenizer.tokenize(text)]
        return [START, *ids, END] if add_start_end else ids

    def decode_tokens(self, ids: Iterable[int]) -> list[str]:
        """Tokens for `ids`, stopping at END and dropping PAD and START."""
        tokens: list[str] = []
        for i in ids:
            if i == END:
                break
            if i not in (PAD, START):
                tokens.append(self.tokens[i])
        return tokens

    def decode(self, ids: Iterable[int]) -> str:
        """Text for `ids`, stopping at END and dropping PAD and START."""
        return self.tokenizer.detokenize(self.decode_tokens(ids))

    def to_dict(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer.to_dict(), "tokens": self.tokens}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocabulary:
        return cls(data["tokens"], tokenizer_from_dict(data["tokenizer"]))

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as UTF-8 JSON (atomically), with the sha256 of its content."""
        data = self.to_dict()
        text = json.dumps({**data, "sha256": _content_sha256(data)}, ensure_ascii=False)
        write_text(path, text)

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read a vocabulary written by `save`; DamagedFileError, naming the file, when it is
        truncated or altered (files written before the checksum was added are read unchecked)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            recorded = data.pop("sha256", None)
            if recorded is not None and recorded != _content_sha256(data):
                raise ValueError("its content does not match the sha256 recorded in it")
            return cls.from_dict(data)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise DamagedFileError(
                f"{path}: not a whole vocabulary, truncated or altered ({error}); delete it and "
                "build it again: run the training or export that wrote it again"
            ) from None


def _content_sha256(data: dict[str, Any]) -> str:
    """sha256 of a vocabulary's `to_dict()` in one canonical JSON spelling."""
    canonical = json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
