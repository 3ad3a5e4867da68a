"""The manually optimised training step: accumulation, clipping, schedules and torch.compile from config."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from omegaconf import OmegaConf

from agent_lightning.errors import ConfigError
from agent_lightning.step import check_step_options, estimated_optimizer_steps, step_options
from agent_lightning.train import train

# One short epoch, no validation, checkpoints or loggers: only the optimisation is under test.
QUIET = ["data.train_size=4096", "callbacks=none", "logger=none", "test=false", "trainer.max_epochs=1"]


class FinalState(Callback):
    """Keeps the first and trained weights, the last learning rate and the optimizer steps taken."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}

    def on_train_end(self, trainer, pl_module) -> None:
        self.weights = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}
        self.lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.steps = trainer.global_step
        self.kernel = {k: trainer.optimizers[0].defaults.get(k) for k in ("fused", "foreach")}


def _trained(compose_cfg, tmp_path: Path, name: str, *overrides: str) -> FinalState:
    state = FinalState()
    train(compose_cfg(*QUIET, *overrides, output_dir=tmp_path / name), extra_callbacks=[state])
    return state


def test_accumulating_two_half_batches_equals_one_whole_batch(compose_cfg, tmp_path: Path) -> None:
    # Batches are consecutive slices of the epoch's permutation: two of 128 hold the samples of one of 256.
    whole = _trained(compose_cfg, tmp_path, "whole", "data.batch_size=256", "trainer.deterministic=true")
    halves = _trained(
        compose_cfg,
        tmp_path,
        "halves",
        "data.batch_size=128",
        "trainer.accumulate_grad_batches=2",
        "trainer.deterministic=true",
    )
    assert whole.steps == halves.steps == 16
    for key, value in whole.weights.items():
        assert torch.allclose(value, halves.weights[key], atol=2e-5), key
    assert whole.kernel["fused"] is True  # the optimizer runs its one-kernel implementation


def test_value_clipping_bounds_each_sgd_update(compose_cfg, tmp_path: Path) -> None:
    # Plain SGD with every gradient element clipped to 1e-3 moves each weight by at most lr * 1e-3 per step.
    sgd = ["optimizer=sgd", "optimizer.momentum=0.0", "optimizer.lr=0.5", "trainer.max_steps=4"]
    clip = ["trainer.gradient_clip_val=1e-3", "trainer.gradient_clip_algorithm=value"]
    clipped_run = _trained(compose_cfg, tmp_path, "clipped", *sgd, *clip)
    start, clipped = clipped_run.start, clipped_run.weights
    free = _trained(compose_cfg, tmp_path, "free", *sgd).weights  # same seed: same start
    largest = max((clipped[k] - start[k]).abs().max().item() for k in start)
    assert 0 < largest <= 4 * 0.5 * 1e-3 + 1e-7
    assert max((free[k] - start[k]).abs().max().item() for k in start) > 10 * largest


def test_clipping_under_bf16_mixed_precision_trains_with_the_foreach_kernel(compose_cfg, tmp_path: Path) -> None:
    # Lightning's mixed-precision plugin refuses to clip a fused optimizer's gradients (it unscales them itself).
    run = _trained(compose_cfg, tmp_path, "bf16", "trainer.precision=bf16-mixed", "trainer.gradient_clip_val=1e-3")
    assert run.steps == 16 and run.kernel == {"fused": None, "foreach": True}
    trained = {k: w for k, w in run.weights.items() if k.endswith(("weight", "bias"))}  # not the normalizer's
    assert trained and all(torch.isfinite(w).all() and not torch.equal(w, run.start[k]) for k, w in trained.items())


def test_epoch_and_plateau_schedules_step_once_per_epoch(compose_cfg, tmp_path: Path) -> None:
    two_epochs = ["trainer.max_epochs=2", "data.val_size=512"]
    step = _trained(
        compose_cfg, tmp_path, "step", *two_epochs, "scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.5"
    )
    assert step.lr == pytest.approx(1e-3 * 0.25)
    # mode=max on a falling val/loss: no epoch improves on the first, so with patience 0 the LR halves
    # after the second validation (and the first only sets the best).
    plateau = ["scheduler=plateau", "scheduler.mode=max", "scheduler.patience=0", "+scheduler.threshold=0"]
    assert _trained(compose_cfg, tmp_path, "plateau", *two_epochs, *plateau).lr == pytest.approx(5e-4)
    # Without validation there is no val/loss to watch: the LR stays.
    unwatched = _trained(compose_cfg, tmp_path, "unwatched", *two_epochs, *plateau, "trainer.limit_val_batches=0")
    assert unwatched.lr == pytest.approx(1e-3)


@pytest.mark.timeout(240)
def test_compiled_step_learns(compose_cfg, tmp_path: Path) -> None:
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    metrics = train(compose_cfg("trainer.compile=true", *QUIET, "data.val_size=1024"))
    assert counters["stats"]["unique_graphs"] > graphs  # the step really ran through torch.compile
    assert metrics["val/acc"] > 0.4 and metrics["val/loss"] < 2.0  # chance: 0.1 and ln(10) = 2.3


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0"),
        ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1"),
        ("trainer.gradient_clip_algorithm=max", "trainer.gradient_clip_algorithm='max'"),
        ("trainer.compile_mode=fast", "trainer.compile_mode='fast'"),
        ("trainer.compile=yes", "trainer.compile='yes'"),
        ("trainer.steps_per_execution=null", "trainer.steps_per_execution=None"),
    ],
)
def test_bad_step_options_name_the_key(compose_cfg, override: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("(", r"\(")):
        step_options(compose_cfg(override).trainer)


def test_compile_with_a_sharded_strategy_is_refused_up_front(compose_cfg) -> None:
    with pytest.raises(ConfigError, match=r"trainer.compile=true is not supported with strategy=fsdp"):
        check_step_options(compose_cfg("trainer.compile=true", "strategy=fsdp"))
    assert check_step_options(compose_cfg("trainer.compile=true", "strategy=ddp")).compile


def test_step_options_never_reach_lightnings_trainer(compose_cfg) -> None:
    from agent_lightning.step import STEP_KEYS, lightning_trainer_config

    cfg = compose_cfg("trainer.accumulate_grad_batches=4", "trainer.gradient_clip_val=1.0")
    passed = OmegaConf.to_container(lightning_trainer_config(cfg.trainer))
    assert not set(STEP_KEYS) & set(passed) and passed["max_epochs"] == 2


def test_optimizer_steps_count_the_last_partial_accumulation() -> None:
    assert estimated_optimizer_steps(10, 4, max_epochs=3, max_steps=-1) == 9
    assert estimated_optimizer_steps(10, 4, max_epochs=3, max_steps=5) == 5


def test_auto_strategy_runs_one_process_on_a_cpu_host(compose_cfg) -> None:
    from agent_lightning.train import resolve_auto_strategy

    cfg = compose_cfg("strategy=auto", "devices=2", "trainer.accelerator=cpu")
    resolve_auto_strategy(cfg)
    assert cfg.strategy.name == "single" and cfg.devices == 1  # not two DDP ranks sharing the cores
    explicit = compose_cfg("strategy=ddp", "devices=2", "trainer.accelerator=cpu")
    resolve_auto_strategy(explicit)
    assert explicit.strategy.name == "ddp" and explicit.devices == 2  # an explicit choice stands
