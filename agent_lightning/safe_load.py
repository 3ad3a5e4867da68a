"""Reading checkpoints without running code from them.

A single-file checkpoint is read with `torch.load(weights_only=True)`: tensors and plain containers
only. A sharded (distributed) checkpoint's `.metadata` is a plain pickle that torch's reader unpickles
with no restriction, so it is first read here with an unpickler that only accepts the metadata classes
torch writes; anything else (a crafted file) is refused before torch touches it.
"""

from __future__ import annotations

import pickle
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from agent_lightning.errors import ConfigError

DCP_METADATA = ".metadata"
LIGHTNING_META = "meta.pt"  # the non-tensor part Lightning keeps beside the shards

# Everything torch's distributed checkpoint writes into `.metadata` (torch 2.4 to 2.13).
_DCP_MODULES = ("torch.distributed.checkpoint.metadata",)
_DCP_NAMES = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Builds only torch's checkpoint-metadata classes and dtypes; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = module in _DCP_MODULES or (module, name) in _DCP_NAMES
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            allowed = True
        if not allowed:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}")
        return super().find_class(module, name)


# What wrappers add to a parameter's name (activation checkpointing, FSDP1, torch.compile).
WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "_orig_mod.")


def plain_name(key: str) -> str:
    """A parameter's name as the bare model names it (wrapper prefixes removed)."""
    for prefix in WRAPPER_PREFIXES:
        key = key.replace(prefix, "")
    return key


def check_distributed_metadata(directory: Path) -> None:
    """Raise ConfigError unless `directory/.metadata` holds only what torch's checkpoint writer puts there."""
    path = directory / DCP_METADATA
    if not path.is_file():
        raise ConfigError(f"{directory} is neither a checkpoint file nor a distributed checkpoint directory")
    try:
        with path.open("rb") as stream:
            metadata = _MetadataUnpickler(stream).load()
    except Exception as err:  # any failure means: not a file this project wrote
        raise ConfigError(f"{path} is not a distributed-checkpoint metadata file this project wrote ({err})") from None
    if type(metadata).__name__ != "Metadata":
        raise ConfigError(f"{path} is not a distributed-checkpoint metadata file this project wrote")


def distributed_tensor_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """Full shapes of the tensors in a checkpoint directory, from its (checked) metadata."""
    check_distributed_metadata(directory)
    with (directory / DCP_METADATA).open("rb") as stream:
        metadata = _MetadataUnpickler(stream).load()
    return {
        key: tuple(entry.size)
        for key, entry in metadata.state_dict_metadata.items()
        if hasattr(entry, "size")  # tensors; bytes entries have no size
    }


def weights_only_load(path: str | Path, mmap: bool = False) -> Any:
    """`torch.load(weights_only=True)` on CPU, without torch's warning about a plain pickle's protocol."""
    with warnings.catch_warnings():
        # A refused file is reported in one line, with the reason (`refusal_reason`).
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def refusal_reason(err: pickle.UnpicklingError) -> str:
    """What `weights_only` refused, in a few words (torch's message goes on to advise loading the file unsafely)."""
    lines = [line.strip() for line in str(err).splitlines()]
    reason = next((line for line in lines if re.search(r"unsupported|GLOBAL", line, re.I)), "it needs code to load")
    return re.split(r"\.? Please use `?torch\.serialization", reason)[0]  # not how to allow it


def load_file(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint file's contents, loaded without running code; a one-line ConfigError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist")
    if path.stat().st_size == 0:
        raise ConfigError(f"{path} is empty: not a checkpoint")
    try:
        checkpoint = weights_only_load(path, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:  # loading it would need to run code from the file
        if not _pickle_or_zip(path):  # text, random bytes, an ONNX graph: torch tried it as a legacy pickle
            raise ConfigError(f"{path} is not a torch checkpoint file (neither a zip archive nor a pickle)") from None
        reason = refusal_reason(err)
        raise ConfigError(f"{path} was refused without running it: not a plain-tensor checkpoint ({reason})") from None
    except Exception as err:  # truncated, random bytes, not a torch file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{path} is not a readable checkpoint (truncated or not a torch file: {first})") from None
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dictionary")
    return checkpoint


def _pickle_or_zip(path: Path) -> bool:
    """Whether the file starts as torch's formats do: a zip archive, or a pickle (protocol 2 and up: 0x80)."""
    with path.open("rb") as stream:
        head = stream.read(4)
    return head.startswith(b"PK") or head[:1] == b"\x80"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint as one dict: a single file as saved, or a sharded directory gathered on this process."""
    path = Path(path)
    if path.is_file():
        return load_file(path)
    if not path.exists():
        raise ConfigError(f"{path} does not exist")
    check_distributed_metadata(path)  # before torch's reader unpickles it
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        gathered = Path(tmp) / "full.pt"
        try:
            dcp_to_torch_save(path, gathered)
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"{path} is not a readable distributed checkpoint ({first})") from None
        checkpoint = load_file(gathered)
    meta = path / LIGHTNING_META
    if meta.is_file():
        checkpoint.update(load_file(meta))
    return checkpoint
