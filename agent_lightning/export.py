"""Load any strategy's checkpoint into a plain single-process `AgentMLP`, or export it to one file.

    python -m agent_lightning.export outputs/<run>/checkpoints/last.ckpt agent.pt

A `fsdp` / `model_parallel` checkpoint is a directory of shards (torch.distributed.checkpoint);
it is gathered into full tensors here, on one process, without a process group.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from agent_lightning import safe_load
from agent_lightning.errors import EXIT_CONFIG, ConfigError
from agent_lightning.model import AgentMLP

# Wrappers that sharding options add to parameter names, not part of the model itself.
_WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "_orig_mod.")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint as one dict (file as saved, or sharded directory gathered), loaded without running code."""
    return safe_load.load_checkpoint(path)


def _plain_name(key: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        key = key.replace(prefix, "")
    return key


def model_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The `AgentMLP` weights of a Lightning checkpoint, with wrapper prefixes removed."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise ConfigError("the checkpoint has no 'state_dict': not a checkpoint written by agent_lightning")
    return {_plain_name(k.removeprefix("model.")): v for k, v in state.items() if k.startswith("model.")}


def model_config(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The `AgentMLP` constructor arguments stored with the run's config."""
    try:
        config = checkpoint["hyper_parameters"]["config"]["model"]
    except (KeyError, TypeError):
        raise ConfigError("the checkpoint holds no run config: not a checkpoint written by agent_lightning") from None
    return {k: v for k, v in config.items() if not k.startswith("_")}


def load_agent(path: str | Path) -> AgentMLP:
    """An `AgentMLP` in eval mode with the weights of any strategy's checkpoint (file or directory)."""
    checkpoint = load_checkpoint(path)
    if "model_config" in checkpoint:  # a file written by `export`
        config, state = checkpoint["model_config"], checkpoint["state_dict"]
    else:
        config, state = model_config(checkpoint), model_state(checkpoint)
    model = AgentMLP(**config)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as err:  # shapes or names that do not fit the stored config
        raise ConfigError(
            f"{path}: its weights do not fit its own model config ({str(err).splitlines()[-1].strip()})"
        ) from None
    return model.eval()


def export(checkpoint_path: str | Path, output: str | Path) -> Path:
    """Write the model of a checkpoint as one small file: {'model_config', 'state_dict'}."""
    checkpoint = load_checkpoint(checkpoint_path)
    output = Path(output)
    torch.save({"model_config": model_config(checkpoint), "state_dict": model_state(checkpoint)}, output)
    return output


def main(argv: list[str] | None = None) -> int:
    """Command line: export CHECKPOINT OUTPUT."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a .ckpt file or a sharded checkpoint directory")
    parser.add_argument("output", help="where to write the single-file model")
    args = parser.parse_args(argv)
    try:
        written = export(args.checkpoint, args.output)
        model = load_agent(written)
    except ConfigError as err:
        print(f"error: cannot export {args.checkpoint}: {err}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"wrote {written}: AgentMLP with {sum(p.numel() for p in model.parameters()):,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
