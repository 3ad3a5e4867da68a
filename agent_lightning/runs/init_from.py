"""`init_from=<checkpoint or export>`: a new run that starts from saved weights.

Only the model's weights (and its normalisation buffers) are taken: the optimizer, LR schedule,
epoch count and data position start fresh, unlike `ckpt_path=` (the exact resume). The weights
are loaded into the full model before any strategy wraps or shards it, so every strategy works
from the same file: a single-file checkpoint, a sharded (fsdp / model_parallel) directory, or a
file written by `python -m agent_lightning.export`.

Normalisation: the checkpoint's `normalizer.mean/std` are loaded with the weights and kept (under
`data.normalize=auto`, the default, or `none`), so the model starts out computing what it did: its
weights were learnt on observations standardised that way. `data.normalize=standard` replaces them
with the new data's (e.g. where a sensor's units changed), as in a run from scratch on that data
(`data.adapting.apply_data_statistics`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from agent_lightning import safe_load
from agent_lightning.errors import ConfigError
from agent_lightning.runs.data_schema import check_same_schema, saved_schema
from agent_lightning.runs.lock import global_rank

log = logging.getLogger("agent_lightning")
KEY = "init_from"
_STATE_PREFIX = "state_dict.model."
_GRAPH_SUFFIXES = {".onnx": "ONNX", ".ts": "TorchScript", ".torchscript": "TorchScript"}


def _plain(key: str) -> str:
    return safe_load.plain_name(key)  # wrapper prefixes (fsdp, compile) removed


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint file, sharded directory or export, with plain layer names."""
    if path.suffix.lower() in _GRAPH_SUFFIXES:  # a deployment graph, not a weights file: say so, not "unpickling"
        raise ConfigError(
            f"{KEY}={path} is a graph export ({_GRAPH_SUFFIXES[path.suffix.lower()]}), which init_from cannot read: "
            "give the run's checkpoint (.ckpt or sharded directory) or an export to .pt or .safetensors"
        )
    from agent_lightning.export import read_weights
    from agent_lightning.formats import safetensors_file

    read = safetensors_file.read_state if path.suffix.lower() == ".safetensors" else read_weights
    try:
        state, _ = read(path)  # the model config is this run's: only the weights are taken
    except ConfigError as err:
        raise ConfigError(f"{KEY}={err}") from None
    return {_plain(k): v for k, v in state.items()}


def _stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    if path.is_dir():  # a sharded checkpoint: shapes from its (checked) metadata, no tensor read
        try:
            shapes = safe_load.distributed_tensor_shapes(path)
        except ConfigError as err:
            raise ConfigError(f"{KEY}={path}: {err}") from None
        return {_plain(k.removeprefix(_STATE_PREFIX)): v for k, v in shapes.items() if k.startswith(_STATE_PREFIX)}
    return {name: tuple(t.shape) for name, t in _read_weights(path).items()}


def check_init_from(cfg: DictConfig) -> None:
    """`init_from` exists, is read without running code, and fits the model (unless `ckpt_path` resumes the run)."""
    value = cfg.get(KEY)
    if not value or cfg.get("ckpt_path"):  # a resume reads its checkpoint only (see `load_initial_weights`)
        return
    path = Path(str(value))
    if not path.exists():
        raise ConfigError(f"{KEY}={path} does not exist: give a checkpoint (.ckpt file or sharded directory) or export")
    if global_rank() != 0:
        return  # global rank 0 (or the launcher before it) has checked the file
    from agent_lightning.validation import compare_layers, model_shapes

    if "data" in cfg:  # first: other classes also change the head's shape, and this says why
        check_same_schema(f"{KEY}={path}", saved_schema(path), cfg.data)
    compare_layers(f"{KEY}={path}", _stored_shapes(path), model_shapes(cfg))


def load_initial_weights(model: nn.Module, cfg: DictConfig) -> bool:
    """Copy `init_from`'s weights and statistics into `model` (before any strategy shards it); whether it did."""
    value = cfg.get(KEY)
    if not value:
        return False
    if cfg.get("ckpt_path"):
        # The command that started a run from init_from, plus ckpt_path (how a stopped or requeued run resumes):
        # the checkpoint holds the weights, which already started from init_from.
        log.info("%s=%s is not read: ckpt_path=%s resumes the run exactly", KEY, value, cfg.ckpt_path)
        return False
    state = _read_weights(Path(str(value)))
    target = model.state_dict()
    model.load_state_dict({k: v.to(target[k].dtype) if k in target else v for k, v in state.items()})
    log.info(
        "%s=%s: weights and observation statistics loaded; optimizer, schedule, epochs and data position start fresh",
        KEY,
        value,
    )
    return True
