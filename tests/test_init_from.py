"""`init_from=`: a new run from saved weights, with a fresh optimizer, schedule, epoch count and data position."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.nn import functional as F

from agent_lightning.config import compose_config
from agent_lightning.data import ClusterTask
from agent_lightning.data.adapting import apply_data_statistics
from agent_lightning.errors import ConfigError
from agent_lightning.export import export, load_agent, model_state
from agent_lightning.fit import build_module
from agent_lightning.prepare import prepare
from agent_lightning.runs.init_from import load_initial_weights
from agent_lightning.train import train
from agent_lightning.validation import validate

QUICK = [
    "data=dataset",
    "data.batch_size=256",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "logger=none",
    "test=false",
]


def _day(rows: int, start: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows `start:start+rows` of one task, features at a day-specific raw scale (as logs drift)."""
    x, y = ClusterTask(num_features=32, num_classes=6, cluster_std=0.7, seed=5).samples(start, start + rows)
    return (x.numpy() * scale + 3.0).astype(np.float32), y.numpy()


def _table(
    x: np.ndarray, y: np.ndarray, path: Path, columns: list[str] | None = None, rename: dict[str, str] | None = None
) -> Path:
    """A Parquet file of feature columns f0, f1, ... (`columns`: their order in the file) and an `action` column."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])]).assign(action=y)
    frame[columns or list(frame.columns)].rename(columns=rename or {}).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def yesterday(tmp_path_factory) -> dict[str, Path]:
    """Yesterday's dataset and the last checkpoint of one epoch trained on it; today's dataset, not trained on."""
    root = tmp_path_factory.mktemp("days")
    prepare(_table(*_day(3000, 0, 5.0), root / "day1.parquet"), root / "day1", progress_bar=False)
    prepare(_table(*_day(3000, 3000, 6.0), root / "day2.parquet"), root / "day2", progress_bar=False)
    train(compose_config([*QUICK, f"data.path={root / 'day1'}"], output_dir=root / "run1"))
    return {"day1": root / "day1", "day2": root / "day2", "ckpt": root / "run1" / "checkpoints" / "last.ckpt"}


class FirstStep(pl.Callback):
    """What the run looks like when it starts, and its first batch and loss."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = pl_module.optimizers()
        state = getattr(optimizer, "optimizer", optimizer).state
        self.seen.update(epoch=trainer.current_epoch, step=trainer.global_step, optimizer_state=len(state))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, idx) -> None:
        if "loss" not in self.seen:
            self.seen.update(batch=[t.detach().clone() for t in batch], loss=float(outputs["loss"]))


def test_init_from_starts_at_epoch_0_from_the_old_weights_with_a_fresh_optimizer(yesterday, tmp_path: Path) -> None:
    first = FirstStep()
    cfg = compose_config([*QUICK, f"data.path={yesterday['day2']}", f"init_from={yesterday['ckpt']}"], tmp_path / "r")
    train(cfg, extra_callbacks=[first])
    assert first.seen["epoch"] == 0 and first.seen["step"] == 0 and first.seen["optimizer_state"] == 0

    old = load_agent(yesterday["ckpt"])  # with its own statistics, which data.normalize=auto keeps
    today = hydra.utils.instantiate(cfg.data)
    features, labels = first.seen["batch"]
    with torch.no_grad():
        expected = float(F.cross_entropy(old(features), labels))
    assert first.seen["loss"] == pytest.approx(expected, abs=1e-5)
    fresh = hydra.utils.instantiate(cfg.model)
    apply_data_statistics(fresh, today)
    with torch.no_grad():  # the old weights are what made the first loss low
        assert float(F.cross_entropy(fresh(features), labels)) > first.seen["loss"] + 0.5

    saved = torch.load(tmp_path / "r" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["epoch"] == 0 and saved["global_step"] == 10  # one fresh epoch of 2,400 rows: 10 steps, not 20
    assert torch.equal(saved["state_dict"]["model.normalizer.mean"], old.normalizer.mean)


@pytest.mark.parametrize("normalize", ["auto", "none", "standard"])
def test_the_checkpoints_statistics_are_kept_unless_standard_asks_for_the_datas(yesterday, normalize: str) -> None:
    cfg = compose_config(
        [*QUICK, f"data.path={yesterday['day2']}", f"data.normalize={normalize}", f"init_from={yesterday['ckpt']}"]
    )
    module = build_module(cfg)
    today = hydra.utils.instantiate(cfg.data)
    apply_data_statistics(module.model, today, from_saved_weights=load_initial_weights(module.model, cfg))
    saved = model_state(torch.load(yesterday["ckpt"], map_location="cpu", weights_only=True))
    expected = today.dataset.statistics()[0] if normalize == "standard" else saved["normalizer.mean"]
    assert not torch.equal(saved["normalizer.mean"], today.dataset.statistics()[0])  # the days' raw scales differ
    assert torch.equal(module.model.normalizer.mean, expected) and module.model.normalizer.active
    fresh = build_module(cfg)  # without init_from, auto and standard take the data's statistics
    apply_data_statistics(fresh.model, today)
    assert fresh.model.normalizer.active is (normalize != "none")


def test_an_export_and_a_sharded_directory_give_the_same_weights(yesterday, tmp_path: Path) -> None:
    saved = model_state(torch.load(yesterday["ckpt"], map_location="cpu", weights_only=True))
    exported = export(yesterday["ckpt"], tmp_path / "agent.pt")
    sharded = tmp_path / "sharded"  # the layout fsdp / model_parallel write: tensors under state_dict.model.*
    dcp.save({"state_dict": {f"model.{k}": v for k, v in saved.items()}}, checkpoint_id=sharded, no_dist=True)
    for source in (exported, sharded):
        cfg = compose_config([*QUICK, f"data.path={yesterday['day1']}", f"init_from={source}"])
        validate(cfg)
        module = build_module(cfg)
        load_initial_weights(module.model, cfg)
        loaded = module.model.state_dict()
        assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], v) for k, v in saved.items()), source
    # Shards alone (no meta.pt beside them) give their weights, but no run to resume.
    resume = [*QUICK, f"data.path={yesterday['day1']}", "strategy=fsdp", f"ckpt_path={sharded}"]
    with pytest.raises(ConfigError, match=r"has no meta.pt .* not a whole checkpoint; .* with init_from="):
        validate(compose_config(resume))


def test_a_shape_mismatch_or_a_combined_resume_is_refused_in_one_line(yesterday, tmp_path: Path) -> None:
    base = [*QUICK, f"data.path={yesterday['day1']}", f"init_from={yesterday['ckpt']}"]
    with pytest.raises(ConfigError, match=r"init_from=.*: layer hidden.0.0.weight is \[256, 32\] in the checkpoint "):
        validate(compose_config([*base, "model.hidden_dim=64"]))
    with pytest.raises(ConfigError, match=r"init_from=.*the checkpoint's model missing hidden.2"):
        validate(compose_config([*base, "model.num_layers=3"]))
    with pytest.raises(ConfigError, match=r"init_from=.*: its model reads 32 features per observation but this run's"):
        validate(compose_config([f"init_from={yesterday['ckpt']}"]))  # the synthetic data's 128 features
    with pytest.raises(ConfigError, match=r"init_from=/no/such.ckpt does not exist"):
        validate(compose_config([*QUICK, f"data.path={yesterday['day1']}", "init_from=/no/such.ckpt"]))
    graph = tmp_path / "agent.onnx"
    graph.write_bytes(b"\x08\x07")  # what a deployment graph starts with: not a weights file
    with pytest.raises(ConfigError, match=r"init_from=.*agent.onnx is a graph export \(ONNX\), which init_from cannot"):
        validate(compose_config([*QUICK, f"data.path={yesterday['day1']}", f"init_from={graph}"]))


def test_a_safetensors_export_gives_the_same_weights(yesterday, tmp_path: Path) -> None:
    safetensors = pytest.importorskip("safetensors.torch")
    saved = model_state(torch.load(yesterday["ckpt"], map_location="cpu", weights_only=True))
    safetensors.save_file({k: v.contiguous() for k, v in saved.items()}, str(tmp_path / "agent.safetensors"))
    cfg = compose_config([*QUICK, f"data.path={yesterday['day1']}", f"init_from={tmp_path / 'agent.safetensors'}"])
    validate(cfg)
    module = build_module(cfg)
    load_initial_weights(module.model, cfg)
    loaded = module.model.state_dict()
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], v) for k, v in saved.items())


def test_the_stop_message_command_resumes_a_run_started_from_init_from(yesterday) -> None:
    # A stopped or requeued run is resumed by its own command plus ckpt_path: the checkpoint wins, init_from is unread.
    cfg = compose_config(
        [*QUICK, f"data.path={yesterday['day1']}", "init_from=/gone/since.ckpt", f"ckpt_path={yesterday['ckpt']}"]
    )
    validate(cfg)
    module = build_module(cfg)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    load_initial_weights(module.model, cfg)
    assert all(torch.equal(v, before[k]) for k, v in module.model.state_dict().items())


def test_data_that_numbers_its_classes_otherwise_is_refused_naming_the_fix(yesterday, tmp_path: Path) -> None:
    from agent_lightning.runs.data_schema import saved_schema

    assert saved_schema(yesterday["ckpt"]).class_names == [str(c) for c in range(6)]  # recorded from the training data
    x, y = _day(600, 9000, 5.0)
    names = np.array(["a", "b", "c", "d", "e", "f"])
    codes = np.array([str(c) for c in range(6)])  # the training's classes, written as text
    prepare((x[y > 0], codes[y[y > 0]]), tmp_path / "lacks_0", progress_bar=False)  # '1'..'5' numbered 0..4
    prepare((x, names[y]), tmp_path / "named", progress_bar=False)  # six classes, but named, not numbered
    fixes = {
        "lacks_0": r"numbers its classes \[1, 2, 3, 4, 5\]: prepare it with class_names=\[0,1,2,3,4,5\]",
        "named": r"has classes it was not trained on \(a, b, c, d, e\): its outputs cannot mean them",  # no fix
    }
    for data, fix in fixes.items():
        for key in ("init_from", "ckpt_path"):
            cfg = compose_config([*QUICK, f"data.path={tmp_path / data}", f"{key}={yesterday['ckpt']}"])
            refused = rf"{key}=.* was trained on classes \[0, 1, 2, 3, 4, 5\] but data.path=.* "
            with pytest.raises(ConfigError, match=refused + fix):
                validate(cfg)
    from agent_lightning.config import compose_raw
    from agent_lightning.evaluate import evaluate_on_dataset

    scored = [f"ckpt_path={yesterday['ckpt']}", "data=dataset", f"data.path={tmp_path / 'named'}"]
    scoring = compose_raw("evaluate", scored)
    with pytest.raises(ConfigError, match=r"ckpt_path=.* was trained on classes \[0, 1, 2, 3, 4, 5\] but data.path="):
        evaluate_on_dataset(scoring, tmp_path / "scored")
    assert not (tmp_path / "scored").exists()


def test_data_whose_columns_mean_otherwise_is_refused_naming_the_fix(yesterday, tmp_path: Path) -> None:
    from agent_lightning.config import compose_raw
    from agent_lightning.evaluate import evaluate_on_dataset
    from agent_lightning.runs.data_schema import saved_schema

    trained_order = [f"f{i}" for i in range(32)]
    assert saved_schema(yesterday["ckpt"]).feature_names == trained_order  # recorded from the training data
    x, y = _day(600, 9000, 5.0)
    swapped = ["f1", "f0", *trained_order[2:], "action"]  # same width and names, two columns exchanged
    _table(x, y, tmp_path / "swapped.parquet", swapped)
    prepare(tmp_path / "swapped.parquet", tmp_path / "swapped", progress_bar=False)
    _table(x, y, tmp_path / "renamed.parquet", [*trained_order, "action"], rename={"f5": "speed"})
    prepare(tmp_path / "renamed.parquet", tmp_path / "renamed", progress_bar=False)
    fix = rf"prepare it with features=\[{','.join(trained_order)}\]"
    reordered = rf"in another order \(column 0: 'f0' in training, 'f1' here\): {fix}"
    renamed_refused = r"was trained on \(missing \['f5'\], new \['speed'\]\)"
    for key in ("init_from", "ckpt_path"):
        cfg = compose_config([*QUICK, f"data.path={tmp_path / 'swapped'}", f"{key}={yesterday['ckpt']}"])
        with pytest.raises(ConfigError, match=rf"{key}=.* was trained on {reordered}"):
            validate(cfg)
        cfg = compose_config([*QUICK, f"data.path={tmp_path / 'renamed'}", f"{key}={yesterday['ckpt']}"])
        with pytest.raises(ConfigError, match=rf"other feature columns than {key}=.* {renamed_refused}"):
            validate(cfg)
    scored = [f"ckpt_path={yesterday['ckpt']}", "data=dataset", f"data.path={tmp_path / 'swapped'}"]
    scoring = compose_raw("evaluate", scored)
    with pytest.raises(ConfigError, match=r"in another order"):
        evaluate_on_dataset(scoring, tmp_path / "scored")
    # The fix the message names: the same file prepared with the training order is taken.
    prepare(tmp_path / "swapped.parquet", tmp_path / "ordered", features=trained_order, progress_bar=False)
    validate(compose_config([*QUICK, f"data.path={tmp_path / 'ordered'}", f"init_from={yesterday['ckpt']}"]))


def test_lightnings_load_from_checkpoint_rebuilds_the_module_from_its_run_config(yesterday) -> None:
    from agent_lightning import AgentModule

    module = AgentModule.load_from_checkpoint(yesterday["ckpt"])  # as a Lightning user would, weights-only
    assert module.hparams.config["data"]["path"] == str(yesterday["day1"])
    observations = torch.randn(8, 32)
    with torch.no_grad():
        torch.testing.assert_close(module.model.eval()(observations), load_agent(yesterday["ckpt"])(observations))


def test_a_policy_names_its_actions_and_inputs_from_a_checkpoint_and_every_export(yesterday, tmp_path: Path) -> None:
    from agent_lightning import Policy

    names = ([str(c) for c in range(6)], [f"f{i}" for i in range(32)])
    policy = Policy.load(yesterday["ckpt"])
    assert (policy.class_names, policy.feature_names) == names
    formats = ["pt", "ts"] + [f for f, extra in (("safetensors", "safetensors"), ("onnx", "onnx")) if _has(extra)]
    for suffix in formats:  # each format keeps them beside the model (metadata, an extra file)
        exported = Policy.load(export(yesterday["ckpt"], tmp_path / f"agent.{suffix}"))
        assert (exported.class_names, exported.feature_names) == names, suffix
    # An export made from an export keeps them too.
    again = Policy.load(export(tmp_path / "agent.pt", tmp_path / "again.pt"))
    assert (again.class_names, again.feature_names) == names


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
