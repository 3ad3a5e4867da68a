"""Experiment trackers: Lightning's loggers given the run's name and tags, its config and its final metrics.

Every tracker receives the composed config, flattened to dotted keys, when fitting starts, and the
final metrics when the run ends; the run directory gets `summary.json` (name, tags, final metrics and
where each tracker put the run).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from agent_lightning.errors import ConfigError
from agent_lightning.runs.continued_mlflow import RUN_DIR_TAG, run_dir_tag
from agent_lightning.runs.continued_wandb import previous_online_run_id
from agent_lightning.runs.identity import run_tags
from agent_lightning.runs.lock import global_rank

log = logging.getLogger("agent_lightning")
SUMMARY_FILE = "summary.json"


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


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """Instantiate each `logger` entry, giving the trackers that support it the run's name and tags."""
    tags = run_tags(cfg)
    loggers: list[Logger] = []
    for key, item in (cfg.get("logger") or {}).items():
        if not item or "_target_" not in item:
            continue
        kind = hydra.utils.get_class(str(item._target_))
        if issubclass(kind, MLFlowLogger | WandbLogger) and global_rank() != 0:
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
            if cfg.get("ckpt_path") and not item.get("offline") and not (item.get("id") or item.get("version")):
                previous = previous_online_run_id(cfg.paths.output_dir)  # resumed in place: continue its W&B run
                if previous:
                    extra["id"] = previous
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
