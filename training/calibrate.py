"""Fit a trained captioner's confidence and out-of-domain test, and measure both on held-out data.

    python -m training.calibrate --model runs/captioner_photo/best

Confidence is fitted on the validation split (greedy captions' mean token log-probability against
their word-F1); the feature distribution on the training images, its threshold on validation
images. Reported on the test split: expected calibration error, and the AUROC of the
out-of-domain distance separating in-domain test images from plain photos without any object
(crops of the held-out composite backgrounds) and from noise. The model directory is rewritten
with the fitted Uncertainty (its metadata keeps the figures); `calibration.json` beside it too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from models.atomic import write_text
from models.captioner import Captioner
from models.checkpoint import load_model, save_model
from models.confidence import expected_calibration_error
from models.inference import caption_features
from models.search import SearchOptions
from training.captioning import load_caption_splits
from training.errors import run_main
from training.features import FeatureCache
from training.metrics import word_f1

CROPS_PER_BACKGROUND = 24


def get_args_parser() -> argparse.ArgumentParser:
    """Flags of `python -m training.calibrate`."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="a trained captioner's directory (best/)")
    parser.add_argument("--feature-cache", default="runs/cache", help="default: runs/cache")
    parser.add_argument("--components", type=int, default=64, help="PCA components (default 64)")
    parser.add_argument(
        "--quantile",
        type=float,
        default=0.98,
        help="validation quantile of the threshold (default 0.98)",
    )
    parser.add_argument("--max-length", type=int, default=24, help="greedy decoding length")
    parser.add_argument(
        "--no-photos",
        dest="photos",
        action="store_false",
        help="skip the plain-photo AUROC (it needs data/photo's packaged backgrounds)",
    )
    return parser


def greedy_fit(model: Captioner, pooled: Tensor, grid: Tensor, max_length: int) -> tuple:
    """Greedy captions of cached features -> (texts, mean token log-probabilities (N,))."""
    texts, scores = [], []
    options = SearchOptions("greedy", max_length=max_length)
    for start in range(0, len(pooled), 256):
        found = caption_features(
            model, pooled[start : start + 256].float(), grid[start : start + 256].float(), options
        )
        for best, *_ in found:
            texts.append(best.tokens)
            scores.append(best.log_prob / max(len(best.token_log_probs), 1))
    return texts, torch.tensor(scores, dtype=torch.float64)


def auroc(inside: Tensor, outside: Tensor) -> float:
    """P(an outside score > an inside score), ties counted half: the Mann-Whitney AUROC."""
    greater = (outside.unsqueeze(1) > inside.unsqueeze(0)).double().mean()
    ties = (outside.unsqueeze(1) == inside.unsqueeze(0)).double().mean()
    return float(greater + 0.5 * ties)


def plain_photos(model: Captioner) -> Tensor:
    """Pooled features (N, D) of crops of the held-out backgrounds: photos with no object."""
    from training.data.composite import held_out_backgrounds
    from training.data.photo import fetch_backgrounds

    backgrounds, _ = fetch_backgrounds()
    held_out = held_out_backgrounds([b.name for b in backgrounds])
    generator = torch.Generator().manual_seed(0)
    images = []
    for background in (b for b in backgrounds if b.name in held_out):
        with Image.open(background.path) as opened:
            photo = opened.convert("RGB")
        photo.thumbnail((640, 640))
        for _ in range(CROPS_PER_BACKGROUND):
            side = int(min(photo.size) * (0.4 + 0.6 * torch.rand(1, generator=generator).item()))
            left = int(torch.randint(0, photo.width - side + 1, (1,), generator=generator))
            top = int(torch.randint(0, photo.height - side + 1, (1,), generator=generator))
            crop = photo.crop((left, top, left + side, top + side))
            images.append(model.encoder.preprocess(crop))
    return _pooled(model, torch.stack(images))


def _pooled(model: Captioner, images: Tensor) -> Tensor:
    return torch.cat([model.features(images[s : s + 64])[0] for s in range(0, len(images), 64)])


def calibrate(args: argparse.Namespace) -> dict[str, Any]:
    """Fit, measure, save; returns the report written to calibration.json."""
    loaded = load_model(args.model)
    settings = loaded.metadata["settings"]
    splits = load_caption_splits(
        settings["dataset"], settings["images"], settings.get("styles", ""),
        settings.get("language", "en"),
    )  # fmt: skip
    model = _with_uncertainty(loaded.model, args.components)
    cache = FeatureCache(args.feature_cache, model.encoder)
    cache.ensure([e.image_path for name in ("train", "valid", "test") for e in splits[name]])
    feats = {n: _split_features(cache, splits[n]) for n in ("valid", "test")}
    train_pooled = cache.pooled(cache.rows([e.image_path for e in splits["train"]]))
    vocabulary = loaded.vocabularies["caption"]

    def f1_and_scores(name: str) -> tuple[Tensor, Tensor]:
        tokens, scores = greedy_fit(model, *feats[name], args.max_length)
        texts = [vocabulary.decode(t) for t in tokens]
        refs = [e.captions for e in splits[name]]
        return torch.tensor(word_f1(texts, refs), dtype=torch.float64), scores

    valid_f1, valid_scores = f1_and_scores("valid")
    model.uncertainty.fit_confidence(valid_scores, valid_f1)
    model.uncertainty.fit_domain(train_pooled.float(), feats["valid"][0].float(), args.quantile)
    test_f1, test_scores = f1_and_scores("test")
    confidence = model.uncertainty.confidence(test_scores)
    report = {
        "calibration": [round(float(x), 4) for x in model.uncertainty.calibration],
        "ece_test": round(expected_calibration_error(confidence, test_f1), 4),
        "ece_test_uncalibrated": round(expected_calibration_error(test_scores.exp(), test_f1), 4),
        "mean_confidence_test": round(float(confidence.mean()), 4),
        "mean_word_f1_test": round(float(test_f1.mean()), 4),
        **_domain_report(model, feats["test"][0].float(), args.photos),
    }
    metadata = {**loaded.metadata, "calibration": report}  # exported and shown in the model card
    save_model(args.model, model, loaded.vocabularies, metadata)
    # beside the model directory, not in it: its checksums.json covers every file inside
    write_text(Path(args.model).parent / "calibration.json", json.dumps(report, indent=2))
    return report


def _domain_report(model: Captioner, test_pooled: Tensor, photos: bool) -> dict[str, Any]:
    size = model.config.encoder.image_size
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(64, 3, size, size, generator=generator) * 2 - 1
    others = {"noise": _pooled(model, noise)}
    if photos:
        others["plain_photos"] = plain_photos(model)
    inside = model.uncertainty.distance(test_pooled)
    threshold = model.uncertainty.threshold
    report: dict[str, Any] = {"flagged_test": round(float((inside > threshold).double().mean()), 4)}
    for name, pooled in others.items():
        distance = model.uncertainty.distance(pooled)
        report[f"auroc_{name}"] = round(auroc(inside, distance), 4)
        report[f"flagged_{name}"] = round(float((distance > threshold).double().mean()), 4)
        report[f"images_{name}"] = len(distance)
    return report


def _with_uncertainty(model: Captioner, components: int) -> Captioner:
    config = dataclasses.replace(model.config, uncertainty_components=components)
    fitted = Captioner(config).eval()
    fitted.load_state_dict(model.state_dict(), strict=False)  # uncertainty buffers are new
    return fitted


def _split_features(cache: FeatureCache, examples: list) -> tuple[Tensor, Tensor]:
    return cache.features(cache.rows([e.image_path for e in examples]))


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Calibrate `args.model` in place and print the report."""
    report = calibrate(args)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())
