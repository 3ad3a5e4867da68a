"""A run's name and tags, and the packages its trackers need: checked before the run starts."""

from __future__ import annotations

import importlib.util
import re
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from agent_lightning.errors import ConfigError

# Safe as one path component and as a tag in every tracker (MLflow keys allow little more).
SAFE_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def run_tags(cfg: DictConfig) -> list[str]:
    """`tags` as a list of strings (`tags=foo` on the command line means one tag)."""
    tags = cfg.get("tags") or []
    if isinstance(tags, str):
        return [tags]
    return [str(tag) for tag in tags]


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
    """Raise ConfigError unless `name` is one safe path component and every tag a plain word."""
    name = cfg.get("name")
    if not isinstance(name, str) or not SAFE_WORD.fullmatch(name):
        raise _refuse_name(name)
    tags = cfg.get("tags")
    if tags is not None and not isinstance(tags, str) and not OmegaConf.is_list(tags):
        raise ConfigError(f"tags={tags!r} is invalid: use a list, e.g. tags=[baseline,adam]")
    for tag in run_tags(cfg):
        if not SAFE_WORD.fullmatch(tag):
            raise ConfigError(f"tags: {tag!r} is invalid: use letters, digits, '_', '.' or '-'")


Needs = tuple[tuple[str, ...], str]
NO_NEEDS: Needs = ((), "")
TENSORBOARD: Needs = (("tensorboard", "tensorboardX"), "tensorboard")
MLFLOW: Needs = (("mlflow",), "mlflow")
WANDB: Needs = (("wandb",), "wandb")
RICH: Needs = (("rich",), "rich")


def _needs() -> dict[type, Needs]:
    # The package each optional tracker or progress bar needs, and the extra that installs it; a subclass
    # (e.g. runs/continued_mlflow.ContinuingMLFlowLogger) needs what its base needs.
    from lightning.pytorch.callbacks import RichProgressBar
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

    return {
        TensorBoardLogger: TENSORBOARD,
        MLFlowLogger: MLFLOW,
        WandbLogger: WANDB,
        RichProgressBar: RICH,
    }


# The targets this package's configs name, answered without importing them: the import loads Lightning, which
# a multi-rank command's launcher never needs otherwise (seconds before its ranks start). A test checks each
# entry against the import below; any other target (a user's own class) is imported and its bases read.
KNOWN_TARGETS: dict[str, Needs] = {
    "agent_lightning.runs.continued_csv.ContinuingCSVLogger": NO_NEEDS,
    "agent_lightning.runs.continued_mlflow.ContinuingMLFlowLogger": MLFLOW,
    "lightning.pytorch.loggers.CSVLogger": NO_NEEDS,
    "lightning.pytorch.loggers.TensorBoardLogger": TENSORBOARD,
    "lightning.pytorch.loggers.MLFlowLogger": MLFLOW,
    "lightning.pytorch.loggers.WandbLogger": WANDB,
    "agent_lightning.console.auto_progress_bar": NO_NEEDS,
    "agent_lightning.console.LineProgressBar": NO_NEEDS,
    "agent_lightning.console.BatchTQDMProgressBar": NO_NEEDS,
    "lightning.pytorch.callbacks.RichProgressBar": RICH,
}


def _packages_needed(target: str) -> Needs:
    """(packages, extra) the class `target` names needs; none for a factory or a target that does not resolve."""
    if target in KNOWN_TARGETS:
        return KNOWN_TARGETS[target]
    return packages_needed_by_import(target)


def packages_needed_by_import(target: str) -> Needs:
    """(packages, extra) read from the class `target` names and its bases, importing it."""
    try:
        kind = hydra.utils.get_object(target)  # Lightning's classes import without their optional packages
    except Exception:  # instantiating it reports the target in its own words
        return NO_NEEDS
    if not isinstance(kind, type):
        return NO_NEEDS
    return next((needs for base, needs in _needs().items() if issubclass(kind, base)), NO_NEEDS)


def _check_installed(key: str, target: str) -> None:
    modules, extra = _packages_needed(target)
    if modules and not any(importlib.util.find_spec(module) for module in modules):
        raise ConfigError(
            f'{key} needs the {modules[0]} package: pip install "lightning-agent-trainer[{extra}]" (or {modules[0]})'
        )


def check_trackers_installed(cfg: DictConfig) -> None:
    """Raise ConfigError naming the extra to install when a logger or the progress bar needs a missing package.

    A class not in KNOWN_TARGETS is loaded (and Lightning with it), so the training command runs it after
    every other check: a bad value is reported before the training libraries load.
    """
    for key, item in (cfg.get("logger") or {}).items():
        if item and "_target_" in item:
            _check_installed(f"logger.{key}", str(item._target_))
    if cfg.get("progress") and "_target_" in cfg.progress:
        _check_installed("progress", str(cfg.progress._target_))
