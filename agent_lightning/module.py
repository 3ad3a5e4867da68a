"""The LightningModule: loss, metrics, optimizer and LR schedule around an `AgentMLP`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from agent_lightning.optim import build_optimizer, build_scheduler
from agent_lightning.parallel import apply_parallelism, data_parallel_coords, is_parallelized

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class AgentModule(pl.LightningModule):
    """Trains a policy network by cross-entropy on (observation, action) pairs.

    `optimizer` and `scheduler` are factories (Hydra `_partial_: true`) that still need the
    parameters / optimizer, so they are built only once the strategy has placed the model.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        num_classes: int = 10,
        label_smoothing: float = 0.0,
        parallel: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # The resolved run config travels in every checkpoint, so a model can be rebuilt from it.
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"], logger=False)
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # Labels come from our own loaders: skip per-batch argument checks (they sync the device).
        accuracy = {"num_classes": num_classes, "average": "micro", "validate_args": False}
        self.val_acc = MulticlassAccuracy(**accuracy)
        self.test_acc = MulticlassAccuracy(**accuracy)
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # a resumed run keeps the best so far
        # Training accuracy is a running count on the device: a metric object's update costs 10%
        # of this model's step, two tensor ops do not.
        self._train_correct: Tensor | None = None
        self._train_seen = 0
        self._epoch_started = 0.0
        self._epoch_seconds = 0.0
        self._epoch_samples = 0

    def forward(self, x: Tensor) -> Tensor:
        """Action logits."""
        return self.model(x)

    def configure_model(self) -> None:
        """Shard the model over the device mesh of `fsdp` / `model_parallel`; data parallel needs nothing."""
        if self.device_mesh is None or is_parallelized(self.model):
            return
        apply_parallelism(self.model, self.device_mesh, OmegaConf.create(self.hparams.parallel or {}))

    def _loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """One optimisation step's loss; accuracy accumulates on the device without syncing."""
        features, targets = batch  # class indices, or class probabilities from augmentation
        logits = self(features)
        loss = self._loss(logits, targets)
        labels = targets if targets.ndim == 1 else targets.argmax(dim=-1)
        hits = (logits.detach().argmax(dim=-1) == labels).sum()
        self._train_correct = hits if self._train_correct is None else self._train_correct + hits
        self._train_seen += len(labels)
        # `self.log` costs about as much as this model's forward pass, so the step loss is logged
        # only on the steps the loggers write.
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log("train/loss", loss, prog_bar=True)
        self._epoch_samples += len(targets)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Loss and accuracy on the held-out split."""
        features, labels = batch
        logits = self(features)
        self.val_acc(logits, labels)
        self.log("val/loss", self._loss(logits, labels), sync_dist=True, prog_bar=True)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        """Track the best validation accuracy so far (the sanity check does not count)."""
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Loss and accuracy on the test split."""
        features, labels = batch
        logits = self(features)
        self.test_acc(logits, labels)
        self.log("test/loss", self._loss(logits, labels), sync_dist=True)
        self.log("test/acc", self.test_acc)

    def on_train_start(self) -> None:
        """Start the clock here too: a run resumed mid-epoch skips `on_train_epoch_start`."""
        self._epoch_started = time.perf_counter()

    def on_train_epoch_start(self) -> None:
        """Start the epoch's throughput clock."""
        self._epoch_samples = 0
        self._epoch_started = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Stop the clock at the epoch's last training batch, before validation runs."""
        if batch_idx + 1 >= self.trainer.num_training_batches:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # once per epoch: count work queued, not launched
            self._epoch_seconds = time.perf_counter() - self._epoch_started

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the epoch's training-accuracy count, so a run resumed mid-epoch continues it."""
        correct = int(self._train_correct) if self._train_correct is not None else 0
        checkpoint["train_accuracy_count"] = {"correct": correct, "seen": self._train_seen}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the epoch's training-accuracy count."""
        count = checkpoint.get("train_accuracy_count")
        if count and count["seen"]:
            self._train_correct, self._train_seen = torch.tensor(count["correct"]), count["seen"]

    @property
    def samples_per_second(self) -> float:
        """Global training samples per second over the current epoch's steps (0 before any)."""
        if not self._epoch_samples or self._epoch_seconds <= 0:
            return 0.0
        # Ranks of a tensor-parallel group share their samples: count data-parallel ranks only.
        return self._epoch_samples * data_parallel_coords(self.trainer)[1] / self._epoch_seconds

    def on_train_epoch_end(self) -> None:
        """Log the epoch's training accuracy (synced across ranks) and throughput."""
        if self._train_correct is not None and self._train_seen:
            # Every data-parallel rank saw as many samples, so the mean of their accuracies is exact.
            self.log("train/acc", self._train_correct.float() / self._train_seen, sync_dist=True)
        self._train_correct, self._train_seen = None, 0
        if self.samples_per_second:
            self.log("perf/samples_per_s", self.samples_per_second, sync_dist=True)

    def configure_optimizers(self) -> Any:
        """Build the optimizer over the placed (possibly wrapped or sharded) model's parameters."""
        optimizer = build_optimizer(self.optimizer_factory, self.trainer.model)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = build_scheduler(self.scheduler_factory, optimizer, self.trainer.estimated_stepping_batches)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": self.hparams.scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}
