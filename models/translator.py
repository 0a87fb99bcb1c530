"""Seq2seq translator: a (bidirectional) recurrent encoder and a recurrent decoder, with or without attention."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from models.decoders import DecoderConfig, DecoderState, Memory, RecurrentDecoder
from models.encoders import TextEncoder, TextEncoderConfig


@dataclass(frozen=True)
class TranslatorConfig:
    """Encoder and decoder shapes; `max_length_ratio`/`_offset` bound output length by source length."""

    encoder: TextEncoderConfig
    decoder: DecoderConfig
    max_length_ratio: float = 2.0
    max_length_offset: int = 10

    @classmethod
    def create(
        cls, encoder: TextEncoderConfig, vocab_size: int, **decoder: object
    ) -> TranslatorConfig:
        """Fill the decoder's memory and context sizes from the encoder's output size."""
        size = encoder.output_size
        return cls(
            encoder, DecoderConfig(vocab_size, memory_size=size, context_size=size, **decoder)
        )


class Translator(nn.Module):
    """Source ids -> target token log-probabilities, one step at a time or teacher-forced."""

    def __init__(self, config: TranslatorConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = TextEncoder(config.encoder)
        self.decoder = RecurrentDecoder(config.decoder)

    def encode(self, source: Tensor, lengths: Tensor) -> Memory:
        """source (B, S), lengths (B,) -> memory."""
        return self.encoder(source, lengths)

    def init_state(self, source: Tensor, lengths: Tensor) -> DecoderState:
        """Decoder state for a batch of padded source sentences."""
        return self.decoder.init_state(self.encode(source, lengths))

    def max_lengths(self, lengths: Tensor) -> Tensor:
        """Output length limit per input (B,), from its source length (B,)."""
        c = self.config
        return (lengths.float() * c.max_length_ratio).long() + c.max_length_offset

    def forward(self, source: Tensor, lengths: Tensor, tokens: Tensor) -> Tensor:
        """Teacher forcing: tokens (B, T) starting with START -> logits (B, T, V)."""
        logits, _, _ = self.decoder(tokens, self.init_state(source, lengths))
        return logits
