"""What the HTTP API accepts: decoding options and every input's type and bounds.

The answers' models are in `service.responses`."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

MAX_SENTENCES = 32
MAX_SENTENCE_CHARS = 1000
MAX_BATCH_IMAGES = 8
MAX_MODEL_NAME = 100
MAX_BEAM_SIZE = 10
DEFAULT_BEAM_SIZE = 5


def strict_input(spec: type[BaseModel]) -> type[BaseModel]:
    """An API's input model (BentoML builds it from the method's signature) that refuses
    unknown fields, where BentoML's would ignore them: a misspelt `"option"` is an error, not
    a silent default."""
    config = ConfigDict(**{**spec.model_config, "extra": "forbid"})  # type: ignore[typeddict-item]
    return type(spec.__name__, (spec,), {"model_config": config, "__module__": spec.__module__})


class DecodingOptions(BaseModel):
    """How to decode; fields that the chosen method does not use are ignored. Every field is
    checked on its own: no combination of valid values is refused."""

    # strict: "3" or true for a number, 0 for a boolean are refused, as the published schema says
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, strict=True)

    decoding: Literal["greedy", "beam", "sample"] = "greedy"
    beam_size: int = Field(
        DEFAULT_BEAM_SIZE, ge=1, le=MAX_BEAM_SIZE, description="beam width (beam)"
    )
    n_best: int = Field(
        1,
        ge=1,
        le=MAX_BEAM_SIZE,
        description="alternatives returned: n_best with sample, at most beam_size with beam "
        "(a larger n_best is capped), 1 with greedy",
    )
    max_length: int = Field(50, ge=1, le=200, description="generated tokens, end token included")
    min_length: int = Field(
        1,
        ge=0,
        le=200,
        description="the end token is forbidden before this many tokens: 1 (default) never "
        "answers the empty caption or translation; 0 allows it. Above max_length, every output "
        "runs to max_length and is truncated",
    )
    length_penalty: float = Field(1.0, ge=0.0, le=2.0, description="GNMT alpha of the score")
    no_repeat_ngram_size: int = Field(0, ge=0, le=10, description="0 disables the block")
    temperature: float = Field(1.0, ge=0.05, le=10.0, description="sample only")
    top_k: int = Field(0, ge=0, le=1000, description="sample only; 0 samples the whole vocabulary")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="sample only; reproducible")
    return_attention: bool = Field(
        False,
        description="attention weights for every output token; empty lists from a model "
        "without attention (GET /models: attention 'none')",
    )


# A sentence needs a character that is neither a control character nor a space by any
# definition (Python's str.isspace, ECMAScript's \s, Unicode's): one explicit character class,
# so the published pattern and the check below agree whatever the regex engine
NOT_BLANK = (
    "[^\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff]"
)
_NOT_BLANK = re.compile(NOT_BLANK)


def _not_blank(text: str) -> str:
    if not _NOT_BLANK.search(text):
        raise ValueError("a sentence must contain a character other than spaces and controls")
    return text


Sentence = Annotated[
    str,
    Field(min_length=1, max_length=MAX_SENTENCE_CHARS, json_schema_extra={"pattern": NOT_BLANK}),
    AfterValidator(_not_blank),
]
Sentences = Annotated[
    list[Sentence],
    Field(
        min_length=1,
        max_length=MAX_SENTENCES,
        description="each with a non-space character and at most MAX_SOURCE_TOKENS (100) tokens "
        "after the translator's tokenisation; translated in order",
    ),
]
ModelName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_MODEL_NAME,
        description="a translator as configured (SEQSERVE_TRANSLATORS) or its full store tag, "
        "as GET /models lists them; none: the default translator",
    ),
]


CaptionLanguage = Literal["en", "de"]


# -- the character language model (POST /generate, POST /inspect) ---------------------------
# The same numbers as models.language_model / models.units (importing those would load torch in
# BentoML's parent process); tests/test_service_lm.py checks that they agree.
MAX_SEED_CHARS = 2000
MAX_GENERATE_CHARS = 2000
MAX_LM_BEAM_SIZE = 8
MAX_INSPECT_CHARS = 4000
MAX_UNITS = 32
UNIT_PROPERTIES = ("in_quotes", "line_position", "bracket_depth", "in_word")

SeedText = Annotated[
    str,
    Field(
        max_length=MAX_SEED_CHARS,
        strict=True,
        description="the text to continue; empty: the start of a text. Characters the model "
        "never saw read as <unk>",
    ),
]
GenerateLength = Annotated[
    int,
    Field(ge=1, le=MAX_GENERATE_CHARS, strict=True, description="characters to generate"),
]
LMDecoding = Literal["greedy", "sample", "beam"]
Temperature = Annotated[
    float,
    Field(ge=0.05, le=10.0, allow_inf_nan=False, strict=True, description="sample only"),
]
TopK = Annotated[
    int,
    Field(ge=0, le=1000, strict=True, description="sample only; 0 samples the whole vocabulary"),
]
SamplingSeed = Annotated[
    int,
    Field(ge=0, le=2**31 - 1, strict=True, description="sample only; the same seed, the same text"),
]
LMBeamSize = Annotated[
    int, Field(ge=1, le=MAX_LM_BEAM_SIZE, strict=True, description="beam width (beam)")
]
InspectText = Annotated[str, Field(min_length=1, max_length=MAX_INSPECT_CHARS, strict=True)]
UnitName = Annotated[str, Field(min_length=1, max_length=32, strict=True)]
UnitNames = Annotated[
    list[UnitName],
    Field(
        min_length=1,
        max_length=MAX_UNITS,
        description='units to trace, "<h|c><layer>.<index>" of the loaded model (the document '
        "lists them once it is loaded); give units or property, not both",
    ),
]
UnitProperty = Annotated[
    Literal["in_quotes", "line_position", "bracket_depth", "in_word"],
    Field(description="rank the units by how well they track it; give units or property"),
]


def _not_null(value: Any) -> Any:
    if value is None:
        raise ValueError("leave the field out rather than send null")
    return value


# /inspect's either-or fields: absent or a value, never null (the document says the same)
InspectUnits = Annotated[UnitNames | None, BeforeValidator(_not_null)]
InspectProperty = Annotated[UnitProperty | None, BeforeValidator(_not_null)]
TopUnits = Annotated[
    int, Field(ge=1, le=MAX_UNITS, strict=True, description="with property: units returned")
]
# POST /caption_overlay's own fields
OverlayToken = Annotated[
    int,
    Field(
        ge=0,
        le=199,
        strict=True,
        description="index of the word in the chosen alternative, end token included; past "
        "the caption's last token: 400",
    ),
]
OverlayAlternative = Annotated[
    int,
    Field(
        ge=0,
        le=9,
        strict=True,
        description="index of the alternative, best first; at most n_best - 1 (else 400)",
    ),
]
OverlaySize = Annotated[
    int, Field(ge=32, le=1024, strict=True, description="side of the square PNG, pixels")
]
