"""Fine-tuning the top of a captioner's image encoder on cached activations of its frozen bottom.

`split_encoder` cuts the encoder (models/encoders.py: `ImageEncoder.split`): the feature cache
stores the frozen prefix's activations once, and the last blocks and head (the suffix) train with
the decoder on them, at a lower learning rate.

The training loop gives every parameter the same learning rate. To train the suffix at `scale`
times it, each of its weights w is stored as q = w / scale and used as w = scale * q (a torch
parametrisation). Adam's step in q is about lr whatever the size of q's gradient (scale times
w's), so w moves about scale * lr a step: exactly Adam at rate scale * lr on w, with epsilon
divided by scale (Karras et al. 2018's "equalized learning rate" is the same device). The loop's
schedule, clipping and checkpoints cover these weights unchanged; their gradients count scale
times less towards the clipped global norm. `plain_captioner` turns them back into plain weights
for saving.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils import parametrize

from models.captioner import Captioner
from models.encoders import EncoderSuffix
from training.settings import SettingsError


def split_encoder(
    model: Captioner, tuned_blocks: int, lr_scale: float
) -> tuple[nn.Module, EncoderSuffix | None]:
    """What the feature cache runs (the encoder itself, or the frozen prefix when `tuned_blocks`
    > 0) and the suffix that trains, at `lr_scale` times the learning rate (None when frozen)."""
    if tuned_blocks == 0:
        return model.encoder, None
    if lr_scale <= 0:
        raise SettingsError(f"encoder_lr_scale must be above 0; got {lr_scale}")
    try:
        prefix, suffix = model.encoder.split(tuned_blocks)
    except ValueError as error:
        raise SettingsError(f"fine_tune_blocks: {error}") from None
    if lr_scale != 1.0:
        scale_learning_rate(suffix, lr_scale)
    return prefix, suffix


class _Scaled(nn.Module):
    """w = scale * q for a weight stored as q = w / scale."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, stored: Tensor) -> Tensor:
        return stored * self.scale

    def right_inverse(self, weight: Tensor) -> Tensor:
        return weight / self.scale


def scale_learning_rate(module: nn.Module, scale: float) -> None:
    """Make every trainable parameter of `module` train at `scale` times the optimizer's rate
    (before the optimizer is built: the parameters it will hold are new ones)."""
    for owner in list(module.modules()):
        for name, parameter in list(owner.named_parameters(recurse=False)):
            if parameter.requires_grad:
                parametrize.register_parametrization(owner, name, _Scaled(scale))


def plain_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """`model`'s state dict with each reparametrised weight under its own name and value, as the
    same model without `scale_learning_rate` has it."""
    state = model.state_dict()
    for prefix, owner in model.named_modules():
        if not parametrize.is_parametrized(owner):
            continue
        dot = f"{prefix}." if prefix else ""
        parts = f"{dot}parametrizations."
        state = {key: value for key, value in state.items() if not key.startswith(parts)}
        for name in owner.parametrizations:
            state[f"{dot}{name}"] = getattr(owner, name).detach()
    return state


def plain_captioner(model: Captioner) -> Captioner:
    """`model` as a captioner without reparametrised weights, to save (the same one when it has
    none)."""
    if not any(parametrize.is_parametrized(m) for m in model.modules()):
        return model
    plain = Captioner(model.config, pretrained=False)
    plain.load_state_dict(plain_state_dict(model))
    return plain
