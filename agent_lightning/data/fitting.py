"""What a run takes from its data before it starts: model width and class count, and the checks of its settings.

No Lightning here: these run before the training libraries load (see `data/adapting.py` for what the
data changes in the model and the Trainer once they exist).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from agent_lightning.data.manifest import check_shard_files, read_manifest
from agent_lightning.data.stream_dir import (
    check_is_stream,
    check_stream_options,
    first_manifest,
    wait_for_first_part,
)
from agent_lightning.errors import ConfigError


def data_dims(data_cfg: DictConfig, wait: bool = True) -> tuple[int, int] | None:
    """(features, classes) of the configured data: a prepared dataset's manifest or the source's settings.

    A stream's come from its first part: `wait=False` (only composing a config) does not wait for one.
    """
    path = data_cfg.get("path") if "path" in data_cfg else None
    if path is not None and str(path) != "???" and is_stream_config(data_cfg):
        check_stream_options(OmegaConf.to_container(data_cfg, resolve=True))  # type: ignore[arg-type]
        if wait:
            manifest = wait_for_first_part(path, float(data_cfg.get("poll_seconds", 1.0)))  # fixes the stream's dims
        else:
            check_is_stream(path)  # composing a config still refuses a prepared dataset given as a stream
            manifest = first_manifest(path) if Path(str(path)).is_dir() else None
            if manifest is None:
                return None
        return int(manifest["num_features"]), int(manifest["num_classes"])
    if path is not None and str(path) != "???":
        manifest = read_manifest(path)
        return int(manifest["num_features"]), int(manifest["num_classes"])
    source = data_cfg.get("source")
    if source is not None and "num_features" in source and "num_classes" in source:
        return int(source.num_features), int(source.num_classes)
    return None


def is_stream_config(data_cfg: DictConfig) -> bool:
    """Whether the data config is an online stream (`data=stream`)."""
    return str(data_cfg.get("_target_", "")).endswith("StreamDataModule")


def _missing_path(data_cfg: DictConfig) -> bool:
    return OmegaConf.is_missing(data_cfg, "path")


def resolve_data_dims(cfg: DictConfig, required: bool = True) -> None:
    """Fill `model.input_dim` / `model.output_dim` from the data when null; refuse values that disagree.

    `required=False` (composing a config to look at) leaves a missing `data.path` for later.
    """
    if "data" not in cfg or "model" not in cfg:
        return
    if _missing_path(cfg.data):
        if required:
            kind = "stream" if is_stream_config(cfg.data) else "dataset"
            raise ConfigError(f"data={kind} needs data.path=<a directory written by agent_lightning.prepare>")
        return
    dims = data_dims(cfg.data, wait=required)
    if dims is None:
        return
    where = f"data.path={cfg.data.path}" if "path" in cfg.data else "data.source"
    with open_dict(cfg):
        for key, value, what in (("input_dim", dims[0], "features"), ("output_dim", dims[1], "classes")):
            given = cfg.model.get(key)
            if given is None:
                cfg.model[key] = value
            elif given != value:
                raise ConfigError(
                    f"model.{key}={given} disagrees with the data's {value} {what} ({where}): leave model.{key} "
                    f"unset (null) to take it from the data"
                )
    check_data_config(cfg)


def check_data_config(cfg: DictConfig) -> None:
    """Refuse settings that need a split the prepared dataset lacks (before any rank starts)."""
    if "path" not in cfg.data or _missing_path(cfg.data) or is_stream_config(cfg.data):
        return
    manifest = read_manifest(cfg.data.path)
    check_shard_files(Path(cfg.data.path), manifest, verify=False)  # sizes: cheap; checksums on each rank
    scheduler = str((cfg.get("scheduler") or {}).get("_target_", ""))
    if manifest["splits"]["val"]["rows"] == 0 and "ReduceLROnPlateau" in scheduler:
        raise ConfigError(f"scheduler=plateau follows val/loss, but data.path={cfg.data.path} has no val split")
    if cfg.data.get("replay"):
        from agent_lightning.data.replay import check_replay_config

        check_replay_config(cfg.data.path, cfg.data.replay, int(cfg.data.batch_size))
