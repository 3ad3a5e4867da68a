"""Experiment trackers: Lightning's loggers given the run's name and tags, its config and its final metrics.

Every tracker receives the composed config, flattened to dotted keys, when fitting starts, and the
final metrics when the run ends; the run directory gets `summary.json` (name, tags, final metrics and
where each tracker put the run).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from agent_lightning.errors import ConfigError
from agent_lightning.runs.continued_mlflow import RUN_DIR_TAG, run_dir_tag

log = logging.getLogger("agent_lightning")
SUMMARY_FILE = "summary.json"
# Safe as one path component and as a tag in every tracker (MLflow keys allow little more).
SAFE_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def run_tags(cfg: DictConfig) -> list[str]:
    """`tags` as a list of strings (`tags=foo` on the command line means one tag)."""
    tags = cfg.get("tags") or []
    if isinstance(tags, str):
        return [tags]
    return [str(tag) for tag in tags]


# The package each optional tracker or progress bar needs, and the extra that installs it; a subclass
# (e.g. runs/continued_mlflow.ContinuingMLFlowLogger) needs what its base needs.
_NEEDS: dict[type, tuple[tuple[str, ...], str]] = {
    TensorBoardLogger: (("tensorboard", "tensorboardX"), "tensorboard"),
    MLFlowLogger: (("mlflow",), "mlflow"),
    WandbLogger: (("wandb",), "wandb"),
    RichProgressBar: (("rich",), "rich"),
}


def _packages_needed(target: str) -> tuple[tuple[str, ...], str]:
    """(packages, extra) the class `target` names needs; none for a factory or a target that does not resolve."""
    try:
        kind = hydra.utils.get_object(target)  # Lightning's classes import without their optional packages
    except Exception:  # instantiating it reports the target in its own words
        return (), ""
    if not isinstance(kind, type):
        return (), ""
    return next((needs for base, needs in _NEEDS.items() if issubclass(kind, base)), ((), ""))


def _check_installed(key: str, target: str) -> None:
    modules, extra = _packages_needed(target)
    if modules and not any(importlib.util.find_spec(module) for module in modules):
        raise ConfigError(
            f'{key} needs the {modules[0]} package: pip install "lightning-agent-trainer[{extra}]" (or {modules[0]})'
        )


def _refuse_name(name: Any) -> ConfigError:
    return ConfigError(f"name={name!r} is invalid: use letters, digits, '_', '.' or '-' (it names the run's directory)")


def check_name_override(argv: list[str]) -> None:
    """Raise ConfigError for a `name=` on the command line that `check_run_identity` would refuse."""
    for arg in argv[1:]:
        key, _, value = arg.lstrip("+").partition("=")
        if key != "name" or "${" in value or re.match(r"\w+\(", value):  # interpolation, choice(...): resolved later
            continue
        for each in value.strip("'\"").split(","):  # a sweep over names: name=a,b
            if not SAFE_WORD.fullmatch(each):
                raise _refuse_name(value)


def check_run_identity(cfg: DictConfig) -> None:
    """Raise ConfigError unless `name` is one safe path component, every tag a plain word, and trackers installed."""
    name = cfg.get("name")
    if not isinstance(name, str) or not SAFE_WORD.fullmatch(name):
        raise _refuse_name(name)
    tags = cfg.get("tags")
    if tags is not None and not isinstance(tags, str) and not OmegaConf.is_list(tags):
        raise ConfigError(f"tags={tags!r} is invalid: use a list, e.g. tags=[baseline,adam]")
    for tag in run_tags(cfg):
        if not SAFE_WORD.fullmatch(tag):
            raise ConfigError(f"tags: {tag!r} is invalid: use letters, digits, '_', '.' or '-'")
    for key, item in (cfg.get("logger") or {}).items():
        if item and "_target_" in item:
            _check_installed(f"logger.{key}", str(item._target_))
    if cfg.get("progress") and "_target_" in cfg.progress:
        _check_installed("progress", str(cfg.progress._target_))


def flatten_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config as `{"model.hidden_dim": 256, ...}`; lists become comma-joined strings."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    flat: dict[str, Any] = {}

    def visit(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                visit(value, f"{prefix}{key}.")
        elif isinstance(node, list | tuple):
            flat[prefix[:-1]] = ",".join(str(item) for item in node)
        else:
            flat[prefix[:-1]] = "null" if node is None else node

    visit(container, "")
    return flat


def run_label(cfg: DictConfig) -> str:
    """The run's directory below `<root>/<name>/`: its time (and job number in a sweep)."""
    output = Path(str(cfg.paths.output_dir)).resolve()
    for root in (cfg.paths.get("output_root"), cfg.paths.get("multirun_root")):
        if root:
            try:
                return output.relative_to(Path(str(root)).resolve() / str(cfg.name)).as_posix()
            except ValueError:
                continue
    return output.name


def _global_rank() -> int:
    # From the launcher's environment: Lightning sets its own rank only once fitting starts.
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """Instantiate each `logger` entry, giving the trackers that support it the run's name and tags."""
    tags = run_tags(cfg)
    loggers: list[Logger] = []
    for key, item in (cfg.get("logger") or {}).items():
        if not item or "_target_" not in item:
            continue
        kind = hydra.utils.get_class(str(item._target_))
        if issubclass(kind, MLFlowLogger | WandbLogger) and _global_rank() != 0:
            # Only rank 0 writes to a tracker; these two connect to their store when built, and
            # several ranks creating one SQLite store at once fail.
            continue
        extra: dict[str, Any] = {}
        if issubclass(kind, MLFlowLogger):
            user_tags = OmegaConf.to_container(item.tags) if item.get("tags") else {}
            run_dir = {RUN_DIR_TAG: run_dir_tag(cfg.paths.output_dir)}  # how a resumed run finds its MLflow run
            extra["tags"] = {**dict.fromkeys(tags, "true"), **run_dir, **user_tags}
            extra["run_name"] = item.get("run_name") or run_label(cfg)
        elif issubclass(kind, WandbLogger):
            extra["tags"] = [*tags, *(item.get("tags") or [])]
            extra["name"] = item.get("name") or run_label(cfg)
        try:
            loggers.append(hydra.utils.instantiate(item, **extra))
        except Exception as err:  # a store or URI the tracker refuses: its own words, naming the key
            cause = err
            while cause.__cause__ is not None:
                cause = cause.__cause__
            reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            raise ConfigError(f"logger.{key} could not start: {type(cause).__name__}: {reason}") from None
    return loggers


class LogConfigToTrackers(pl.Callback):
    """Sends the flattened config to every tracker when fitting starts (rank 0).

    TensorBoard gets it at the end instead, together with the final metrics, because its HParams
    view keeps only the first record of a run.
    """

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg  # flattened when fitting starts: values resolved per run (e.g. steps_per_execution) are set

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the config to every tracker but TensorBoard."""
        if not trainer.is_global_zero:
            return
        params = flatten_config(self.cfg)
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(params)
                logger.save()


def _final_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _tracker_location(logger: Logger) -> tuple[str, Any] | None:
    if isinstance(logger, MLFlowLogger):
        uri = logger._tracking_uri
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):  # relative: to the current directory
            uri = f"sqlite:///{Path(uri[len('sqlite:///') :]).resolve()}"
        return "mlflow", {
            "tracking_uri": uri,
            "experiment_id": logger.experiment_id,
            "run_id": logger.run_id,
        }
    if isinstance(logger, WandbLogger):
        run = logger.experiment
        return "wandb", {"dir": str(Path(run.dir).parent), "run_id": run.id, "project": run.project}
    if isinstance(logger, TensorBoardLogger):
        return "tensorboard", logger.log_dir
    if isinstance(logger, CSVLogger):
        return "csv", logger.log_dir
    return None


def finish_run(trainer: pl.Trainer, cfg: DictConfig, result: Mapping[str, Any], status: str = "finished") -> None:
    """Send the final metrics to every tracker and write `summary.json` in the run directory (rank 0)."""
    if not trainer.is_global_zero:
        return
    finals = _final_metrics(result)
    step = trainer.global_step
    trackers: dict[str, Any] = {}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            # The HParams view: config beside the final metrics, comparable across runs.
            logger.log_hyperparams(flatten_config(cfg), metrics=finals, step=step)
        elif isinstance(logger, MLFlowLogger):
            logger.log_metrics(finals, step=step)
        elif isinstance(logger, WandbLogger):
            logger.experiment.summary.update(finals)
        # CSV: every metric already has its rows in metrics.csv; summary.json holds the finals.
        location = _tracker_location(logger)
        if location:
            trackers[location[0]] = location[1]
        logger.finalize("success")
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()  # else the next run in this process would reuse it
    summary = {
        "name": cfg.name,
        "tags": run_tags(cfg),
        "status": status,
        "run_dir": str(cfg.paths.output_dir),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "global_step": step,  # the weights these metrics describe (a resume that trains nothing keeps them)
        "metrics": finals,
        "best_model_path": result.get("best_model_path", ""),
        "trackers": trackers,
    }
    path = Path(str(cfg.paths.output_dir)) / SUMMARY_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    os.replace(tmp, path)
