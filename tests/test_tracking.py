"""Trackers read back with their own clients; run names and tags in paths, trackers and summary.json."""

import json
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.loggers import MLFlowLogger

from agent_lightning.config import config_dir
from agent_lightning.errors import ConfigError
from agent_lightning.runs.identity import (
    KNOWN_TARGETS,
    check_name_override,
    check_run_identity,
    check_trackers_installed,
    packages_needed_by_import,
)
from agent_lightning.tracking import build_loggers, flatten_config
from agent_lightning.train import train

from .conftest import run_cli


class TeamMLFlowLogger(MLFlowLogger):
    """A user's own MLflow logger (a subclass Lightning's name does not give away)."""


ONE_EPOCH = ["trainer.max_epochs=1", "data.train_size=4096", "data.val_size=1024", "data.test_size=1024"]


def test_csv_tensorboard_and_mlflow_hold_config_tags_and_final_metrics(compose_cfg, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir = tmp_path / "probe" / "t0"
    cfg = compose_cfg(
        "logger=many",
        "name=probe",
        "tags=[baseline,adam]",
        f"paths.output_root={tmp_path}",
        *ONE_EPOCH,
        output_dir=run_dir,
    )
    metrics = train(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["name"], summary["tags"], summary["status"]) == ("probe", ["baseline", "adam"], "finished")
    assert summary["metrics"]["val/acc"] == pytest.approx(metrics["val/acc"]) and metrics["val/acc"] > 0.5
    assert summary["metrics"]["test/acc"] == pytest.approx(metrics["test/acc"])

    # MLflow: its own client on the store the run names; experiment = name, run = the run directory's time.
    where = summary["trackers"]["mlflow"]
    assert where["tracking_uri"] == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    client = MlflowClient(where["tracking_uri"])
    run = client.get_run(where["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "probe" and run.info.run_name == "t0"
    assert run.info.status == "FINISHED"
    for key in ("val/acc", "val/acc_best", "test/acc", "data/reachable_acc"):
        assert run.data.metrics[key] == pytest.approx(metrics[key]), key
    assert run.data.params["model.hidden_dim"] == str(cfg.model.hidden_dim)
    assert run.data.params["optimizer._target_"] == "torch.optim.Adam" and run.data.params["tags"] == "baseline,adam"
    assert run.data.tags["baseline"] == run.data.tags["adam"] == "true"

    # TensorBoard: the event files' scalars and the HParams record (config + final metrics).
    events = EventAccumulator(summary["trackers"]["tensorboard"])
    events.Reload()
    assert events.Scalars("val/acc")[-1].value == pytest.approx(metrics["val/acc"])
    assert events.Scalars("test/acc")[-1].value == pytest.approx(metrics["test/acc"])
    hparams = {}
    for content in events.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            hparams = dict(data.session_start_info.hparams)
    assert hparams["model.hidden_dim"].number_value == cfg.model.hidden_dim
    assert (hparams["name"].string_value, hparams["tags"].string_value) == ("probe", "baseline,adam")

    # CSV: the flattened config beside metrics.csv.
    saved = yaml.safe_load((run_dir / "csv" / "hparams.yaml").read_text())
    assert saved["model.hidden_dim"] == cfg.model.hidden_dim and saved["tags"] == "baseline,adam"


def test_wandb_runs_offline_with_config_tags_and_final_metrics(compose_cfg, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    seen = {}
    finalize = WandbLogger.finalize

    def record(self, status):  # what the wandb run object holds when the run ends
        run = self.experiment
        seen.update(config=dict(run.config), summary=dict(run.summary), tags=list(run.tags), offline=run.offline)
        finalize(self, status)

    monkeypatch.setattr(WandbLogger, "finalize", record)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_dir = tmp_path / "run"
    metrics = train(compose_cfg("logger=wandb", "name=probe", "tags=[nightly]", *ONE_EPOCH, output_dir=run_dir))
    assert seen["offline"] is True and seen["tags"] == ["nightly"]
    assert seen["config"]["model.hidden_dim"] == 256 and seen["config"]["name"] == "probe"
    assert seen["summary"]["val/acc"] == pytest.approx(metrics["val/acc"])
    assert seen["summary"]["test/acc"] == pytest.approx(metrics["test/acc"])
    where = json.loads((run_dir / "summary.json").read_text())["trackers"]["wandb"]
    assert list((run_dir / "wandb").glob(f"offline-run-*-{where['run_id']}/run-{where['run_id']}.wandb"))


def test_multirun_goes_to_name_time_job_and_every_job_has_a_summary(tmp_path: Path) -> None:
    result = run_cli(
        "-m",
        "name=sweep_probe",
        "tags=[grid]",
        "optimizer.lr=1e-3,3e-3",  # two jobs: 0 and 1
        f"paths.multirun_root={tmp_path / 'multirun'}",
        *ONE_EPOCH,
        "trainer.enable_progress_bar=false",
        "print_config=false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    (sweep,) = (tmp_path / "multirun" / "sweep_probe").iterdir()  # one <time> directory
    for job in ("0", "1"):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert (summary["name"], summary["tags"]) == ("sweep_probe", ["grid"])
        assert summary["run_dir"] == str(sweep / job) and summary["metrics"]["val/acc"] > 0.3
        assert summary["trackers"]["csv"].startswith(str(sweep / job))


@pytest.mark.parametrize(
    ("override", "key"),
    [("name=../up", "name="), ("name=", "name="), ("tags=[ok,'a b']", "tags:"), ("tags=[ok,'']", "tags:")],
)
def test_bad_names_and_tags_are_refused_with_the_key(compose_cfg, override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        check_run_identity(compose_cfg(override))


def test_a_refused_name_on_the_command_line_makes_no_directory(tmp_path: Path) -> None:
    result = run_cli("name=a/b", cwd=tmp_path)
    assert result.returncode == 2 and "name='a/b' is invalid" in result.stderr
    assert not (tmp_path / "outputs").exists()  # refused before Hydra made outputs/a/b/<time>/
    check_name_override(["train", "-m", "name=a,b", "name=choice(a,b)", "name=${oc.env:USER}"])  # sweeps, interpolation


def test_a_tracker_that_is_not_installed_is_named_with_its_extra(compose_cfg, monkeypatch) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"logger.wandb needs the wandb package: .*\[wandb\]"):
        check_trackers_installed(compose_cfg("logger=[csv,wandb]"))
    check_trackers_installed(compose_cfg("logger=many"))
    # A subclass needs what its base needs: ours (logger=mlflow) and one of the user's own.
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"logger.mlflow needs the mlflow package: .*\[mlflow\]"):
        check_trackers_installed(compose_cfg("logger=mlflow"))
    with pytest.raises(ConfigError, match=r"logger.mlflow needs the mlflow package"):
        check_trackers_installed(compose_cfg("logger=mlflow", f"logger.mlflow._target_={__name__}.TeamMLFlowLogger"))


def test_the_packages_of_known_targets_are_what_their_classes_need() -> None:
    # Known targets skip the import (and Lightning's load in a multi-rank launcher): the table must not drift.
    for target, needs in KNOWN_TARGETS.items():
        assert packages_needed_by_import(target) == needs, target
    # Every logger and progress bar the package's configs name is one of them.
    texts = [path.read_text() for group in ("logger", "progress") for path in (config_dir() / group).glob("*.yaml")]
    configured = {line.split(":", 1)[1].strip() for text in texts for line in text.splitlines() if "_target_:" in line}
    assert len(configured) >= 7 and configured <= set(KNOWN_TARGETS), configured - set(KNOWN_TARGETS)


def test_the_packaged_trackers_and_progress_bars_are_checked_without_importing_them(compose_cfg, monkeypatch) -> None:
    import agent_lightning.runs.identity as identity

    def imported(target: str) -> None:
        raise AssertionError(f"{target} was imported to check its packages")

    monkeypatch.setattr(identity, "packages_needed_by_import", imported)
    for progress in ("auto", "lines", "tqdm", "rich"):
        check_trackers_installed(compose_cfg("logger=many", f"progress={progress}"))
    check_trackers_installed(compose_cfg("logger=[csv,wandb]"))


def test_only_rank_0_connects_to_mlflow_and_wandb(compose_cfg, monkeypatch, tmp_path: Path) -> None:
    # Every rank building MLflow's logger would create its SQLite store at once, and fail.
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger

    cfg = compose_cfg("logger=many", f"paths.output_root={tmp_path}")
    monkeypatch.setenv("RANK", "1")
    assert not any(isinstance(logger, MLFlowLogger) for logger in build_loggers(cfg))
    assert not (tmp_path / "mlflow.db").exists()
    monkeypatch.setenv("RANK", "0")
    built = build_loggers(cfg)
    assert any(isinstance(logger, MLFlowLogger) for logger in built)
    assert any(isinstance(logger, CSVLogger) for logger in built)


def test_a_run_resumed_in_its_directory_continues_its_online_wandb_run(compose_cfg, tmp_path: Path) -> None:
    # W&B continues a run given its id; an offline run cannot be continued (W&B ignores resume offline).
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    run_dir = tmp_path / "run"
    for name in ("run-20261101_100000-old1", "run-20261102_100000-new2", "offline-run-20261103_100000-off3"):
        (run_dir / "wandb" / name).mkdir(parents=True)
    resumed = ["logger=wandb", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"]

    def wandb_id(*overrides: str) -> str | None:
        loggers = build_loggers(compose_cfg(*overrides, output_dir=run_dir))
        (logger,) = [lg for lg in loggers if isinstance(lg, WandbLogger)]
        return logger._wandb_init.get("id")

    assert wandb_id(*resumed, "logger.wandb.offline=false") == "new2"  # the newest online run of the directory
    assert wandb_id(*resumed) is None  # offline: a new offline run
    assert wandb_id("logger=wandb", "logger.wandb.offline=false") is None  # not a resume: a new run
    assert wandb_id(*resumed, "logger.wandb.offline=false", "+logger.wandb.id=mine") == "mine"


def test_flatten_config_uses_dotted_keys_and_joins_lists(compose_cfg) -> None:
    flat = flatten_config(compose_cfg("tags=[a,b]"))
    assert flat["tags"] == "a,b" and flat["optimizer.betas"] == "0.9,0.999" and flat["ckpt_path"] == "null"
    assert flat["data.source.num_classes"] == 10 and not any(isinstance(v, dict | list) for v in flat.values())


def test_a_run_resumed_in_its_directory_continues_its_mlflow_run(compose_cfg, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "probe" / "t0"
    common = ["logger=mlflow", "name=probe", f"paths.output_root={tmp_path}", *ONE_EPOCH, "test=false"]
    train(compose_cfg(*common, output_dir=run_dir))
    first = json.loads((run_dir / "summary.json").read_text())["trackers"]["mlflow"]
    # This run's own store, not an earlier run's in this process (MLflow sets MLFLOW_TRACKING_URI).
    assert first["tracking_uri"] == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    last = run_dir / "checkpoints" / "last.ckpt"
    train(compose_cfg(*common, f"ckpt_path={last}", "trainer.max_epochs=2", output_dir=run_dir))
    resumed = json.loads((run_dir / "summary.json").read_text())["trackers"]["mlflow"]
    assert resumed["run_id"] == first["run_id"]

    client = MlflowClient(first["tracking_uri"])
    (only,) = client.search_runs([first["experiment_id"]])  # one MLflow run for the run directory
    assert only.info.status == "FINISHED"
    # Both parts in one history: each epoch's validation, then the final value (at the part's last step).
    steps = [metric.step for metric in client.get_metric_history(only.info.run_id, "val/acc")]
    assert len(steps) == 4 and steps == sorted(steps) and steps[1] < steps[2], steps
    # The first part's param stays (MLflow refuses to change one); the resumed value is a tag beside it.
    assert only.data.params["trainer.max_epochs"] == "1" and only.data.tags["resumed.trainer.max_epochs"] == "2"

    # A checkpoint continued in another directory is another run: a new MLflow run.
    train(compose_cfg(*common, f"ckpt_path={last}", "trainer.max_epochs=3", output_dir=tmp_path / "probe" / "t1"))
    assert len(client.search_runs([first["experiment_id"]])) == 2


def test_a_tracker_that_refuses_its_store_is_one_line_naming_the_key(compose_cfg, tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    cfg = compose_cfg("logger=mlflow", f"logger.mlflow.tracking_uri=file://{tmp_path}/mlruns")  # MLflow 3: refused
    with pytest.raises(ConfigError, match=r"^logger.mlflow could not start: MlflowException: "):
        build_loggers(cfg)
