"""Load any strategy's checkpoint into a plain single-process `AgentMLP`, or export it to one file.

    python -m agent_lightning.export outputs/<run>/checkpoints/last.ckpt agent.pt

A `fsdp` / `model_parallel` checkpoint is a directory of shards (torch.distributed.checkpoint);
it is gathered into full tensors here, on one process, without a process group.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from agent_lightning.model import AgentMLP

# Wrappers that sharding options add to parameter names, not part of the model itself.
_WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "_orig_mod.")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint as one dict: a single file as saved, or a sharded directory gathered."""
    path = Path(path)
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=False)
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(f"{path} is neither a checkpoint file nor a distributed checkpoint directory")
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        gathered = Path(tmp) / "full.pt"
        dcp_to_torch_save(path, gathered)
        checkpoint = torch.load(gathered, map_location="cpu", weights_only=False)
    meta = path / "meta.pt"  # Lightning keeps the non-tensor part of the checkpoint here
    if meta.is_file():
        checkpoint.update(torch.load(meta, map_location="cpu", weights_only=False))
    return checkpoint


def _plain_name(key: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        key = key.replace(prefix, "")
    return key


def model_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The `AgentMLP` weights of a Lightning checkpoint, with wrapper prefixes removed."""
    state = checkpoint["state_dict"]
    return {_plain_name(k.removeprefix("model.")): v for k, v in state.items() if k.startswith("model.")}


def model_config(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The `AgentMLP` constructor arguments stored with the run's config."""
    config = checkpoint["hyper_parameters"]["config"]["model"]
    return {k: v for k, v in config.items() if not k.startswith("_")}


def load_agent(path: str | Path) -> AgentMLP:
    """An `AgentMLP` in eval mode with the weights of any strategy's checkpoint (file or directory)."""
    checkpoint = load_checkpoint(path)
    if "model_config" in checkpoint:  # a file written by `export`
        config, state = checkpoint["model_config"], checkpoint["state_dict"]
    else:
        config, state = model_config(checkpoint), model_state(checkpoint)
    model = AgentMLP(**config)
    model.load_state_dict({k: v.float() for k, v in state.items()})
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
    except (FileNotFoundError, KeyError) as err:
        print(f"error: cannot export {args.checkpoint}: {err}", file=sys.stderr)
        return 2
    model = load_agent(written)
    print(f"wrote {written}: AgentMLP with {sum(p.numel() for p in model.parameters()):,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
