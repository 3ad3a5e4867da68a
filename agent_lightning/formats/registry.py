"""Which export format a path means, and the one-line error when a format's optional packages are missing."""

from __future__ import annotations

import importlib
import zipfile
from pathlib import Path
from types import ModuleType

from agent_lightning.errors import ConfigError

FORMATS = ("torch", "safetensors", "onnx", "torchscript")
SUFFIXES = {".pt": "torch", ".pth": "torch", ".safetensors": "safetensors", ".onnx": "onnx"}
SUFFIXES |= {".ts": "torchscript", ".torchscript": "torchscript"}
INSTALL_EXPORT = "pip install 'lightning-agent-trainer[export]'"
# Names that promise weights, read without running code: a TorchScript program (it runs its own code) never has one.
WEIGHTS_SUFFIXES = (".pt", ".pth", ".ckpt")


def format_for_path(path: str | Path, explicit: str | None = None) -> str:
    """The export format named by `explicit`, else by the file's suffix; ConfigError naming the valid ones."""
    if explicit:
        if explicit not in FORMATS:
            raise ConfigError(f"format={explicit!r} is not one of {', '.join(FORMATS)}")
        if explicit == "torchscript" and Path(path).suffix.lower() in WEIGHTS_SUFFIXES:
            raise ConfigError(
                f"format=torchscript writes a program, and {path} is a name for weights (loaded without running "
                f"code): name it {Path(path).with_suffix('.ts').name}"
            )
        own = {"onnx": ".onnx", "safetensors": ".safetensors"}.get(explicit)  # told from the suffix alone when read
        if own and Path(path).suffix.lower() != own:
            renamed = Path(path).with_suffix(own).name
            raise ConfigError(f"format={explicit} files are told by their suffix when loaded: name it {renamed}")
        return explicit
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        known = ", ".join(sorted(SUFFIXES))
        raise ConfigError(
            f"{path}: cannot tell the format from its suffix: name it with one of {known} (or, for torch and "
            "torchscript, add format=torch|torchscript)"
        )
    return SUFFIXES[suffix]


def is_torchscript_archive(path: Path) -> bool:
    """True for a file written by `torch.jit.save` (a zip with compiled code), whatever its suffix."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def require_extra(module: str, feature: str) -> ModuleType:
    """Import an optional package of the `[export]` extra, or raise one line saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{feature} needs the package {module!r}: {INSTALL_EXPORT}") from None
