"""Fine-tuning the encoder's last blocks on cached prefix activations (--fine-tune-blocks)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from models.checkpoint import load_model
from models.encoders import EncoderSuffix, ImageEncoder, ImageEncoderConfig
from models.inference import caption_features, caption_images
from models.search import SearchOptions
from training import train_captioner
from training.captioning import CaptionerSettings, CaptionTask
from training.distributed import Distributed
from training.encoder_tuning import plain_state_dict
from training.features import encoder_fingerprint
from training.loop import Trainer, token_loss
from training.settings import resolve_settings

FIXTURES = Path(__file__).parent / "fixtures" / "training"
CPU = torch.device("cpu")


def tiny_settings(tmp_path: Path, *flags: str) -> CaptionerSettings:
    """The tiny captioner preset (small CNN, 64 px, fixture emoji) writing under `tmp_path`."""
    args = train_captioner.get_args_parser().parse_args(
        ["--preset", "tiny", "--output-dir", str(tmp_path), "--no-progress", *flags]
    )
    settings = resolve_settings(CaptionerSettings, "captioner", args)
    return replace(settings, feature_cache=str(tmp_path / "cache"))


def small_encoder(seed: int = 0) -> ImageEncoder:
    torch.manual_seed(seed)
    config = ImageEncoderConfig(backbone="small-cnn", trainable=True, image_size=64)
    return ImageEncoder(config, pretrained=False)


def test_no_tuned_blocks_is_the_frozen_encoder_of_before(tmp_path: Path) -> None:
    task = CaptionTask(tiny_settings(tmp_path), Distributed(), CPU)
    encoder = task.model.encoder
    before = ImageEncoderConfig(backbone="small-cnn", image_size=64)  # what runs were built with
    assert asdict(encoder.config) == asdict(before)  # so the same feature cache as before
    assert task.suffix is None and task.cache.encoder is encoder
    assert not any(p.requires_grad for p in encoder.parameters())
    assert encoder_fingerprint(encoder) in str(task.cache.store.folder)
    assert task.teacher_forced().suffix is None


@pytest.mark.parametrize("tuned_blocks", [1, 2, 3])
def test_prefix_then_suffix_is_the_whole_small_cnn(tuned_blocks: int) -> None:
    encoder = small_encoder().eval()
    images = torch.randn(3, 3, 64, 64)
    prefix, suffix = encoder.split(tuned_blocks)
    with torch.no_grad():
        pooled, grid = encoder(images)
        tuned_pooled, tuned_grid = suffix.eval()(prefix(images)[1])
    torch.testing.assert_close(tuned_grid, grid, rtol=0, atol=1e-6)
    torch.testing.assert_close(tuned_pooled, pooled, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def lite0() -> ImageEncoder:
    config = ImageEncoderConfig(backbone="efficientnet-lite0", trainable=True, image_size=64)
    return ImageEncoder(config)


@pytest.mark.parametrize("tuned_blocks", [1, 2, 16])
def test_prefix_then_suffix_is_extract_features(lite0: ImageEncoder, tuned_blocks: int) -> None:
    images = torch.randn(2, 3, 64, 64)
    prefix, suffix = lite0.split(tuned_blocks)
    with torch.no_grad():
        whole = lite0.backbone.eval().extract_features(images)  # (B, 1280, 2, 2)
        _, grid = suffix.eval()(prefix(images)[1])  # (B, 4, 1280)
    torch.testing.assert_close(grid, whole.flatten(2).transpose(1, 2), rtol=0, atol=1e-6)


def test_suffix_drops_connections_as_the_whole_network_does(lite0: ImageEncoder) -> None:
    """In training the tuned blocks keep their place's drop-connect rate; batch norm stays frozen."""
    images = torch.randn(16, 3, 64, 64)
    prefix, suffix = lite0.split(3)
    net = lite0.backbone.eval()
    statistics = [b.clone() for b in suffix.buffers()]
    with torch.no_grad():
        activation = prefix(images)[1]
        torch.manual_seed(0)
        _, tuned = suffix.train()(activation)
        for block in net._blocks[-3:]:
            block.training = True  # drop-connect on, their batch norm still in eval mode
        torch.manual_seed(0)
        whole = net.extract_features(images).flatten(2).transpose(1, 2)  # (B, 4, 1280)
        net.eval()
        _, evaluated = suffix.eval()(activation)
    torch.testing.assert_close(tuned, whole, rtol=0, atol=1e-6)
    assert not torch.allclose(tuned, evaluated)  # connections were dropped
    assert all(torch.equal(a, b) for a, b in zip(statistics, suffix.buffers(), strict=True))


def test_only_a_trainable_encoder_splits() -> None:
    frozen = ImageEncoder(ImageEncoderConfig(backbone="small-cnn", image_size=64))
    with pytest.raises(ValueError, match="trainable"):
        frozen.split(1)
    with pytest.raises(ValueError, match="3 blocks"):
        small_encoder().split(4)


def test_prefix_gets_no_gradient_the_suffix_and_decoder_do(tmp_path: Path) -> None:
    task = CaptionTask(tiny_settings(tmp_path, "--fine-tune-blocks", "2"), Distributed(), CPU)
    assert isinstance(task.suffix, EncoderSuffix)
    module = task.teacher_forced().train()
    batch = task.batch("train", list(range(8)), CPU)
    logits, _, _ = task.forward(module, batch, {})
    token_loss(logits, batch.targets)[0].backward()
    suffix = {id(p) for p in task.suffix.parameters()}
    encoder = list(task.model.encoder.parameters())
    prefix = [p for p in encoder if id(p) not in suffix]
    assert prefix and all(p.grad is None and not p.requires_grad for p in prefix)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in task.suffix.parameters())
    assert task.model.decoder.output.weight.grad.abs().sum() > 0


def test_encoder_learns_at_its_scaled_rate_and_the_loss_falls(tmp_path: Path) -> None:
    flags = ("--fine-tune-blocks", "2", "--encoder-lr-scale", "0.1", "--lr", "0.01")
    settings = tiny_settings(tmp_path, *flags, "--warmup-steps", "0")
    task = CaptionTask(settings, Distributed(), CPU)
    trainer = Trainer(task, settings, Distributed(), CPU)
    batch = task.batch("train", list(range(16)), CPU)
    before = {k: v.clone() for k, v in plain_state_dict(task.model).items()}
    first = trainer.train_step(batch)["loss"]
    after = plain_state_dict(task.model)
    steps = {
        k: float((after[k] - v).abs().max()) for k, v in before.items() if v.is_floating_point()
    }
    # Adam's first step moves each weight by about its learning rate
    assert steps["decoder.output.weight"] == pytest.approx(0.01, rel=1e-3)
    encoder = [v for k, v in steps.items() if k.startswith("encoder.")]
    assert max(encoder) == pytest.approx(0.001, rel=1e-3)
    for _ in range(3):
        last = trainer.train_step(batch)["loss"]
    assert last < first


def _pixels(paths: list[Path], encoder: ImageEncoder) -> torch.Tensor:
    tensors = []
    for path in paths:
        with Image.open(path) as image:
            tensors.append(encoder.preprocess(image))
    return torch.stack(tensors)  # (B, 3, S, S)


def test_saved_model_captions_images_as_the_trained_one_does(tmp_path: Path) -> None:
    """Prefix then tuned suffix in training == images through the loaded model's whole encoder."""
    settings = tiny_settings(tmp_path, "--fine-tune-blocks", "2", "--max-steps", "6")
    task = CaptionTask(settings, Distributed(), CPU)
    initial = {k: v.clone() for k, v in plain_state_dict(task.model).items() if "backbone" in k}
    Trainer(task, settings, Distributed(), CPU).run()
    task.save(tmp_path / "final", {"settings": settings.to_dict()})
    loaded = load_model(tmp_path / "final")
    assert loaded.model.config.encoder.trainable
    tuned = loaded.model.state_dict()
    assert any(not torch.equal(tuned[k], initial[k]) for k in initial)  # fine-tuned weights saved
    paths = [e.image_path for e in task.splits["valid"][:6]]
    pixels = _pixels(paths, loaded.model.encoder)
    options = SearchOptions(max_length=8)
    task.model.eval()
    with torch.no_grad():
        features = task.suffix.eval()(task.cache.encoder(pixels)[1])  # (B, D), (B, S, D)
    trained = caption_features(task.model, *features, options)
    served = caption_images(loaded.model, pixels, options)
    assert [h[0].tokens for h in served] == [h[0].tokens for h in trained]
    for mine, theirs in zip(served, trained, strict=True):
        assert mine[0].score == pytest.approx(theirs[0].score, abs=1e-5)
    assert caption_images(load_model(tmp_path / "final").model, pixels, options) == served


def test_fine_tuned_run_resumes_exactly(tmp_path: Path) -> None:
    """The checkpoint holds the suffix's reparametrised weights and their Adam state."""

    def run(name: str, steps: int, *flags: str) -> list[str]:
        common = ["--fine-tune-blocks", "2", "--log-every", "1", "--name", name]
        settings = tiny_settings(tmp_path, *common, "--max-steps", str(steps), *flags)
        task = CaptionTask(settings, Distributed(), CPU)
        Trainer(task, settings, Distributed(), CPU).run()
        return (tmp_path / name / "metrics.jsonl").read_text().splitlines()

    def losses(lines: list[str]) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}

    uninterrupted = run("whole", 6)
    first = run("halves", 3)
    resumed = run("halves", 6, "--resume")
    assert resumed[: len(first)] == first and len(resumed) > len(first)  # continued, not restarted
    assert losses(resumed) == pytest.approx(losses(uninterrupted), rel=1e-6)
