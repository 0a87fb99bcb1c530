"""Request and response models of the HTTP API, with the bounds every input is checked against."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from service.errors import RequestError

MAX_SENTENCES = 32
MAX_SENTENCE_CHARS = 1000
MAX_BATCH_IMAGES = 8
MAX_MODEL_NAME = 100


class DecodingOptions(BaseModel):
    """How to decode; fields that the chosen method does not use are ignored."""

    # strict: "3" or true for a number, 0 for a boolean are refused, as the published schema says
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, strict=True)

    decoding: Literal["greedy", "beam", "sample"] = "greedy"
    beam_size: int = Field(5, ge=1, le=10, description="beam width (beam)")
    n_best: int = Field(
        1, ge=1, le=10, description="alternatives returned; <= beam_size (beam), 1 (greedy)"
    )
    max_length: int = Field(50, ge=1, le=200, description="generated tokens, end token included")
    min_length: int = Field(
        1,
        ge=0,
        le=200,
        description="the end token is forbidden before this many tokens: 1 (default) never "
        "answers the empty caption or translation; 0 allows it",
    )
    length_penalty: float = Field(1.0, ge=0.0, le=2.0, description="GNMT alpha of the score")
    no_repeat_ngram_size: int = Field(0, ge=0, le=10, description="0 disables the block")
    temperature: float = Field(1.0, ge=0.05, le=10.0, description="sample only")
    top_k: int = Field(0, ge=0, le=1000, description="sample only; 0 samples the whole vocabulary")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="sample only; reproducible")
    return_attention: bool = Field(False, description="attention weights for every output token")

    def check_consistent(self) -> None:
        """Cross-field rules pydantic bounds cannot express; RequestError names the field."""
        if self.decoding == "greedy" and self.n_best != 1:
            raise RequestError(
                f"n_best must be 1 with greedy decoding (got {self.n_best}); use decoding "
                "'beam' or 'sample' for alternatives",
                "options.n_best",
            )
        if self.decoding == "beam" and self.n_best > self.beam_size:
            raise RequestError(
                f"n_best must be between 1 and beam_size={self.beam_size} (got {self.n_best})",
                "options.n_best",
            )
        if self.min_length > self.max_length:
            raise RequestError(
                f"min_length must be between 0 and max_length={self.max_length} "
                f"(got {self.min_length})",
                "options.min_length",
            )


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("a sentence must contain a non-space character")
    return text


Sentence = Annotated[
    str, Field(min_length=1, max_length=MAX_SENTENCE_CHARS), AfterValidator(_not_blank)
]
Sentences = Annotated[list[Sentence], Field(min_length=1, max_length=MAX_SENTENCES)]
ModelName = Annotated[str, Field(min_length=1, max_length=MAX_MODEL_NAME)]


# Output fields are never Optional or unions: BentoML's published schema keeps only the first
# branch of a union, and its Python client then fails on the other branches (null included).


class TokenScore(BaseModel):
    """One output token and its log-probability."""

    token: str
    log_prob: float


class CaptionToken(TokenScore):
    attention: list[list[float]] = Field(
        default_factory=list, description="H x W weights over the image grid, when asked for"
    )


class TranslationToken(TokenScore):
    attention: list[float] = Field(
        default_factory=list, description="one weight per source token, when asked for"
    )


class Alternative(BaseModel):
    """One hypothesis. `score` is the length-normalised log-probability used to rank them."""

    text: str
    score: float
    log_prob: float
    truncated: bool = Field(description="no end token within max_length")


class CaptionAlternative(Alternative):
    confidence: float = Field(
        description="0 to 1: the model's own estimate of this caption's word-F1 against what a "
        "person would write, calibrated on validation images (docs/service.md)"
    )
    tokens: list[CaptionToken] = Field(description="generated tokens, the end token included")


class TranslationAlternative(Alternative):
    tokens: list[TranslationToken] = Field(description="generated tokens, the end token included")


class Caption(BaseModel):
    caption: str
    truncated: bool
    confidence: float = Field(description="the best alternative's confidence, 0 to 1")
    out_of_domain: bool = Field(
        description="the image's features lie outside what the captioner was trained on: "
        "treat the caption as a guess"
    )
    alternatives: list[CaptionAlternative]


CaptionLanguage = Literal["en", "de"]


class CaptionResponse(Caption):
    language: CaptionLanguage
    model: str = Field(description="store tag of the captioner that answered")
    time_ms: float


class CaptionBatchResponse(BaseModel):
    captions: list[Caption]
    language: CaptionLanguage
    model: str
    time_ms: float


class Translation(BaseModel):
    source: str
    source_tokens: list[str] = Field(description="what the attention weights refer to")
    translation: str
    truncated: bool
    alternatives: list[TranslationAlternative]


class TranslateResponse(BaseModel):
    translations: list[Translation]
    model: str
    time_ms: float


# -- the character language model (POST /generate, POST /inspect) ---------------------------
# The same numbers as models.language_model / models.units (importing those would load torch in
# BentoML's parent process); tests/test_service_lm.py checks that they agree.
MAX_SEED_CHARS = 2000
MAX_GENERATE_CHARS = 2000
MAX_LM_BEAM_SIZE = 8
MAX_INSPECT_CHARS = 4000
MAX_UNITS = 32
UNIT_PROPERTIES = ("in_quotes", "line_position", "bracket_depth", "in_word")

SeedText = Annotated[str, Field(max_length=MAX_SEED_CHARS, strict=True)]
GenerateLength = Annotated[int, Field(ge=1, le=MAX_GENERATE_CHARS, strict=True)]
LMDecoding = Literal["greedy", "sample", "beam"]
Temperature = Annotated[float, Field(ge=0.05, le=10.0, allow_inf_nan=False, strict=True)]
TopK = Annotated[int, Field(ge=0, le=1000, strict=True)]
SamplingSeed = Annotated[int, Field(ge=0, le=2**31 - 1, strict=True)]
LMBeamSize = Annotated[int, Field(ge=1, le=MAX_LM_BEAM_SIZE, strict=True)]
InspectText = Annotated[str, Field(min_length=1, max_length=MAX_INSPECT_CHARS, strict=True)]
UnitName = Annotated[str, Field(min_length=1, max_length=32, strict=True)]
UnitNames = Annotated[list[UnitName], Field(min_length=1, max_length=MAX_UNITS)]
UnitProperty = Literal["in_quotes", "line_position", "bracket_depth", "in_word"]
TopUnits = Annotated[int, Field(ge=1, le=MAX_UNITS, strict=True)]


class GenerateResponse(BaseModel):
    seed_text: str
    text: str = Field(description="the continuation, without the seed")
    log_prob: float = Field(description="log-probability of the continuation")
    model: str
    time_ms: float


class UnitTrace(BaseModel):
    unit: str = Field(description='"<h|c><layer>.<index>", e.g. "c0.376"')
    activations: list[float] = Field(description="one per character, after reading it")
    correlation: float = Field(
        description="Pearson r with `property` over this text; 0.0 for units chosen by name"
    )


class InspectResponse(BaseModel):
    characters: list[str]
    property: str = Field(description='the property asked for; "" when units were named')
    units: list[UnitTrace] = Field(description="in the order asked, or best |r| first")
    model: str
    time_ms: float
