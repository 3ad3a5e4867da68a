"""ONNX export: one graph from observations to logits, normalisation inside, any batch size.

Written with torch's `torch.export`-based exporter (`dynamo=True`, which needs onnxscript) and run
with onnxruntime. The model config is kept in the model's metadata properties.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from agent_lightning.errors import ConfigError
from agent_lightning.formats.registry import require_extra
from agent_lightning.model import AgentMLP
from agent_lightning.runs.data_schema import SCHEMA_KEY, DataSchema

CONFIG_KEY = "agent_lightning.model_config"
INPUT, OUTPUT = "obs", "logits"


def write(model: AgentMLP, config: dict[str, Any], path: Path, schema: DataSchema) -> None:
    """Export the model with a dynamic batch axis named `batch`."""
    for package in ("onnx", "onnxscript"):
        require_extra(package, "format=onnx")
    model = model.cpu().eval()
    example = torch.zeros(2, int(config["input_dim"]))
    batch = torch.export.Dim("batch", min=1)
    # The exporter logs each stage and warns about optional torchvision ops: none of it concerns this model.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes={"x": {0: batch}},
            verbose=False,
        )
    program.model.metadata_props[CONFIG_KEY] = json.dumps(config)
    program.model.metadata_props[SCHEMA_KEY] = schema.to_json()
    program.save(str(path))


class OnnxRuntimePolicy:
    """Logits from an onnxruntime session, as a function of a CPU or CUDA float tensor."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def __call__(self, x: Tensor) -> Tensor:
        """Logits for a [n, obs_dim] float32 batch (returned on the CPU)."""
        (logits,) = self.session.run([OUTPUT], {INPUT: x.detach().cpu().numpy().astype(np.float32, copy=False)})
        return torch.from_numpy(logits)


def read(path: Path, device: torch.device) -> tuple[OnnxRuntimePolicy, dict[str, Any]]:
    """An onnxruntime session for `path` (CUDA provider for a CUDA device), and the model's dimensions."""
    ort = require_extra("onnxruntime", "reading an .onnx file")
    provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        raise ConfigError(f"{path}: onnxruntime here has no {provider} (install onnxruntime-gpu for device=cuda)")
    try:
        session = ort.InferenceSession(str(path), providers=[provider])
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"{path} is not a readable ONNX model ({first})") from None
    metadata = session.get_modelmeta().custom_metadata_map
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if CONFIG_KEY in metadata:
        config = json.loads(metadata[CONFIG_KEY])
        dims = {"obs_dim": int(config["input_dim"]), "n_actions": int(config["output_dim"])}
    elif [i.name for i in inputs] == [INPUT] and isinstance(inputs[0].shape[-1], int):
        dims = {"obs_dim": inputs[0].shape[-1], "n_actions": outputs[0].shape[-1]}
    else:
        raise ConfigError(f"{path}: not an ONNX policy exported by agent_lightning (input {INPUT!r} [batch, obs_dim])")
    return OnnxRuntimePolicy(session), {**dims, **DataSchema.from_json(metadata.get(SCHEMA_KEY)).as_names()}
