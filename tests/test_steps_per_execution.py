"""Several optimizer steps per Lightning step (`trainer.steps_per_execution`), and the whole-step CUDA graph."""

import csv
import logging
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback

from agent_lightning.errors import ConfigError
from agent_lightning.step import step_options
from agent_lightning.step_groups import AUTO_STEPS, resolve_steps_per_execution
from agent_lightning.train import train

from .helpers import CrashAtStep, CrashError
from .test_step import QUIET, FinalState

SAME_RUN = [*QUIET, "trainer.deterministic=true", "data.train_size=4096"]  # 16 batches of 256


def _trained(compose_cfg, tmp_path: Path, name: str, *overrides: str) -> FinalState:
    state = FinalState()
    train(compose_cfg(*SAME_RUN, *overrides, output_dir=tmp_path / name), extra_callbacks=[state])
    return state


def _assert_same_weights(one: FinalState, other: FinalState, atol: float = 1e-6) -> None:
    for key, value in one.weights.items():
        assert torch.allclose(value, other.weights[key], atol=atol), key


def test_grouped_batches_take_the_same_steps_as_one_at_a_time(compose_cfg, tmp_path: Path) -> None:
    # A per-step schedule and clipping run inside the group exactly as between Lightning steps.
    options = ["scheduler=warmup_cosine", "scheduler.warmup_steps=5", "trainer.gradient_clip_val=0.5"]
    single = _trained(compose_cfg, tmp_path, "single", *options)
    grouped = _trained(compose_cfg, tmp_path, "grouped", *options, "trainer.steps_per_execution=5")  # 5+5+5+1
    assert single.steps == grouped.steps == 16
    assert grouped.lr == pytest.approx(single.lr)
    _assert_same_weights(single, grouped)


def test_a_group_stops_at_max_steps(compose_cfg, tmp_path: Path) -> None:
    grouped = _trained(compose_cfg, tmp_path, "grouped", "trainer.max_steps=7", "trainer.steps_per_execution=4")
    single = _trained(compose_cfg, tmp_path, "single", "trainer.max_steps=7")
    assert grouped.steps == single.steps == 7
    _assert_same_weights(single, grouped)


class ValidatedAt(Callback):
    """The optimizer step at each validation."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        self.steps.append(trainer.global_step)


def test_an_explicit_group_size_keeps_batch_counts_in_batches(compose_cfg, tmp_path: Path) -> None:
    # limit_train_batches and val_check_interval count batches, whatever the group size.
    counts = ["trainer.limit_train_batches=8", "trainer.val_check_interval=4", "callbacks=default"]
    runs = {}
    for name, grouping in (("single", "1"), ("grouped", "4")):
        state, validated = FinalState(), ValidatedAt()
        cfg = compose_cfg(*SAME_RUN, *counts, f"trainer.steps_per_execution={grouping}", output_dir=tmp_path / name)
        train(cfg, extra_callbacks=[state, validated])
        runs[name] = (state, validated.steps)
    assert runs["single"][0].steps == runs["grouped"][0].steps == 8
    assert runs["single"][1] == runs["grouped"][1] == [4, 8]
    _assert_same_weights(runs["single"][0], runs["grouped"][0])
    with pytest.raises(ConfigError, match=r"trainer.val_check_interval=6 is not a multiple of 4: .*: use 4 or 8, or"):
        train(compose_cfg(*SAME_RUN, "trainer.val_check_interval=6", "trainer.steps_per_execution=4"))
    # A resume keeps its checkpoint's groups, also under auto: the counts must fit them too.
    last = tmp_path / "grouped" / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match=r"limit_train_batches=10 is not a multiple of 4: ckpt_path=.* use 8 or 12$"):
        train(compose_cfg(*SAME_RUN, "trainer.limit_train_batches=10", "trainer.max_epochs=2", f"ckpt_path={last}"))


def test_grouped_accumulation_equals_ungrouped(compose_cfg, tmp_path: Path) -> None:
    accumulate = ["trainer.accumulate_grad_batches=3"]  # 16 batches: 5 steps of 3 and the epoch's last of 1
    single = _trained(compose_cfg, tmp_path, "single", *accumulate)
    grouped = _trained(compose_cfg, tmp_path, "grouped", *accumulate, "trainer.steps_per_execution=4")
    assert single.steps == grouped.steps == 6
    _assert_same_weights(single, grouped)


def test_a_grouped_run_resumed_mid_epoch_matches_an_uninterrupted_one(compose_cfg, tmp_path: Path) -> None:
    common = [
        *SAME_RUN,
        "trainer.max_epochs=2",
        "trainer.steps_per_execution=4",
        "callbacks=default",
        "callbacks.last_checkpoint.every_n_train_steps=6",  # crossed, not landed on, by groups of 4
        "trainer.limit_val_batches=0",
    ]
    whole = FinalState()
    train(compose_cfg(*common, output_dir=tmp_path / "whole"), extra_callbacks=[whole])
    with pytest.raises(CrashError):  # after 24 of 32 steps: half-way through the second epoch
        train(compose_cfg(*common, output_dir=tmp_path / "cut"), extra_callbacks=[CrashAtStep(24)])
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 24
    resumed = FinalState()
    train(compose_cfg(*common, f"ckpt_path={last}", output_dir=tmp_path / "cut"), extra_callbacks=[resumed])
    assert resumed.steps == whole.steps == 32
    _assert_same_weights(whole, resumed)


def test_steps_per_execution_must_be_a_whole_number(compose_cfg) -> None:
    with pytest.raises(ConfigError, match=r"trainer.steps_per_execution=0 is invalid: use a whole number >= 1"):
        step_options(compose_cfg("trainer.steps_per_execution=0").trainer)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_captured_step_takes_the_same_steps_as_eager_ones() -> None:
    from torch.nn import functional as F

    from agent_lightning.model import AgentMLP
    from agent_lightning.step_graph import WARMUP_STEPS, CapturedStep, make_capturable

    torch.manual_seed(0)
    eager_model = AgentMLP(16, 32, 2, 4).cuda()
    graph_model = AgentMLP(16, 32, 2, 4).cuda()
    graph_model.load_state_dict(eager_model.state_dict())
    eager_opt = torch.optim.Adam(eager_model.parameters(), lr=1e-2, fused=True)
    graph_opt = torch.optim.Adam(graph_model.parameters(), lr=1e-2, fused=True, capturable=True)
    make_capturable(graph_opt, torch.device("cuda"))
    schedule = torch.optim.lr_scheduler.StepLR(graph_opt, step_size=4, gamma=0.5)
    eager_schedule = torch.optim.lr_scheduler.StepLR(eager_opt, step_size=4, gamma=0.5)

    def forward_loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = graph_model(x)
        return logits, F.cross_entropy(logits, y)

    captured = CapturedStep(forward_loss, graph_opt)
    # Warm-up, capture, replays, a smaller batch off the graph, then replays again.
    sizes = [64] * (WARMUP_STEPS + 3) + [24] + [64] * 3
    for size in sizes:
        x, y = torch.randn(size, 16, device="cuda"), torch.randint(0, 4, (size,), device="cuda")
        loss, hits = captured.step(x, y)
        eager_logits = eager_model(x)
        eager_loss = F.cross_entropy(eager_logits, y)
        eager_opt.zero_grad(set_to_none=True)
        eager_loss.backward()
        eager_opt.step()
        assert float(loss) == pytest.approx(eager_loss.item(), abs=1e-4)
        assert int(hits) == int((eager_logits.argmax(-1) == y).sum())
        schedule.step()
        eager_schedule.step()
    assert captured.graph is not None
    for (name, theirs), mine in zip(eager_model.state_dict().items(), graph_model.state_dict().values(), strict=True):
        assert torch.allclose(theirs, mine, atol=1e-4), name


@needs_cuda
def test_cuda_graph_step_trains_like_the_eager_step(compose_cfg, tmp_path: Path) -> None:
    cuda = ["trainer.accelerator=gpu", "scheduler=warmup_cosine", "scheduler.warmup_steps=5"]
    eager = _trained(compose_cfg, tmp_path, "eager", *cuda)
    graphed = _trained(
        compose_cfg,
        tmp_path,
        "graph",
        *cuda,
        "trainer.compile=true",
        "trainer.compile_mode=reduce-overhead",
        "trainer.steps_per_execution=4",
    )
    assert eager.steps == graphed.steps == 16
    assert float(graphed.lr) == pytest.approx(float(eager.lr), rel=1e-5)  # the schedule reached the captured step
    _assert_same_weights(eager, graphed, atol=1e-4)


def test_grouped_steps_with_a_stream_are_refused_up_front(compose_cfg) -> None:
    from agent_lightning.step import check_step_options

    with pytest.raises(ConfigError, match=r"trainer.steps_per_execution=4 is not supported with data=stream"):
        cfg = compose_cfg("data=stream", "data.path=/nonexistent", "trainer.steps_per_execution=4", fast=False)
        check_step_options(cfg)


def test_step_intervals_fire_when_a_group_crosses_a_multiple() -> None:
    from agent_lightning.callbacks import crossed_multiple

    assert crossed_multiple(48, 56, 50) and crossed_multiple(49, 50, 50)  # a group of 8 passes step 50
    assert not crossed_multiple(50, 56, 50) and not crossed_multiple(0, 1, 50) and not crossed_multiple(0, 9, 0)


class GroupSize(Callback):
    """Records the batches per Lightning step the run chose (`trainer.steps_per_execution=auto`)."""

    handles_grouped_steps = True

    def on_train_start(self, trainer, pl_module) -> None:
        self.steps_per_execution = pl_module.step_options.steps_per_execution


class CountsLightningSteps(Callback):
    """A user's per-batch callback: it sees Lightning's steps, so `auto` must not group them."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pass


def _logged(run_dir: Path) -> dict[str, list[tuple[int, str]]]:
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    columns = {c for row in rows for c in row if row[c] and c not in ("step", "epoch")}
    return {c: [(int(row["step"]), row[c]) for row in rows if row[c]] for c in sorted(columns)}


def test_auto_groups_a_default_run_and_logs_every_batch_step_as_one_at_a_time(
    compose_cfg, tmp_path: Path, caplog
) -> None:
    # The default callbacks and CSV logger, a per-step schedule: 64 batches per epoch, 2 epochs, a log every 50.
    common = ["trainer.deterministic=true", "scheduler=warmup_cosine", "logger=csv", "test=false", "callbacks=default"]
    single, grouped, size = FinalState(), FinalState(), GroupSize()
    one = ["trainer.steps_per_execution=1"]
    train(compose_cfg(*common, *one, output_dir=tmp_path / "single"), extra_callbacks=[single])
    lines = ["progress=lines", "trainer.enable_progress_bar=true"]
    with caplog.at_level(logging.INFO, logger="agent_lightning"):
        train(compose_cfg(*common, *lines, output_dir=tmp_path / "auto"), extra_callbacks=[grouped, size])
    assert size.steps_per_execution == AUTO_STEPS
    assert single.steps == grouped.steps == 128
    _assert_same_weights(single, grouped)
    one_at_a_time, auto = _logged(tmp_path / "single"), _logged(tmp_path / "auto")
    # The step loss of the same batches at the same steps; epoch metrics at the same steps.
    assert auto["train/loss"] == one_at_a_time["train/loss"]
    assert [step for step, _ in auto["train/loss"]] == [49, 99]
    assert [step for step, _ in auto["val/acc"]] == [step for step, _ in one_at_a_time["val/acc"]] == [63, 127]
    # The learning rate from the group holding the due batch, at that group's first step.
    lr = next(c for c in auto if c.startswith("lr-"))
    assert [step for step, _ in one_at_a_time[lr]] == [49, 99]
    assert [step for step, _ in auto[lr]] == [32, 96]
    assert "(64/64 batches" in caplog.text  # the progress lines count batches, not groups


def test_auto_groups_no_more_batches_than_nothing_counting_lightning_steps_allows(compose_cfg) -> None:
    from agent_lightning.fit import build_callbacks

    def resolved(*overrides: str, extra: tuple = (), fast: bool = True) -> int:
        cfg = compose_cfg("callbacks=default", *overrides, fast=fast)
        return resolve_steps_per_execution(cfg, build_callbacks(cfg, extra))

    assert resolved() == AUTO_STEPS
    assert resolved("trainer.steps_per_execution=3") == 3  # an explicit choice stands
    assert resolved(extra=(CountsLightningSteps(),)) == 1
    assert resolved("trainer.limit_train_batches=10") == 1
    assert resolved("trainer.val_check_interval=20") == 1
    assert resolved("trainer.fast_dev_run=true") == 1
    assert resolved("trainer.max_steps=100") == 1
    assert resolved("trainer.log_every_n_steps=1") == 1
    # Never more batches in a group than the shortest interval anything acts on.
    assert resolved("trainer.log_every_n_steps=10") == 10
    assert resolved("callbacks.divergence.check_every_n_steps=20") == 20
    assert resolved("+callbacks.best_checkpoint.every_n_train_steps=100") == 1
    assert resolved("data=stream", "data.path=/nonexistent", fast=False) == 1


def test_auto_groups_a_slow_step_less_or_not_at_all(compose_cfg, caplog) -> None:
    # A group is acted on as a whole (a signal's stop waits for its end): auto keeps it to ~0.25 s of compute.
    from agent_lightning.fit import build_callbacks

    def resolved(*overrides: str, world: int = 1) -> int:
        cfg = compose_cfg("callbacks=default", "data.batch_size=512", *overrides)
        return resolve_steps_per_execution(cfg, build_callbacks(cfg), world)

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with caplog.at_level(logging.INFO, logger="agent_lightning"):
            assert resolved("model=mlp_large") == 1  # ~0.3 s a step on 2 CPU threads
            assert "batch 512 takes ~330 ms on 2 CPU threads by its size; groups are kept to ~0.25 s" in caplog.text
            wide = resolved("model=mlp_wide")  # ~15 ms a step
            assert 1 < wide < AUTO_STEPS
            assert resolved("model=mlp_wide", "trainer.log_every_n_steps=5") == 5  # the shorter of the two
            assert resolved() == AUTO_STEPS  # ~3 ms a step
            torch.set_num_threads(1)
            assert resolved("model=mlp_wide") < wide  # one thread: fewer steps in ~0.25 s
            assert resolved("model=mlp_wide", world=2) == wide  # two ranks of one thread share the batch
    finally:
        torch.set_num_threads(threads)


def test_a_resumed_run_keeps_the_grouping_of_its_checkpoint(compose_cfg, tmp_path: Path) -> None:
    from agent_lightning.fit import build_callbacks

    small = ["data.train_size=4096", "logger=none", "test=false"]
    # Written one batch per Lightning step (a per-batch callback made auto choose 1).
    train(compose_cfg(*small, "trainer.max_epochs=1", output_dir=tmp_path / "first"), [CountsLightningSteps()])
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    cfg = compose_cfg(*small, "trainer.max_epochs=2", f"ckpt_path={last}")
    assert resolve_steps_per_execution(cfg, build_callbacks(cfg)) == 1
    with pytest.raises(ConfigError, match=r"written with trainer.steps_per_execution=1 .*: resume with"):
        train(compose_cfg(*small, "trainer.steps_per_execution=4", f"ckpt_path={last}"))


def test_groups_of_one_batch_at_epoch_ends_log_like_the_others(compose_cfg, tmp_path: Path) -> None:
    # 17 batches per epoch in groups of 8: every epoch ends in a group of one; batch 135 (due) is one.
    run = tmp_path / "run"
    cfg = compose_cfg(
        "data.train_size=4352", "trainer.max_epochs=8", "trainer.log_every_n_steps=8", "logger=csv", "test=false"
    )
    train(cfg)
    steps = [step for step, _ in _logged(run)["train/loss"]]
    assert steps == list(range(7, 136, 8))
    hparams = yaml.safe_load((run / "csv" / "hparams.yaml").read_text())
    assert hparams["trainer.steps_per_execution"] == 8  # the trackers get the resolved number (a log every 8)


def test_the_divergence_baseline_is_the_first_step_s_loss_of_the_first_group(compose_cfg) -> None:
    from agent_lightning.callbacks import DivergenceGuard

    guard = DivergenceGuard(check_every_n_steps=50)
    train(compose_cfg(*QUIET), extra_callbacks=[guard])  # 16 steps in 2 groups
    assert len(guard.history) == 1 and guard.history[0] > 2.0  # the untrained model's loss (ln 10 = 2.3), at step 1


def test_the_epoch_loss_is_the_mean_of_its_steps_losses(compose_cfg, tmp_path: Path) -> None:
    # 5 batches of 256 in groups of 3 (3 + 2), every step logged; a smaller last batch: test_epoch_counts.py.
    sizes = [256] * 5
    options = ["data.train_size=1280", "trainer.steps_per_execution=3", "trainer.log_every_n_steps=1"]
    train(compose_cfg(*options, "trainer.max_epochs=1", "logger=csv", "test=false", output_dir=tmp_path / "run"))
    logged = _logged(tmp_path / "run")
    steps = [float(value) for _, value in logged["train/loss"]]
    assert len(steps) == len(sizes)
    ((_, epoch_loss),) = logged["train/loss_epoch"]
    weighted = sum(loss * rows for loss, rows in zip(steps, sizes, strict=True))
    assert float(epoch_loss) == pytest.approx(weighted / sum(sizes), rel=1e-5)
