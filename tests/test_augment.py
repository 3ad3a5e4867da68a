"""Augmentations change training batches, on the device, and never validation or test batches."""

import pytest
import torch
from lightning.pytorch import Callback

from agent_lightning.augment import FeatureMask, GaussianNoise, Mixup
from agent_lightning.data import ClusterTask
from agent_lightning.train import train


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(64, 16), torch.nn.functional.one_hot(torch.randint(0, 4, (64,)), 4).float()


def test_noise_and_mask_change_features_not_targets() -> None:
    features, targets = _batch()
    for augment in (GaussianNoise(0.3), FeatureMask(0.2)):
        new_features, new_targets = augment(features, targets)
        assert new_features.shape == features.shape and not torch.equal(new_features, features)
        assert torch.equal(new_targets, targets)
    masked, _ = FeatureMask(0.5)(torch.ones(1000, 10), targets)
    assert 0.4 < (masked == 0).float().mean() < 0.6 and masked.mean() == pytest.approx(1.0, abs=0.1)


def test_mixup_blends_features_and_targets_with_one_weight() -> None:
    features, targets = _batch()
    mixed, soft = Mixup(0.4)(features, targets)
    assert not torch.equal(mixed, features)
    assert torch.allclose(soft.sum(dim=1), torch.ones(64))
    assert (soft.max(dim=1).values < 1).any()  # labels really mixed


@pytest.mark.parametrize(("cls", "arg"), [(GaussianNoise, -1.0), (FeatureMask, 1.0), (Mixup, 0.0)])
def test_bad_strength_is_refused(cls, arg: float) -> None:
    with pytest.raises(ValueError, match="augment"):
        cls(arg)


class BatchRecorder(Callback):
    def __init__(self) -> None:
        self.seen: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen["train"].append(batch[0].clone())

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self.seen["val"].append(batch[0].clone())

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.seen["test"].append(batch[0].clone())


def test_augmentation_touches_training_batches_only(compose_cfg) -> None:
    recorder = BatchRecorder()
    metrics = train(compose_cfg("augment=[noise,mask,mixup]", "trainer.max_epochs=1"), extra_callbacks=[recorder])
    raw_train, _ = ClusterTask(seed=42).samples(0, 16384)
    raw_val, _ = ClusterTask(seed=42).samples(16384, 16384 + 2048)
    raw_test, _ = ClusterTask(seed=42).samples(16384 + 2048, 16384 + 4096)

    train_rows = torch.cat(recorder.seen["train"])
    assert len(train_rows) == 16384
    known = {tuple(r) for r in raw_train[:, :4].tolist()}
    assert not any(tuple(r) in known for r in train_rows[:, :4].tolist())  # every training row was changed
    assert torch.equal(torch.cat(recorder.seen["val"]), raw_val)
    assert torch.equal(torch.cat(recorder.seen["test"]), raw_test)
    assert metrics["val/acc"] > 0.5


def test_without_augmentation_training_batches_are_the_data(compose_cfg) -> None:
    recorder = BatchRecorder()
    train(compose_cfg("trainer.max_epochs=1", "test=false"), extra_callbacks=[recorder])
    seen = torch.cat(recorder.seen["train"])
    raw_train, _ = ClusterTask(seed=42).samples(0, 16384)
    assert torch.equal(torch.unique(seen, dim=0), torch.unique(raw_train, dim=0))
