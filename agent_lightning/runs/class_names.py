"""What each output of a model means: the class names of the data it was trained on, checked against new data.

A prepared dataset numbers named labels in sorted order, so data prepared apart that lacks a class (a held-out
file, a later day) numbers the others differently: the same output would mean another action, silently.
Every checkpoint records its training data's class names (`runs/data_resume.py`); a resume, `init_from` and
`evaluate` on a prepared dataset refuse data that names them otherwise, before anything runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from agent_lightning import safe_load
from agent_lightning.errors import ConfigError

CLASS_NAMES_KEY = "data_class_names"


def saved_class_names(checkpoint: dict[str, Any] | str | Path) -> list[str] | None:
    """The class names a checkpoint (loaded, a file or a sharded directory) was trained with; None: not recorded."""
    if not isinstance(checkpoint, dict):
        path = Path(checkpoint)
        if path.is_dir():
            path = path / safe_load.LIGHTNING_META  # the non-tensor state beside the shards
        if path.suffix.lower() not in (".ckpt", ".pt") or not path.is_file():
            return None  # an export (.safetensors, .onnx, .ts) keeps the model only
        checkpoint = safe_load.load_file(path, mmap=True)
    names = checkpoint.get(CLASS_NAMES_KEY)
    return [str(name) for name in names] if isinstance(names, list | tuple) and names else None


def data_class_names(data_cfg: DictConfig) -> list[str] | None:
    """The class names of the configured prepared dataset or stream (its first part); None: not named."""
    from agent_lightning.data.fitting import is_stream_config
    from agent_lightning.data.manifest import read_manifest
    from agent_lightning.data.stream_dir import first_manifest

    path = data_cfg.get("path") if "path" in data_cfg else None
    if path is None or str(path) == "???":
        return None  # the synthetic task numbers its classes
    manifest = first_manifest(path) if is_stream_config(data_cfg) else read_manifest(path)
    names = (manifest or {}).get("class_names")
    return [str(name) for name in names] if names else None


def check_same_classes(where: str, saved: list[str] | None, data_cfg: DictConfig) -> None:
    """ConfigError when the data names its classes otherwise than the checkpoint `where` was trained on."""
    now = data_class_names(data_cfg)
    if saved is None or now is None or saved == now:
        return
    raise ConfigError(
        f"{where} was trained on classes [{', '.join(saved)}] but data.path={data_cfg.path} numbers its classes "
        f"[{', '.join(now)}]: prepare it with class_names=[{','.join(saved)}] so each output keeps its meaning"
    )
