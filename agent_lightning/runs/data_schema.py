"""What a model's inputs and outputs mean: the feature columns and class names of its training data, checked.

A model reads its inputs by position and its outputs are class numbers. Data prepared apart can keep the
width and the number of classes and still mean something else: its columns in another order, or a class
missing so that the others are numbered differently (a prepared dataset numbers named labels in sorted
order). Every checkpoint records its training data's schema (`runs/data_resume.py`) and every export keeps
it (`export.py`, `formats/`); a resume, `init_from` and `evaluate` on a prepared dataset refuse data whose
schema differs, before anything runs, and `Policy` names its actions with it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_lightning import safe_load
from agent_lightning.errors import ConfigError

if TYPE_CHECKING:  # read by `Policy.load` too, which imports neither Hydra nor OmegaConf
    from omegaconf import DictConfig

CLASS_NAMES_KEY = "data_class_names"
FEATURE_NAMES_KEY = "data_feature_names"
ENV_KEY = "data_env"  # the env settings demonstrations were collected in (`collect`, `dagger`)
SCHEMA_KEY = "agent_lightning.data_schema"  # in an export's metadata (safetensors, ONNX), as JSON


@dataclass(frozen=True)
class DataSchema:
    """The named columns and classes of a dataset, in the order the model sees them (None: not named).

    `env`: the environment settings (`conf/env/` keys) the data was collected in, where it was.
    """

    feature_names: list[str] | None = None
    class_names: list[str] | None = None
    env: dict[str, Any] | None = None

    @classmethod
    def from_mapping(
        cls, source: dict[str, Any], feature_key: str, class_key: str, env_key: str | None = None
    ) -> DataSchema:
        """The schema kept under these keys of a checkpoint or a manifest."""
        env = source.get(env_key) if env_key else None
        return cls(_names(source.get(feature_key)), _names(source.get(class_key)), env if _is_env(env) else None)

    def record(self, checkpoint: dict[str, Any]) -> None:
        """Write the named parts of this schema into a checkpoint (or `.pt` export) being saved."""
        if self.feature_names:
            checkpoint[FEATURE_NAMES_KEY] = list(self.feature_names)
        if self.class_names:
            checkpoint[CLASS_NAMES_KEY] = list(self.class_names)
        if self.env:
            checkpoint[ENV_KEY] = dict(self.env)

    def to_json(self) -> str:
        """The schema as JSON text, for an export's metadata."""
        return json.dumps({"feature_names": self.feature_names, "class_names": self.class_names, "env": self.env})

    @classmethod
    def from_json(cls, text: str | None) -> DataSchema:
        """The schema `to_json` wrote (empty for None or text that is not one)."""
        try:
            stored = json.loads(text) if text else {}
        except ValueError:
            return cls()
        return cls.from_mapping(stored, "feature_names", "class_names", "env") if isinstance(stored, dict) else cls()

    def as_names(self) -> dict[str, Any]:
        """`class_names`, `feature_names` and `env`, as keyword arguments of `Policy`."""
        return {"class_names": self.class_names, "feature_names": self.feature_names, "env": self.env}


def _names(value: Any) -> list[str] | None:
    return [str(name) for name in value] if isinstance(value, list | tuple) and value else None


def _is_env(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("id"), str)


def saved_schema(checkpoint: dict[str, Any] | str | Path) -> DataSchema:
    """The schema a checkpoint (loaded, a file or a sharded directory) or a .pt/.safetensors export was trained with.

    Empty when not recorded; an ONNX or TorchScript export's is read with its model (`formats/`).
    """
    if not isinstance(checkpoint, dict):
        path = Path(checkpoint)
        if path.is_dir():
            path = path / safe_load.LIGHTNING_META  # the non-tensor state beside the shards
        if path.suffix.lower() == ".safetensors" and path.is_file():
            from agent_lightning.formats.safetensors_file import read_metadata

            return DataSchema.from_json(read_metadata(path).get(SCHEMA_KEY))
        if path.suffix.lower() not in (".ckpt", ".pt", ".pth") or not path.is_file():
            return DataSchema()
        checkpoint = safe_load.load_file(path, mmap=True)
    return DataSchema.from_mapping(checkpoint, FEATURE_NAMES_KEY, CLASS_NAMES_KEY, ENV_KEY)


def data_schema(data_cfg: DictConfig) -> DataSchema:
    """The schema of the configured prepared dataset or stream (its first part); empty for the synthetic task."""
    from agent_lightning.data.fitting import is_stream_config
    from agent_lightning.data.manifest import read_manifest
    from agent_lightning.data.stream_dir import first_manifest

    path = data_cfg.get("path") if "path" in data_cfg else None
    if path is None or str(path) == "???":
        return DataSchema()  # the synthetic task numbers its classes and columns
    manifest = first_manifest(path) if is_stream_config(data_cfg) else read_manifest(path)
    return DataSchema.from_mapping(manifest or {}, "feature_names", "class_names")  # its env: not compared


def check_same_schema(where: str, saved: DataSchema, data_cfg: DictConfig) -> None:
    """ConfigError when the data's columns or classes mean otherwise than those the checkpoint `where` learnt."""
    now = data_schema(data_cfg)
    _check_same_features(where, saved.feature_names, now.feature_names, data_cfg.get("path"))
    if saved.class_names is None or now.class_names is None or saved.class_names == now.class_names:
        return
    unknown = [name for name in now.class_names if name not in saved.class_names]
    if unknown:  # no numbering makes the model's outputs mean classes it never learnt
        raise ConfigError(
            f"{where} was trained on classes [{', '.join(saved.class_names)}] but data.path={data_cfg.path} has "
            f"classes it was not trained on ({', '.join(unknown[:5])}): its outputs cannot mean them (a new class "
            "needs a new run, not this checkpoint)"
        )
    raise ConfigError(
        f"{where} was trained on classes [{', '.join(saved.class_names)}] but data.path={data_cfg.path} numbers its "
        f"classes [{', '.join(now.class_names)}]: prepare it with {list_override('class_names', saved.class_names)} "
        "so each output keeps its meaning"
    )


def _check_same_features(where: str, saved: list[str] | None, now: list[str] | None, path: Any) -> None:
    if saved is None or now is None or saved == now or len(saved) != len(now):
        return  # another width is named by the layer shapes' check
    if sorted(saved) == sorted(now):
        at = next(i for i, (a, b) in enumerate(zip(saved, now, strict=True)) if a != b)
        raise ConfigError(
            f"data.path={path} has the feature columns {where} was trained on in another order (column {at}: "
            f"{saved[at]!r} in training, {now[at]!r} here): prepare it with {list_override('features', saved)} so "
            "each input keeps its meaning"
        )
    missing, new = [n for n in saved if n not in now], [n for n in now if n not in saved]
    raise ConfigError(
        f"data.path={path} has other feature columns than {where} was trained on (missing {missing[:5]}, new "
        f"{new[:5]}): the model reads its inputs by position, so prepare data with the training columns"
    )


_PLAIN_VALUE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-.]*$")  # what Hydra's override grammar reads unquoted


def list_override(key: str, values: Sequence[str]) -> str:
    """`key=[a,b]` as it can be pasted on a command line: quoted when a value has spaces, accents or signs."""
    if all(_PLAIN_VALUE.match(v) for v in values):
        return f"{key}=[{','.join(values)}]"
    quoted = ",".join("'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" for v in values)
    return f'"{key}=[{quoted}]"'
