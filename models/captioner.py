"""Image captioner: a CNN encoder and a recurrent decoder (Show and Tell, or Show, Attend and Tell)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.confidence import Uncertainty
from models.decoders import DecoderConfig, DecoderState, Memory, RecurrentDecoder
from models.encoders import ImageEncoder, ImageEncoderConfig


@dataclass(frozen=True)
class CaptionerConfig:
    """A captioner is its image encoder and its decoder; the decoder's sizes follow the encoder.

    `uncertainty_components` > 0 adds the fitted confidence calibration and feature distribution
    (models/confidence.py) to the weights; 0 for models trained before they existed.
    """

    encoder: ImageEncoderConfig
    decoder: DecoderConfig
    uncertainty_components: int = 0

    @classmethod
    def create(
        cls, encoder: ImageEncoderConfig, vocab_size: int, **decoder: object
    ) -> CaptionerConfig:
        """Fill the decoder's memory and context sizes from the encoder's feature size."""
        size = encoder.feature_size
        return cls(
            encoder, DecoderConfig(vocab_size, memory_size=size, context_size=size, **decoder)
        )


class Captioner(nn.Module):
    """Images -> caption token log-probabilities, one step at a time or teacher-forced."""

    def __init__(self, config: CaptionerConfig, pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        self.encoder = ImageEncoder(config.encoder, pretrained=pretrained)
        self.feature_norm = nn.LayerNorm(config.encoder.feature_size)
        self.decoder = RecurrentDecoder(config.decoder)
        self.uncertainty = (
            Uncertainty(config.encoder.feature_size, config.uncertainty_components)
            if config.uncertainty_components
            else None
        )

    def memory_from_features(self, pooled: Tensor, grid: Tensor) -> Memory:
        """Encoder features (B, D), (B, S, D) -> decoder memory (the entry point for cached features)."""
        return Memory(context=self.feature_norm(pooled), grid=self.feature_norm(grid))

    def encode(self, images: Tensor) -> Memory:
        """images (B, 3, S, S) -> memory."""
        return self.memory_from_features(*self.encoder(images))

    def init_state(self, images: Tensor) -> DecoderState:
        """Decoder state for a batch of preprocessed images."""
        return self.decoder.init_state(self.encode(images))

    def forward(self, memory: Memory, tokens: Tensor) -> Tensor:
        """Teacher forcing: tokens (B, T) starting with START -> logits (B, T, V)."""
        logits, _, _ = self.decoder(tokens, self.decoder.init_state(memory))
        return logits

    def assess(self, pooled: Tensor, mean_log_probs: Tensor) -> tuple[Tensor, Tensor | None]:
        """Confidence (B,) and out-of-domain flags (B,) for captions of images with pooled
        features (B, D) and mean token log-probabilities (B,). Without a fitted Uncertainty the
        confidence is the uncalibrated geometric mean token probability and there are no flags."""
        if self.uncertainty is None:
            return mean_log_probs.exp(), None
        return self.uncertainty.confidence(mean_log_probs), self.uncertainty.out_of_domain(pooled)

    @torch.no_grad()
    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Frozen encoder features (B, D), (B, S, D), for caching before training."""
        return self.encoder(images)
