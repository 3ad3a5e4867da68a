"""A learnable synthetic task: class-conditional Gaussian clusters with a noise knob.

Every sample is a pure function of (seed, index), generated block by block, so any rank can
build exactly its own shard without materialising the rest of the data set.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

BLOCK_SIZE = 8192  # samples per independently seeded block


class ClusterTask:
    """Observations drawn around `clusters_per_class` random centres per class.

    `cluster_std` sets how much the clusters overlap (so the best reachable accuracy is known:
    see `nearest_centre_accuracy`); `label_noise` flips that fraction of labels to another class.
    """

    def __init__(
        self,
        num_features: int = 128,
        num_classes: int = 10,
        clusters_per_class: int = 4,
        cluster_std: float = 2.5,
        label_noise: float = 0.0,
        seed: int = 0,
    ) -> None:
        if num_features < 1 or num_classes < 2 or clusters_per_class < 1:
            raise ValueError(
                "data.source needs num_features >= 1, num_classes >= 2 and clusters_per_class >= 1, got "
                f"{num_features}, {num_classes}, {clusters_per_class}"
            )
        if cluster_std < 0 or not 0.0 <= label_noise < 1.0:
            raise ValueError(
                f"data.source needs cluster_std >= 0 and label_noise in [0, 1), got {cluster_std}, {label_noise}"
            )
        self.num_features = num_features
        self.num_classes = num_classes
        self.clusters_per_class = clusters_per_class
        self.cluster_std = cluster_std
        self.label_noise = label_noise
        self.seed = seed
        # Scale so every feature has unit variance whatever the noise level.
        self._scale = 1.0 / math.sqrt(1.0 + cluster_std**2)
        generator = torch.Generator().manual_seed(self._block_seed(-1))
        self.centres = torch.randn(num_classes * clusters_per_class, num_features, generator=generator)

    def _block_seed(self, block: int) -> int:
        return (self.seed * 1_000_003 + block + 1) % (2**63)

    def _block(self, block: int) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(self._block_seed(block))
        component = torch.randint(0, self.centres.shape[0], (BLOCK_SIZE,), generator=generator)
        noise = torch.randn(BLOCK_SIZE, self.num_features, generator=generator)
        features = (self.centres[component] + self.cluster_std * noise) * self._scale
        labels = component % self.num_classes
        flip = torch.rand(BLOCK_SIZE, generator=generator) < self.label_noise
        shift = torch.randint(1, self.num_classes, (BLOCK_SIZE,), generator=generator)
        labels = torch.where(flip, (labels + shift) % self.num_classes, labels)
        return features, labels

    def samples(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """Return features (float32) and labels (int64) of samples `start` to `stop` - 1."""
        if stop <= start:
            return torch.empty(0, self.num_features), torch.empty(0, dtype=torch.long)
        first, last = start // BLOCK_SIZE, (stop - 1) // BLOCK_SIZE
        blocks = [self._block(b) for b in range(first, last + 1)]
        features = torch.cat([f for f, _ in blocks])
        labels = torch.cat([y for _, y in blocks])
        offset = first * BLOCK_SIZE
        return features[start - offset : stop - offset].contiguous(), labels[
            start - offset : stop - offset
        ].contiguous()

    def nearest_centre_accuracy(self, features: Tensor, labels: Tensor) -> float:
        """Accuracy of the nearest-centre rule (close to Bayes-optimal here): the reachable ceiling."""
        centres = (self.centres * self._scale).to(features.device)
        predicted = torch.cdist(features, centres).argmin(dim=1) % self.num_classes
        return (predicted == labels).float().mean().item()
