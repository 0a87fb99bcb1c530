"""Caption confidence and the out-of-domain flag: calibration, distances, storage."""

from __future__ import annotations

import dataclasses

import torch

from models.captioner import Captioner
from models.checkpoint import load_model, save_model
from models.confidence import Uncertainty, expected_calibration_error, fit_platt
from tests.helpers import random_captioner, toy_vocabulary


def _correlated_gaussian(rows: int, generator: torch.Generator, shift: float = 0.0) -> torch.Tensor:
    mixing = torch.randn(32, 32, generator=torch.Generator().manual_seed(7)) / 4
    return torch.randn(rows, 32, generator=generator) @ mixing + shift


def test_domain_flags_shifted_features_and_keeps_in_domain_ones() -> None:
    generator = torch.Generator().manual_seed(0)
    uncertainty = Uncertainty(32, 8)
    uncertainty.fit_domain(
        _correlated_gaussian(4000, generator), _correlated_gaussian(1000, generator)
    )
    inside = uncertainty.out_of_domain(_correlated_gaussian(2000, generator)).float().mean()
    assert 0.0 < inside < 0.03  # the 99% quantile: about 1% of new in-domain points flagged
    shifted = uncertainty.out_of_domain(_correlated_gaussian(500, generator, shift=3.0))
    assert shifted.float().mean() > 0.95
    noise = uncertainty.out_of_domain(5 * torch.randn(500, 32, generator=generator))
    assert noise.float().mean() > 0.95


def test_platt_fit_recovers_a_calibrated_confidence() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = -3 * torch.rand(20000, generator=generator, dtype=torch.float64)  # mean log-probs
    truth = torch.sigmoid(2.5 * scores + 3.0)
    outcomes = torch.bernoulli(truth, generator=generator)
    slope, intercept = fit_platt(scores, outcomes)
    assert abs(slope - 2.5) < 0.25 and abs(intercept - 3.0) < 0.25
    fitted = torch.sigmoid(slope * scores + intercept)
    assert expected_calibration_error(fitted, outcomes) < 0.02
    uncalibrated = torch.sigmoid(10 * scores + 3.0)
    assert expected_calibration_error(uncalibrated, outcomes) > 0.1


def test_confidence_in_unit_range_and_follows_log_probability() -> None:
    uncertainty = Uncertainty(4, 2)
    uncertainty.calibration.copy_(torch.tensor([2.0, 1.0]))
    confidence = uncertainty.confidence(torch.tensor([-50.0, -2.0, -0.5, 0.0]))
    assert ((confidence >= 0) & (confidence <= 1)).all()
    assert (confidence.diff() > 0).all()


def _fitted_captioner() -> Captioner:
    model = random_captioner()
    config = dataclasses.replace(model.config, uncertainty_components=4)
    fitted = Captioner(config, pretrained=False).eval()
    fitted.load_state_dict(model.state_dict(), strict=False)
    generator = torch.Generator().manual_seed(1)
    size = config.encoder.feature_size
    fitted.uncertainty.fit_domain(
        torch.randn(300, size, generator=generator), torch.randn(100, size, generator=generator)
    )
    fitted.uncertainty.fit_confidence(torch.linspace(-3, 0, 50), torch.linspace(0, 1, 50))
    return fitted


def test_uncertainty_survives_fp16_storage(tmp_path) -> None:
    model = _fitted_captioner()
    save_model(tmp_path, model, {"target": toy_vocabulary()}, half=True)
    loaded = load_model(tmp_path).model
    pooled = torch.randn(20, model.config.encoder.feature_size)
    log_probs = torch.linspace(-4, 0, 20)
    before, after = model.assess(pooled, log_probs), loaded.assess(pooled, log_probs)
    torch.testing.assert_close(before[0], after[0], atol=2e-3, rtol=0)
    distance = model.uncertainty.distance(pooled)
    torch.testing.assert_close(distance, loaded.uncertainty.distance(pooled), rtol=1e-2, atol=0)


def test_model_without_uncertainty_reports_raw_probability_and_no_flag() -> None:
    model = random_captioner()
    confidence, flags = model.assess(torch.zeros(2, 8), torch.tensor([-1.0, 0.0]))
    torch.testing.assert_close(confidence, torch.tensor([-1.0, 0.0]).exp())
    assert flags is None
