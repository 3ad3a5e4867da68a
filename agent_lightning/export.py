"""Load any strategy's checkpoint into a plain single-process `AgentMLP`, or export it to one file.

    python -m agent_lightning.export outputs/<run>/checkpoints/last.ckpt agent.pt
    python -m agent_lightning.export outputs/<run>/checkpoints/last.ckpt agent.onnx   # or format=onnx
    formats: torch (.pt), safetensors (.safetensors), onnx (.onnx), torchscript (.ts, .torchscript)

Every export is loaded back after writing and its outputs compared with the checkpoint's model on
random observations; a difference above the tolerance fails the export (and removes the file).

A `fsdp` / `model_parallel` checkpoint is a directory of shards (torch.distributed.checkpoint);
it is gathered into full tensors here, on one process, without a process group.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agent_lightning import safe_load
from agent_lightning.errors import EXIT_CONFIG, ConfigError
from agent_lightning.formats.registry import FORMATS, format_for_path
from agent_lightning.model import AgentMLP
from agent_lightning.replacing import replace_file
from agent_lightning.runs.data_schema import DataSchema, saved_schema
from agent_lightning.safe_load import plain_name

# Wrappers that sharding options add to parameter names, not part of the model itself.
# Float32 logits through another runtime agree to rounding: relative to the logits' scale.
EXPORT_TOLERANCE = 1e-5
CHECK_ROWS = 256  # random observations each export is checked on
_SUFFIX = {"torch": ".pt", "safetensors": ".safetensors", "onnx": ".onnx", "torchscript": ".ts"}


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint as one dict (file as saved, or sharded directory gathered), loaded without running code."""
    return safe_load.load_checkpoint(path)


def model_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The `AgentMLP` weights of a Lightning checkpoint, with wrapper prefixes removed."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise ConfigError("the checkpoint has no 'state_dict': not a checkpoint written by agent_lightning")
    return {plain_name(k.removeprefix("model.")): v for k, v in state.items() if k.startswith("model.")}


def model_config(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The `AgentMLP` constructor arguments stored with the run's config."""
    try:
        config = checkpoint["hyper_parameters"]["config"]["model"]
    except (KeyError, TypeError):
        raise ConfigError("the checkpoint holds no run config: not a checkpoint written by agent_lightning") from None
    return {k: v for k, v in config.items() if not k.startswith("_")}


def load_agent(path: str | Path) -> AgentMLP:
    """An `AgentMLP` in eval mode with the weights of any strategy's checkpoint (file or directory)."""
    return load_agent_and_config(path)[0]


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The model weights (plain layer names) of a checkpoint (file or directory) or `.pt` export.

    Also the model config stored with them (None if the checkpoint holds none). Nothing in the file is run.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".safetensors":  # an export of its own: weights and config in the file
        from agent_lightning.formats import safetensors_file

        state, config = safetensors_file.read_state(Path(path))
        return {plain_name(k): v for k, v in state.items()}, config
    if suffix in (".onnx", ".ts"):  # a program, not weights: the file it was exported from holds them
        raise ConfigError(
            f"{path} is {'an ONNX' if suffix == '.onnx' else 'a TorchScript'} export, which holds a program rather "
            "than weights: export from the checkpoint (or a .pt / .safetensors export) it came from"
        )
    checkpoint = load_checkpoint(path)
    if "model_config" in checkpoint:  # a file written by `export`
        config, state = checkpoint["model_config"], checkpoint["state_dict"]
    else:
        try:
            state = model_state(checkpoint)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
        config = model_config(checkpoint) if _has_run_config(checkpoint) else None
    if not isinstance(config, dict | None) or not isinstance(state, dict):
        raise ConfigError(f"{path}: not a checkpoint or export written by agent_lightning")
    return {plain_name(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}, config


def _has_run_config(checkpoint: dict[str, Any]) -> bool:
    hyper_parameters = checkpoint.get("hyper_parameters")
    return isinstance(hyper_parameters, dict) and isinstance(hyper_parameters.get("config"), dict)


def load_agent_and_config(path: str | Path) -> tuple[AgentMLP, dict[str, Any]]:
    """`load_agent`, with the model config it was built from."""
    state, config = read_weights(path)
    if config is None:
        raise ConfigError(f"{path}: the checkpoint holds no run config: not a checkpoint written by agent_lightning")
    return build_agent(config, state, path), dict(config)


def build_agent(config: dict[str, Any], state: dict[str, torch.Tensor], path: str | Path) -> AgentMLP:
    """An `AgentMLP` in eval mode built from `config` with the weights `state`, both read from `path`."""
    model = AgentMLP(**config)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as err:  # shapes or names that do not fit the stored config
        reason = str(err).splitlines()[-1].strip()
        raise ConfigError(f"{path}: its weights do not fit its own model config ({reason})") from None
    return model.eval()


def write_model(
    model: AgentMLP, config: dict[str, Any], output: Path, fmt: str, schema: DataSchema | None = None
) -> None:
    """Write `model` (built from `config`) and its data's names to `output` in one of FORMATS, unchecked."""
    schema = schema or DataSchema()
    if fmt == "torch":
        saved: dict[str, Any] = {"model_config": config, "state_dict": model.state_dict()}
        schema.record(saved)
        torch.save(saved, output)
        return
    from importlib import import_module

    import_module(f"agent_lightning.formats.{fmt}_file").write(model, config, output, schema)


def check_export(model: AgentMLP, output: Path, rows: int = CHECK_ROWS, seed: int = 0) -> float:
    """Max abs difference between the export's logits and the model's on random observations; raises above tolerance."""
    from agent_lightning.agents.policy import Policy

    generator = torch.Generator().manual_seed(seed)
    normalizer = model.normalizer  # observations on the scale the model was trained on
    obs = normalizer.mean + normalizer.std * torch.randn(rows, normalizer.mean.numel(), generator=generator)
    with torch.inference_mode():
        expected = model(obs)
    got = Policy.load(output).logits(obs)
    diff = float((got - expected).abs().max())
    tolerance = EXPORT_TOLERANCE * max(1.0, float(expected.abs().max()))
    if not diff <= tolerance:
        raise ConfigError(f"{output}: the export's logits differ from the model's by {diff:.3g} (> {tolerance:.3g})")
    return diff


@dataclass(frozen=True)
class Exported:
    """What `export_checked` wrote, and how closely the file reproduces the model."""

    path: Path
    format: str
    max_abs_diff: float
    model: AgentMLP

    def summary(self) -> str:
        """One line for the command's output."""
        params = sum(p.numel() for p in self.model.parameters())
        dims = f"{self.model.normalizer.mean.numel()} -> {self.model.head.out_features}"
        return (
            f"wrote {self.path} ({self.format}): AgentMLP {dims} with {params:,} parameters; "
            f"max abs diff vs the checkpoint {self.max_abs_diff:.2g} on {CHECK_ROWS} random observations"
        )


def export(checkpoint_path: str | Path, output: str | Path, format: str | None = None) -> Path:
    """Write the model of a checkpoint (or of another export) as one file in `format` (default: from the suffix)."""
    return export_checked(checkpoint_path, output, format).path


def export_checked(checkpoint_path: str | Path, output: str | Path, format: str | None = None) -> Exported:
    """`export`, with the checked max abs difference of the written file's logits from the model's."""
    output = Path(output)
    fmt = format_for_path(output, format)
    if output.resolve() == Path(checkpoint_path).resolve():  # a training checkpoint replaced by weights alone
        raise ConfigError(f"{output} is the file being exported: give another output file")
    model, config = load_agent_and_config(checkpoint_path)
    if output.is_dir():
        raise ConfigError(f"{output} is a directory: give a file name, e.g. {output / ('agent' + _SUFFIX[fmt])}")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{output} cannot be written ({err.strerror or err}): give a writable place") from None
    # Written under its own name in a hidden directory beside it (a failed export never replaces a good one;
    # the name is the one TorchScript records inside its archive), then renamed into place.
    staging = output.parent / f".{output.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    staged = staging / output.name
    try:
        write_model(model, config, staged, fmt, saved_schema(checkpoint_path))  # what its outputs mean travels too
        diff = check_export(model, staged)
        replace_file(staged, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Exported(output, fmt, diff, model)


def _parse_options(options: list[str]) -> dict[str, str]:
    parsed = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key != "format":
            raise ConfigError(f"unknown option {option!r}: the only option is format=<{'|'.join(FORMATS)}>")
        parsed[key] = value
    return parsed


def main(argv: list[str] | None = None) -> int:
    """Command line: export CHECKPOINT OUTPUT [format=torch|safetensors|onnx|torchscript]."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a .ckpt file, a sharded checkpoint directory, or a .pt export")
    parser.add_argument("output", help="where to write the model: .pt, .safetensors, .onnx or .ts")
    parser.add_argument(
        "options", nargs="*", default=[], help="format=torch|safetensors|onnx|torchscript (default: from OUTPUT)"
    )
    args = parser.parse_args(argv)
    try:
        exported = export_checked(args.checkpoint, args.output, _parse_options(args.options).get("format"))
    except ConfigError as err:
        print(f"error: cannot export {args.checkpoint}: {err}", file=sys.stderr)
        return EXIT_CONFIG
    print(exported.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
