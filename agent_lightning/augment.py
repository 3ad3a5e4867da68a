"""Data augmentation for vector observations: whole-batch transforms applied on the device.

Each transform maps (features, targets) to (features, targets), where targets are class
probabilities, so label-mixing transforms (mixup) compose with the others.
"""

from __future__ import annotations

import torch
from torch import Tensor


class GaussianNoise:
    """Adds N(0, std^2) noise to every feature."""

    def __init__(self, std: float = 0.1) -> None:
        if std < 0:
            raise ValueError(f"augment noise std must be >= 0, got {std}")
        self.std = std

    def __call__(self, features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Noisy features, same targets."""
        return features + self.std * torch.randn_like(features), targets


class FeatureMask:
    """Zeroes each feature independently with probability `p` (and rescales, like dropout)."""

    def __init__(self, p: float = 0.1) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"augment mask p must be in [0, 1), got {p}")
        self.p = p

    def __call__(self, features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Masked features, same targets."""
        keep = torch.rand_like(features) >= self.p
        return features * keep / (1.0 - self.p), targets


class Mixup:
    """Blends each sample with another of the batch, features and targets alike (Zhang et al., 2018)."""

    def __init__(self, alpha: float = 0.2) -> None:
        if alpha <= 0:
            raise ValueError(f"augment mixup alpha must be > 0, got {alpha}")
        self.beta = torch.distributions.Beta(alpha, alpha)

    def __call__(self, features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Pairs of samples mixed with one Beta(alpha, alpha) weight for the batch."""
        weight = self.beta.sample().item()
        partner = torch.randperm(len(features), device=features.device)
        mixed = weight * features + (1 - weight) * features[partner]
        return mixed, weight * targets + (1 - weight) * targets[partner]
