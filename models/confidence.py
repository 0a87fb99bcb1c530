"""How sure a captioner is: calibrated caption confidence and an out-of-domain test on image features."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Uncertainty(nn.Module):
    """Fitted after training, stored with the model's weights (all buffers, no parameters).

    Confidence: Platt scaling of a caption's mean token log-probability, fitted so that it
    estimates the caption's expected word-F1 against human captions on validation data.
    Domain: the Mahalanobis distance of the image's pooled encoder features to the training
    images', in probabilistic PCA form (K leading components, one shared variance for the rest);
    an image is out of domain when its distance exceeds a high quantile of validation images'.
    """

    def __init__(self, feature_size: int, components: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(feature_size))
        self.register_buffer("basis", torch.zeros(components, feature_size))  # (K, D)
        # log-variances: exported models store buffers in fp16, where small variances underflow
        self.register_buffer("log_variances", torch.zeros(components))  # (K,)
        self.register_buffer("log_residual_variance", torch.zeros(()))
        self.register_buffer("threshold", torch.tensor(math.inf))
        self.register_buffer("calibration", torch.tensor([1.0, 0.0]))  # slope, intercept

    @torch.no_grad()
    def fit_domain(self, train: Tensor, valid: Tensor, quantile: float = 0.99) -> None:
        """Fit the feature distribution on train (N, D); threshold at `quantile` of valid (M, D)."""
        components = self.basis.size(0)
        train = train.double()
        mean = train.mean(dim=0)
        centred = train - mean  # (N, D)
        _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
        variances = singular**2 / max(train.size(0) - 1, 1)  # (min(N, D),)
        rest = variances[components:]
        residual = rest.sum() / max(train.size(1) - components, 1)
        self.mean.copy_(mean)
        self.basis.copy_(vh[:components])
        self.log_variances.copy_(variances[:components].clamp_min(1e-12).log())
        self.log_residual_variance.copy_(residual.clamp_min(1e-12).log())
        self.threshold.copy_(torch.quantile(self.distance(valid).double(), quantile))

    @torch.no_grad()
    def fit_confidence(self, mean_log_probs: Tensor, word_f1: Tensor) -> None:
        """Fit slope and intercept so sigmoid(a x + b) estimates word-F1 (both (N,))."""
        self.calibration.copy_(fit_platt(mean_log_probs.double(), word_f1.double()))

    def distance(self, pooled: Tensor) -> Tensor:
        """Mahalanobis distance of pooled features (B, D) to the training images' -> (B,)."""
        centred = pooled.to(self.mean.dtype) - self.mean  # (B, D)
        projected = centred @ self.basis.T  # (B, K)
        residual = centred - projected @ self.basis  # (B, D)
        squared = (projected**2 * (-self.log_variances).exp()).sum(-1)
        squared = squared + (residual**2).sum(-1) * (-self.log_residual_variance).exp()
        return squared.sqrt() / math.sqrt(self.mean.numel())  # scaled to ~1 in domain

    def out_of_domain(self, pooled: Tensor) -> Tensor:
        """True where an image's features lie outside the training distribution (B,)."""
        return self.distance(pooled) > self.threshold

    def confidence(self, mean_log_probs: Tensor) -> Tensor:
        """Calibrated confidence in [0, 1] from mean token log-probabilities (B,) -> (B,)."""
        slope, intercept = self.calibration.to(mean_log_probs.dtype)
        return torch.sigmoid(slope * mean_log_probs + intercept)


def fit_platt(scores: Tensor, targets: Tensor, steps: int = 200) -> Tensor:
    """Logistic fit of soft `targets` in [0, 1] on `scores` (N,): returns (slope, intercept)."""
    params = torch.tensor([1.0, 0.0], dtype=scores.dtype, requires_grad=True)
    optimiser = torch.optim.LBFGS([params], max_iter=steps, line_search_fn="strong_wolfe")

    def loss() -> Tensor:
        optimiser.zero_grad()
        value = nn.functional.binary_cross_entropy_with_logits(
            params[0] * scores + params[1], targets
        )
        value.backward()
        return value

    with torch.enable_grad():
        optimiser.step(loss)
    return params.detach()


def expected_calibration_error(confidence: Tensor, targets: Tensor, bins: int = 10) -> float:
    """Mean |confidence - target| within equal-width confidence bins, weighted by bin size."""
    edges = torch.linspace(0, 1, bins + 1, dtype=confidence.dtype)
    which = torch.bucketize(confidence, edges[1:-1])  # (N,) bin index
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            gap = confidence[inside].mean() - targets[inside].to(confidence.dtype).mean()
            error += inside.sum().item() / confidence.numel() * gap.abs().item()
    return error
