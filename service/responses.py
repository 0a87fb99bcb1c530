"""What the HTTP API answers: the response models of every route (docs.json states them)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.schemas import CaptionLanguage

# Output fields are never Optional or unions: BentoML's published schema keeps only the first
# branch of a union, and its Python client then fails on the other branches (null included).


class TokenScore(BaseModel):
    """One output token and its log-probability."""

    token: str
    log_prob: float


class CaptionToken(TokenScore):
    attention: list[list[float]] = Field(
        default_factory=list,
        description="H x W weights over the image grid, when asked for; empty without attention",
    )


class TranslationToken(TokenScore):
    attention: list[float] = Field(
        default_factory=list,
        description="one weight per source token, when asked for; empty without attention",
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


# -- POST /models (GET /models answers the same) ---------------------------------------------


class ModelInfo(BaseModel):
    """One loaded model. Captioners add image_encoder, uncertainty_fitted and language;
    translators add source_language and target_language when their training named them; an
    ensemble ("a+b") adds `members`, each member's own entry, and its attention or cell is
    "mixed" where its members' differ."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="store name")
    tag: str = Field(description="the store tag loaded: name:version")
    configured: str = Field(description='as the settings name it: "name" (latest) or a tag')
    kind: Literal["captioner", "translator", "char_lm"]
    attention: str = Field(description='"none" for a model without attention')
    cell: str
    vocab_size: dict[str, int]
    precision: Literal["fp32", "bf16-autocast"]
    scores: dict[str, Any] = Field(description="evaluation scores recorded at export")


class ModelsResponse(BaseModel):
    ready: bool
    state: Literal["loading", "ready", "failed"]
    problem: str = Field(description='why loading failed; "" otherwise')
    device: str
    torch_threads: int
    models: list[ModelInfo] = Field(description="loaded so far, in loading order")
    default_translator: str
