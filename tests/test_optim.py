"""Optimisers and LR schedules: built from config, stepping as documented."""

import math
from itertools import pairwise
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Callback

from agent_lightning.fit import build_module
from agent_lightning.model import AgentMLP
from agent_lightning.optim import build_optimizer, parameter_groups
from agent_lightning.train import train

TOTAL_STEPS = 100


def configured(cfg) -> tuple[torch.optim.Optimizer, dict | None]:
    module = build_module(cfg)
    module.trainer = SimpleNamespace(
        model=module,
        estimated_stepping_batches=TOTAL_STEPS,
        num_training_batches=TOTAL_STEPS,
        train_dataloader=None,
        max_epochs=1,
        max_steps=-1,
        precision_plugin=None,  # full precision
    )
    result = module.configure_optimizers()
    if isinstance(result, dict):
        return result["optimizer"], result["lr_scheduler"]
    return result, None


def lrs(optimizer: torch.optim.Optimizer, scheduler, steps: int) -> list[float]:
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


@pytest.mark.parametrize(("name", "cls"), [("sgd", "SGD"), ("adam", "Adam"), ("adamw", "AdamW"), ("lamb", "Lamb")])
def test_each_optimizer_builds_and_learns(compose_cfg, name: str, cls: str) -> None:
    metrics = train(compose_cfg(f"optimizer={name}", "callbacks=none", "logger=none", "test=false"))
    optimizer, _ = configured(compose_cfg(f"optimizer={name}"))
    assert type(optimizer).__name__ == cls
    assert metrics["val/acc"] > 0.5  # chance is 0.1


def test_sgd_momentum_and_nesterov_come_from_config(compose_cfg) -> None:
    optimizer, _ = configured(compose_cfg("optimizer=sgd", "optimizer.momentum=0.8", "optimizer.nesterov=true"))
    assert optimizer.param_groups[0]["momentum"] == 0.8 and optimizer.param_groups[0]["nesterov"] is True


def test_weight_decay_applies_to_weights_only() -> None:
    model = AgentMLP(input_dim=4, hidden_dim=8, num_layers=2, output_dim=3, norm="layernorm")
    decay, no_decay = parameter_groups(model, weight_decay=0.5)
    assert all(p.ndim == 2 for p in decay["params"]) and len(decay["params"]) == 3
    assert all(p.ndim == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0

    # Behaviour: with zero gradients AdamW only decays; biases and norm scales stay exactly put.
    from functools import partial

    optimizer = build_optimizer(partial(torch.optim.AdamW, lr=0.1, weight_decay=0.5), model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, param in model.named_parameters():
        if param.ndim == 1:
            assert torch.equal(param, before[name]), name
        else:
            assert torch.allclose(param, before[name] * (1 - 0.1 * 0.5)), name


def test_warmup_cosine_peaks_at_the_last_warmup_step_and_ends_at_the_minimum(compose_cfg) -> None:
    optimizer, config = configured(
        compose_cfg("scheduler=warmup_cosine", "scheduler.warmup_steps=10", "scheduler.min_lr_ratio=0.1")
    )
    assert config["interval"] == "step"
    seen = lrs(optimizer, config["scheduler"], TOTAL_STEPS)
    peak = 1e-3
    assert seen[0] == pytest.approx(peak / 10)
    assert all(a < b for a, b in pairwise(seen[:10]))  # rising through warm-up
    assert seen[9] == pytest.approx(peak) and max(seen) == pytest.approx(peak)
    assert seen[10] < peak
    assert all(a >= b for a, b in pairwise(seen[9:]))  # then only falling
    assert seen[-1] == pytest.approx(0.1 * peak)  # the minimum, at the last step
    assert seen[54] == pytest.approx(0.1 * peak + 0.9 * peak * 0.5 * (1 + math.cos(math.pi * 45 / 90)))


def test_epoch_schedules_step_as_documented(compose_cfg) -> None:
    optimizer, config = configured(compose_cfg("scheduler=cosine", "trainer.max_epochs=4"))
    assert config["interval"] == "epoch"
    assert lrs(optimizer, config["scheduler"], 5)[-1] == pytest.approx(0.0, abs=1e-12)  # minimum after max_epochs

    optimizer, config = configured(compose_cfg("scheduler=step", "scheduler.step_size=2", "scheduler.gamma=0.5"))
    assert lrs(optimizer, config["scheduler"], 5) == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4])

    optimizer, config = configured(compose_cfg("scheduler=exponential", "scheduler.gamma=0.9"))
    assert lrs(optimizer, config["scheduler"], 3) == pytest.approx([1e-3, 9e-4, 8.1e-4])


def test_onecycle_rises_to_max_lr_then_anneals_over_the_run(compose_cfg) -> None:
    optimizer, config = configured(compose_cfg("scheduler=onecycle", "optimizer.lr=0.01", "scheduler.pct_start=0.3"))
    assert config["interval"] == "step"
    seen = lrs(optimizer, config["scheduler"], TOTAL_STEPS)
    assert max(seen) == pytest.approx(0.01) and 28 <= seen.index(max(seen)) <= 30
    assert seen[-1] < seen[0] < 0.01


def test_plateau_halves_the_lr_when_val_loss_stalls(compose_cfg) -> None:
    optimizer, config = configured(compose_cfg("scheduler=plateau", "scheduler.patience=1"))
    scheduler = config["scheduler"]
    for loss in (1.0, 0.9, 0.9, 0.9):
        scheduler.step(loss)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)


def test_no_scheduler_keeps_the_lr(compose_cfg) -> None:
    _, config = configured(compose_cfg("scheduler=none"))
    assert config is None


def test_learning_rate_is_logged_per_step(compose_cfg, tmp_path) -> None:
    cfg = compose_cfg("scheduler=warmup_cosine", "scheduler.warmup_steps=20", "trainer.log_every_n_steps=1")
    metrics = train(cfg)
    header, *rows = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()
    column = header.split(",").index("lr-Adam")  # one parameter group: nothing decays
    logged = [float(r.split(",")[column]) for r in rows if r.split(",")[column]]
    assert logged[19] == pytest.approx(1e-3) and logged[0] == pytest.approx(5e-5)
    assert metrics["val/acc"] > 0.5


class InitialWeights(Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        self.trainer = trainer
        self.state = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}


def test_gradient_accumulation_and_clipping_come_from_the_trainer(compose_cfg, tmp_path) -> None:
    def weights_moved(name: str, *overrides: str) -> tuple[float, int]:
        cfg = compose_cfg("optimizer=sgd", "test=false", "trainer.max_epochs=1", *overrides, output_dir=tmp_path / name)
        initial = InitialWeights()
        metrics = train(cfg, extra_callbacks=[initial])
        state = torch.load(metrics["run_dir"] + "/checkpoints/last.ckpt", weights_only=True)
        end = {k.removeprefix("model."): v for k, v in state["state_dict"].items() if k.startswith("model.")}
        moved = sum((end[k] - v).norm().item() for k, v in initial.state.items())
        return moved, state["global_step"]

    free, steps = weights_moved("free")
    clipped, _ = weights_moved("clip", "trainer.gradient_clip_val=1e-4")
    assert clipped < 0.05 * free
    _, accumulated = weights_moved("accumulate", "trainer.accumulate_grad_batches=2")
    assert steps == 64 and accumulated == 32


def test_early_stopping_ends_the_run_when_val_acc_stalls(compose_cfg) -> None:
    # No epoch can beat the first by half a point of accuracy: stop after `patience` more validations.
    cfg = compose_cfg(
        "trainer.max_epochs=6",
        "callbacks.early_stopping.min_delta=0.5",
        "callbacks.early_stopping.patience=2",
        "test=false",
    )
    probe = InitialWeights()  # keeps a handle on the trainer
    train(cfg, extra_callbacks=[probe])
    assert probe.trainer.current_epoch == 3 and probe.trainer.should_stop


def test_default_callbacks_work_without_validation(compose_cfg) -> None:
    # Early stopping watches val/acc: with validation off it must wait, not fail the run.
    metrics = train(compose_cfg("trainer.limit_val_batches=0", "trainer.max_epochs=2", "test=false"))
    assert "val/acc" not in metrics and metrics["train/acc"] > 0.5


def test_a_schedule_planned_over_the_run_needs_a_known_length() -> None:
    import functools

    from agent_lightning.errors import ConfigError
    from agent_lightning.optim import build_scheduler

    optimizer = torch.optim.SGD(AgentMLP(4, 8, 1, 3).parameters(), lr=0.1)
    onecycle = functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1, total_steps=None)
    assert build_scheduler(onecycle, optimizer, 12).total_steps == 12
    with pytest.raises(ConfigError, match=r"scheduler OneCycleLR plans its steps .* set trainer.max_steps"):
        build_scheduler(onecycle, optimizer, math.inf)  # data=stream without max_steps: no length


def test_a_onecycle_run_resumes_only_at_its_planned_length(compose_cfg, tmp_path) -> None:
    from agent_lightning.errors import ConfigError
    from agent_lightning.validation import validate

    first = ["scheduler=onecycle", "data.train_size=2048", "trainer.max_epochs=1", "test=false"]
    train(compose_cfg(*first, output_dir=tmp_path / "run"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match=r"planned over 8 optimizer steps \(trainer.max_epochs=1\), which cannot"):
        validate(compose_cfg(*first[:-2], "trainer.max_epochs=2", f"ckpt_path={last}", output_dir=tmp_path / "run"))
    validate(compose_cfg(*first, f"ckpt_path={last}", output_dir=tmp_path / "run"))  # its own length: fine
