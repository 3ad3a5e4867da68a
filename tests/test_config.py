import zipfile
from pathlib import Path
from types import SimpleNamespace

import hydra
import numpy as np
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

from agent_lightning.config import config_dir
from agent_lightning.data import AgentDataModule
from agent_lightning.data.base import RankBatchesDataModule
from agent_lightning.fit import build_module
from agent_lightning.model import AgentMLP
from agent_lightning.parallel.strategies import build_strategy
from agent_lightning.step import lightning_trainer_config

CONF = config_dir()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_has_options() -> None:
    for group in (
        "model",
        "data",
        "optimizer",
        "scheduler",
        "strategy",
        "trainer",
        "logger",
        "callbacks",
        "experiment",
    ):
        assert options(group), group
    assert {"adam", "adamw", "sgd"} <= set(options("optimizer"))
    assert {"none", "cosine", "step"} <= set(options("scheduler"))
    assert {"single", "ddp"} <= set(options("strategy"))


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_optimizer_and_scheduler_options_instantiate_together(compose_cfg, optimizer: str, scheduler: str) -> None:
    cfg = compose_cfg(f"optimizer={optimizer}", f"scheduler={scheduler}")
    module = build_module(cfg)
    module.trainer = SimpleNamespace(model=module, estimated_stepping_batches=200, precision_plugin=None)
    configured = module.configure_optimizers()
    opt = configured["optimizer"] if isinstance(configured, dict) else configured
    assert opt.defaults["lr"] == pytest.approx(cfg.optimizer.lr)
    assert isinstance(configured, dict) == (scheduler != "none")
    if scheduler != "none":
        assert configured["lr_scheduler"]["interval"] == cfg.scheduler.interval


@pytest.mark.parametrize("model", options("model"))
def test_model_options_instantiate(compose_cfg, model: str) -> None:
    cfg = compose_cfg(f"model={model}")
    net = hydra.utils.instantiate(cfg.model)
    assert isinstance(net, AgentMLP)
    assert net(torch.randn(2, cfg.model.input_dim)).shape == (2, cfg.model.output_dim)


@pytest.mark.parametrize("data", options("data"))
def test_data_options_instantiate(compose_cfg, data: str, tmp_path: Path) -> None:
    from agent_lightning.data import ClusterTask, PreparedDataModule, StreamDataModule, StreamWriter
    from agent_lightning.prepare import prepare

    x, y = ClusterTask().samples(0, 1000)
    prepare((x.numpy(), y.numpy()), tmp_path / "ds", progress_bar=False)
    StreamWriter(tmp_path / "stream").write(x.numpy(), y.numpy())
    extra = {"dataset": [f"data.path={tmp_path / 'ds'}"], "stream": [f"data.path={tmp_path / 'stream'}"]}
    expected = {"dataset": PreparedDataModule, "stream": StreamDataModule}.get(data, AgentDataModule)
    cfg = compose_cfg(f"data={data}", *extra.get(data, []), fast=data not in extra)  # FAST sets synthetic sizes
    assert isinstance(hydra.utils.instantiate(cfg.data), expected)


@pytest.mark.parametrize("strategy", [s for s in options("strategy") if s != "auto"])  # auto: resolved first
def test_strategy_options_build(compose_cfg, strategy: str) -> None:
    built = build_strategy(compose_cfg(f"strategy={strategy}").strategy, world=2)
    expected = {
        "single": str,
        "ddp": DDPStrategy,
        "fsdp": ModelParallelStrategy,
        "model_parallel": ModelParallelStrategy,
    }
    assert isinstance(built, expected[strategy])


@pytest.mark.parametrize("logger", options("logger"))
@pytest.mark.parametrize("callbacks", options("callbacks"))
def test_logger_callback_and_trainer_options_instantiate(compose_cfg, logger: str, callbacks: str) -> None:
    cfg = compose_cfg(f"logger={logger}", f"callbacks={callbacks}")
    for group in (cfg.logger, cfg.callbacks):
        for item in (group or {}).values():
            assert hydra.utils.instantiate(item) is not None
    # The step options (clipping, accumulation, compile) are the module's; the rest is Lightning's.
    trainer = hydra.utils.instantiate(lightning_trainer_config(cfg.trainer), devices=1, logger=False)
    assert trainer.max_epochs == cfg.trainer.max_epochs


def test_reference_experiment_matches_the_design(compose_cfg) -> None:
    cfg = compose_cfg("experiment=reference", fast=False)
    assert (cfg.strategy.name, cfg.devices) == ("auto", 2)  # DDP on GPUs; one process per CPU host
    assert (cfg.data.source.num_features, cfg.data.source.num_classes) == (128, 10)
    assert (cfg.data.train_size, cfg.data.batch_size, cfg.trainer.max_epochs) == (100_000, 512, 5)
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == pytest.approx(1e-3)
    net = hydra.utils.instantiate(cfg.model)
    widths = [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [(128, 256), (256, 256), (256, 10)]


def test_command_line_values_win_over_the_experiment(compose_cfg) -> None:
    cfg = compose_cfg("experiment=reference", "devices=1", "optimizer.lr=0.01")
    assert cfg.devices == 1 and cfg.optimizer.lr == 0.01


@pytest.mark.timeout(180)
def test_installed_wheel_ships_the_config_tree(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(root)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n.removeprefix("agent_lightning/conf/") for n in names if n.startswith("agent_lightning/conf/")}
    in_tree = {str(p.relative_to(CONF)) for p in CONF.rglob("*.yaml")}
    assert in_tree and in_tree == shipped

    # Installed (not editable, not from the source tree), the package finds its config and composes it.
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True
    )
    probe = (
        "from agent_lightning.config import compose_config, config_dir;"
        "print(config_dir()); print(compose_config(['experiment=reference']).strategy.name)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(target)}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(target / "agent_lightning" / "conf"), "auto"]


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_and_instantiates(compose_cfg, tmp_path, experiment: str) -> None:
    overrides = [f"experiment={experiment}"]
    if (config_dir() / "experiment" / f"{experiment}.yaml").read_text().count("override /data: dataset"):
        # A preset that trains on a prepared dataset (bc_*: demonstrations) gets a small one.
        from agent_lightning.prepare import prepare

        rng = np.random.default_rng(0)
        arrays = (rng.normal(size=(64, 4)).astype("float32"), rng.integers(0, 2, 64))
        prepare(arrays, tmp_path / "d", progress_bar=False)
        overrides.append(f"data.path={tmp_path / 'd'}")
    cfg = compose_cfg(*overrides, fast=False)
    assert isinstance(hydra.utils.instantiate(cfg.data), RankBatchesDataModule)  # synthetic or prepared
    assert isinstance(hydra.utils.instantiate(cfg.model), AgentMLP)


def test_overfit_pair_differs_only_in_regularisation(compose_cfg) -> None:
    base = compose_cfg("experiment=overfit_baseline", fast=False)
    reg = compose_cfg("experiment=overfit_regularized", fast=False)
    assert base.data == reg.data and base.data.source.label_noise > 0 and base.data.train_size <= 5000
    assert (base.model.dropout, reg.model.dropout) == (0.0, 0.3)
    assert base.loss.label_smoothing == 0 < reg.loss.label_smoothing
    assert base.optimizer.weight_decay == 0 < reg.optimizer.weight_decay
    assert not base.augment and set(reg.augment) == {"noise", "mixup"}


GIB = 2**30


@pytest.mark.parametrize(
    ("params", "devices", "nodes", "expected"),
    [
        (100_000, 1, 1, "single"),
        (100_000, 2, 1, "ddp"),  # a replica fits easily
        (500_000_000, 2, 1, "fsdp"),  # 7.5 GiB of state, 5 GiB per device: half of it fits
        (500_000_000, 2, 2, "fsdp"),
        (2_000_000_000, 2, 1, "model_parallel"),  # 30 GiB: not even half fits
    ],
)
def test_auto_strategy_picks_the_simplest_that_fits(params: int, devices: int, nodes: int, expected: str) -> None:
    from agent_lightning.parallel.degrees import choose_strategy

    name, reason = choose_strategy(params, devices, nodes, device_bytes=10 * GIB, fraction=0.5)
    assert name == expected and "GiB" in reason


def test_auto_strategy_is_resolved_into_a_concrete_one(compose_cfg) -> None:
    from agent_lightning.train import resolve_auto_strategy

    cfg = compose_cfg("strategy=auto")
    resolve_auto_strategy(cfg)
    assert cfg.strategy.name == "single"


def test_a_list_named_in_a_message_can_be_pasted_on_the_command_line() -> None:
    from agent_lightning.runs.data_schema import list_override

    assert list_override("class_names", ["down", "left", "up-1"]) == "class_names=[down,left,up-1]"
    assert list_override("class_names", ["en bas", "à droite", "it's"]) == (
        "\"class_names=['en bas','à droite','it\\'s']\""
    )
