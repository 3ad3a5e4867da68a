"""The LightningModule: loss, metrics, optimizer and LR schedule around an `AgentMLP`."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from agent_lightning.data.executions import ExecutionBatches, batches_of, is_group
from agent_lightning.epoch_counts import EpochCounts
from agent_lightning.errors import ConfigError
from agent_lightning.optim import build_optimizer, build_scheduler
from agent_lightning.parallel.sharding import apply_parallelism, is_parallelized
from agent_lightning.parallel.strategies import data_parallel_coords
from agent_lightning.runs.nothing_left import nothing_left_to_train
from agent_lightning.step import (
    StepOptions,
    estimated_optimizer_steps,
    fused_allowed,
    plain_step_possible,
    with_fast_kernel,
)
from agent_lightning.step_graph import CapturedStep, accepts_capturable, make_capturable

# What ReduceLROnPlateau watches: it steps after each validation.
PLATEAU_MONITOR = "val/loss"

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


def built_parts(cfg: DictConfig) -> dict[str, Any]:
    """The model, optimizer factory and LR scheduler factory (with its interval) a run config describes."""
    scheduler_cfg = OmegaConf.to_container(cfg.scheduler, resolve=True) if cfg.get("scheduler") else {}
    assert isinstance(scheduler_cfg, dict)
    interval = scheduler_cfg.pop("interval", "epoch")
    return {
        "model": hydra.utils.instantiate(cfg.model),
        "optimizer": hydra.utils.instantiate(cfg.optimizer),
        "scheduler": hydra.utils.instantiate(scheduler_cfg) if "_target_" in scheduler_cfg else None,
        "scheduler_interval": interval,
    }


class AgentModule(pl.LightningModule):
    """Trains a policy network by cross-entropy on (observation, action) pairs.

    `optimizer` and `scheduler` are factories (Hydra `_partial_: true`) that still need the
    parameters / optimizer, so they are built only once the strategy has placed the model.

    The step is optimised manually: Lightning's automatic loop (closure, optimizer wrapper,
    per-step scheduler and accumulation bookkeeping) costs a fixed slice of this small model's
    ~3 ms step. Accumulation, clipping, LR schedules and `torch.compile` come from `step`
    (`StepOptions`, read from the `trainer` config group).
    """

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | Path,
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool | None = True,
        **kwargs: Any,
    ) -> AgentModule:
        """Lightning's loader, read weights-only; the model, optimizer and schedule come from the run config it holds.

        They are not hyperparameters (objects, not values), so Lightning alone could not rebuild the module.
        """
        from agent_lightning import safe_load

        if Path(checkpoint_path).is_dir():  # Lightning's loader reads one file
            raise ConfigError(
                f"{checkpoint_path} is a sharded checkpoint directory: read it with Policy.load or load_agent, or "
                "resume training from it with ckpt_path="
            )
        checkpoint = safe_load.load_file(Path(checkpoint_path), mmap=True)  # its run config only, not the tensors
        config = (checkpoint.get("hyper_parameters") or {}).get("config")
        if not isinstance(config, dict):
            raise ConfigError(f"{checkpoint_path} holds no run config: read its weights with load_agent or Policy.load")
        parts = {key: value for key, value in built_parts(OmegaConf.create(config)).items() if key not in kwargs}
        return super().load_from_checkpoint(
            checkpoint_path, map_location, hparams_file, strict, weights_only, **parts, **kwargs
        )

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
        step: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
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
        self._counts = EpochCounts()
        self.step_options = StepOptions(**(step or {}))
        # Set per run in `on_train_start`, so the step itself does no lookups.
        # Eager: (loss, detached logits), whose right predictions `EpochCounts` counts for many batches at
        # once; compiled: (loss, count of right predictions), computed in the same graph.
        self._train_forward: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] = self._forward_loss_logits
        self._hits_in_graph = False
        self._step_schedulers: list[Any] = []
        self._captured: CapturedStep | None = None  # the whole step as a CUDA graph (see `_graph_step_wanted`)
        self._max_steps = -1
        self._plain_step = False  # whether Lightning's backward/step dispatch can be skipped (`on_train_start`)
        self._validated = False  # whether validation ran since the last epoch-end schedule step
        self._restored_plateau_value: float | None = None  # PLATEAU_MONITOR of a checkpoint's pending validation

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

    def _forward_loss(self, features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(features)
        return logits, self._loss(logits, targets)

    def _forward_loss_logits(self, features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        logits, loss = self._forward_loss(features, targets)
        return loss, logits.detach()

    def _forward_loss_hits(self, features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        # The loss and the count of right predictions: one graph under trainer.compile (no extra kernels).
        logits, loss = self._forward_loss(features, targets)  # targets: class indices, or probabilities
        labels = targets if targets.ndim == 1 else targets.argmax(dim=-1)
        return loss, (logits.detach().argmax(dim=-1) == labels).sum()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | dict[str, Tensor]:
        """An optimizer step per batch of the item (`trainer.steps_per_execution` groups them); no host sync."""
        group = batches_of(batch)
        grouped = is_group(batch)
        last_item = batch_idx + 1 >= self._batches_per_epoch
        loop = self.trainer.fit_loop.epoch_loop
        done = loop._batches_that_stepped  # the run's batches before this item: the loggers' step axis
        loss, due, losses, sizes = None, [], [], []
        for index, (features, targets) in enumerate(group):
            if self._max_steps >= 0 and self.trainer.global_step >= self._max_steps:
                break  # a group may hold more batches than the run has steps left
            loss = self._train_batch(features, targets, last_item and index + 1 == len(group))
            if self._captured is not None:
                loss = loss.clone()  # a graph output buffer: the next step would overwrite it
            if (done + index + 1) % self._log_every == 0:
                due.append((done + index, loss.detach()))  # logged as a number: no graph to keep
            losses.append(loss.detach())
            sizes.append(len(targets))
        assert loss is not None  # Lightning stops before an item once max_steps is reached
        step_losses = torch.stack(losses) if grouped else losses[0].reshape(1)
        self._counts.add_losses(step_losses, sizes)  # the epoch's mean loss: one sum per item, no host sync
        if not grouped:
            # `self.log` costs about as much as this model's forward pass, so the step loss is logged
            # only on the batches the loggers write (Lightning's own count of them).
            if due:
                self.log("train/loss", loss, prog_bar=True)
            return loss
        # Lightning counts one step per item: count every batch, so that logged steps, `log_every_n_steps`
        # and a resumed run's count are the same as at one batch per item.
        loop._batches_that_stepped += len(losses) - 1
        for step, value in due:  # the loss of each due batch, at its own step, to every logger (as Lightning would)
            for logger in self.loggers:
                logger.log_metrics({"train/loss": float(value), "epoch": self.current_epoch}, step=step)
                logger.save()
        if due:
            self.log("train/loss", due[-1][1], prog_bar=True, logger=False)  # the bar and callback_metrics
        return {"loss": loss, "losses": step_losses}  # each step's loss, for the guards

    def _train_batch(self, features: Tensor, targets: Tensor, last_in_epoch: bool) -> Tensor:
        if self._captured is not None:
            # Lightning counts optimizer steps (`global_step`) through these two hooks of its optimizer wrapper.
            self._optimizer._on_before_step()
            loss, hits = self._captured.step(features, targets)
            self._optimizer._on_after_step()
            self._counts.count(hits, len(targets))
            for scheduler in self._step_schedulers:
                scheduler.step()
            return loss
        loss, predicted = self._train_forward(features, targets)
        counts = self._counts
        if self._hits_in_graph:
            counts.count(predicted, len(targets))
        else:
            counts.defer(predicted, targets)

        accumulate = self.step_options.accumulate_grad_batches
        optimizer = self._optimizer
        if counts.micro_batches == 0:
            optimizer.zero_grad(set_to_none=True)
        counts.micro_batches += 1
        # Like Lightning: a step every `accumulate` batches, and at the epoch's last batch.
        steps_now = counts.micro_batches == accumulate or last_in_epoch
        scaled = loss / accumulate if accumulate > 1 else loss
        if steps_now:
            if self._plain_step:
                self._plain_backward_and_step(scaled)
            else:
                self.manual_backward(scaled)
                optimizer.step()  # clipping runs in `on_before_optimizer_step`, as in Lightning's own loop
            counts.micro_batches = 0
            for scheduler in self._step_schedulers:
                scheduler.step()
        else:
            with self._no_sync():  # DDP: all-reduce once per step, not per accumulated batch
                self.manual_backward(scaled)
        return loss

    def _plain_backward_and_step(self, loss: Tensor) -> None:
        # What `manual_backward` + the wrapped optimizer's `step` do when no callback, precision
        # plugin or strategy adds to them (see `plain_step_possible`), without their dispatch.
        strategy, optimizer = self.trainer.strategy, self._optimizer
        strategy.pre_backward(loss)  # DDP arms its gradient all-reduce here
        loss.backward()
        strategy.post_backward(loss)
        optimizer._on_before_step()  # Lightning counts optimizer steps (`global_step`) through these two hooks
        self.on_before_optimizer_step(optimizer.optimizer)
        optimizer.optimizer.step()
        optimizer._on_after_step()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the (unscaled, accumulated) gradients right before the step, as `trainer.gradient_clip_val` does."""
        clip = self.step_options.gradient_clip_val
        if clip is not None:
            self.clip_gradients(optimizer, clip, self.step_options.gradient_clip_algorithm)

    def on_validation_epoch_start(self) -> None:
        """Start counting the validation batches that hold a NaN or infinite observation."""
        self._val_nonfinite = torch.zeros((), device=self.device)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Loss and accuracy on the held-out split."""
        features, labels = batch
        logits = self(features)
        self.val_acc(logits, labels)
        # On the device, looked at once at the epoch's end. A diverged model is the training guards' to report.
        self._val_nonfinite += ~torch.isfinite(features).all()
        self.log("val/loss", self._loss(logits, labels), sync_dist=True, prog_bar=True)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        """Stop on NaN or infinite validation data; track the best validation accuracy (not in the sanity check)."""
        nonfinite = self.trainer.strategy.reduce(self._val_nonfinite, reduce_op="sum")  # every rank decides alike
        if float(nonfinite) > 0:
            data = self.trainer.datamodule
            where = getattr(data, "path", None) or getattr(getattr(data, "dataset", None), "path", None)
            count = int(nonfinite)
            batches = "1 validation batch holds" if count == 1 else f"{count} validation batches hold"
            raise ConfigError(
                f"{batches} NaN or inf observations: the val split "
                f"{f'of data.path={where} ' if where else ''}changed after prepare (re-run prepare; "
                "data.verify=true checks every shard)"
            )
        if self.trainer.sanity_checking:
            return
        self._validated = True
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
        """Look up, once per run, what the step needs; start the clock (a resumed run skips the epoch start)."""
        self._optimizer = self.optimizers()
        configs = self.trainer.lr_scheduler_configs
        self._step_schedulers = [c.scheduler for c in configs if c.interval == "step" and not _is_plateau(c.scheduler)]
        self._log_every = self.trainer.log_every_n_steps or 1 << 62
        self._batches_per_epoch = self.trainer.num_training_batches
        self._warn_if_an_epoch_logs_no_step_loss()
        self._no_sync = getattr(self.trainer.strategy, "block_backward_sync", contextlib.nullcontext)
        self._max_steps = self.trainer.max_steps
        self._plain_step = plain_step_possible(self.trainer)
        options = self.step_options
        if self._graph_step_wanted() and self._optimizer.optimizer.defaults.get("capturable"):
            if self._captured is None:
                self._captured = CapturedStep(self._forward_loss, self._optimizer.optimizer, self._clip_for_graph())
        elif options.compile and not self._hits_in_graph:
            # Model, loss and accuracy count in one graph; the optimizer already runs one fused kernel.
            self._train_forward = torch.compile(self._forward_loss_hits, mode=options.compile_mode)
            self._hits_in_graph = True
        self._counts.start_epoch()

    def _warn_if_an_epoch_logs_no_step_loss(self) -> None:
        # Lightning's own warning compares its count of groups with the interval, so it is silenced (train.py).
        loader = getattr(self.trainer, "train_dataloader", None)
        if not isinstance(loader, ExecutionBatches) or not self.trainer.loggers or nothing_left_to_train(self.trainer):
            return
        batches = min(len(loader.loader), self._batches_per_epoch * loader.k)  # limit_train_batches counts groups
        if batches < self._log_every:
            rank_zero_warn(
                f"An epoch has {batches} training batches, fewer than trainer.log_every_n_steps={self._log_every}: "
                "lower it to see the step loss within an epoch"
            )

    def _graph_step_wanted(self) -> bool:
        """Whether the step runs as one captured CUDA graph: `trainer.compile_mode=reduce-overhead` on one GPU.

        Accumulation needs two kinds of step and a gradient scaler (16-mixed) syncs with the host:
        both keep torch.compile's own CUDA graphs of the forward and backward instead.
        """
        options = self.step_options
        return (
            options.compile
            and options.compile_mode == "reduce-overhead"
            and self.device.type == "cuda"
            and isinstance(self.trainer.strategy, SingleDeviceStrategy)
            and options.accumulate_grad_batches == 1
            and getattr(self.trainer.precision_plugin, "scaler", None) is None
        )

    def _clip_for_graph(self) -> Callable[[], None] | None:
        clip = self.step_options.gradient_clip_val
        if clip is None:
            return None
        algorithm = self.step_options.gradient_clip_algorithm
        return lambda: self.clip_gradients(self._optimizer.optimizer, clip, algorithm)

    def on_train_epoch_start(self) -> None:
        """Start the epoch's throughput clock."""
        self._counts.start_epoch()
        self._batches_per_epoch = self.trainer.num_training_batches

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Stop the clock at the epoch's last training batch, before validation runs."""
        if batch_idx + 1 >= self.trainer.num_training_batches:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # once per epoch: count work queued, not launched
            self._counts.stop_clock()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the epoch's accuracy count, loss sum and pending plateau value, so a resumed epoch continues."""
        counts = self._counts
        correct, seen, loss_sum = counts.correct(), counts.seen, counts.loss_sum()
        world = self.trainer.world_size
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every rank restores the one count the checkpoint holds: the ranks' mean. Each saw as many samples
            # (a tensor-parallel group's ranks the same ones), so the resumed epoch's means stay exact.
            totals = torch.tensor([correct, seen, loss_sum], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(totals)
            correct, seen, loss_sum = (totals / world).tolist()
        checkpoint["train_accuracy_count"] = {"correct": correct, "seen": round(seen), "loss_sum": loss_sum}
        # Written after a validation but before the epoch's end: the resumed epoch end still owes the
        # plateau schedule that validation's loss (Lightning does not restore logged metrics).
        watched = self._plateau_value() if self._validated else None
        checkpoint["pending_plateau_value"] = watched

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the epoch's accuracy count and loss sum, and the validation its end owes the plateau schedule."""
        count = checkpoint.get("train_accuracy_count")
        if count and count["seen"]:
            self._counts.restore(count["correct"], count["seen"], count.get("loss_sum"))
        pending = checkpoint.get("pending_plateau_value")
        self._validated = pending is not None
        self._restored_plateau_value = pending

    @property
    def samples_per_second(self) -> float:
        """Global training samples per second over the current epoch's steps (0 before any)."""
        rate = self._counts.samples_per_second()
        # Ranks of a tensor-parallel group share their samples: count data-parallel ranks only.
        return rate * data_parallel_coords(self.trainer)[1] if rate else 0.0

    def on_train_epoch_end(self) -> None:
        """Log the epoch's training accuracy and mean loss (synced across ranks) and throughput."""
        accuracy, loss = self._counts.accuracy(), self._counts.mean_loss()
        # Every data-parallel rank saw as many samples, so the mean of their means is exact.
        if accuracy is not None:
            self.log("train/acc", accuracy, sync_dist=True)
        if loss is not None:  # Lightning's name for an epoch's aggregate of a step metric. Not in the progress
            # bar: the epoch's validation line comes before the epoch's end and would show the previous epoch's.
            self.log("train/loss_epoch", loss, sync_dist=True)
        self._counts.reset_accuracy()
        if self.samples_per_second:
            self.log("perf/samples_per_s", self.samples_per_second, sync_dist=True)
        self._step_epoch_schedulers()

    def _step_epoch_schedulers(self) -> None:
        # Per-epoch schedules step at the epoch's end; ReduceLROnPlateau only after a validation,
        # on its val/loss (one host sync per epoch).
        for config in self.trainer.lr_scheduler_configs:
            if not _is_plateau(config.scheduler):
                if config.interval == "epoch":
                    config.scheduler.step()
            elif self._validated and (watched := self._plateau_value()) is not None:
                config.scheduler.step(watched)
        self._validated, self._restored_plateau_value = False, None

    def _plateau_value(self) -> float | None:
        # This run's last validation, else the one a resumed checkpoint was written after.
        value = self.trainer.callback_metrics.get(PLATEAU_MONITOR)
        return float(value) if value is not None else self._restored_plateau_value

    def configure_optimizers(self) -> Any:
        """Build the optimizer over the placed (possibly wrapped or sharded) model's parameters."""
        model = self.trainer.model
        fused = fused_allowed(self.step_options, self.trainer.precision_plugin)
        factory = with_fast_kernel(self.optimizer_factory, model, fused)
        capturable = self._graph_step_wanted() and accepts_capturable(factory)
        if capturable:
            factory = functools.partial(factory, capturable=True)
        optimizer = build_optimizer(factory, model)
        if capturable:
            make_capturable(optimizer, self.device)
        if self.scheduler_factory is None:
            return optimizer
        trainer = self.trainer
        total_steps = trainer.estimated_stepping_batches  # also sets up the training data, which counts batches
        loader = getattr(trainer, "train_dataloader", None)
        grouped = isinstance(loader, ExecutionBatches)
        if self.step_options.accumulate_grad_batches > 1 or grouped:
            batches = trainer.num_training_batches
            if grouped:  # Lightning counts groups of batches: count the batches
                batches = min(len(loader.loader), batches * loader.k)
            total_steps = estimated_optimizer_steps(
                batches, self.step_options.accumulate_grad_batches, trainer.max_epochs, trainer.max_steps
            )
        scheduler = build_scheduler(self.scheduler_factory, optimizer, total_steps)
        # The module steps schedules itself (`training_step`, `_step_epoch_schedulers`); Lightning keeps
        # `interval` for its LR monitor. ReduceLROnPlateau watches PLATEAU_MONITOR.
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval},
        }


def _is_plateau(scheduler: Any) -> bool:
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
