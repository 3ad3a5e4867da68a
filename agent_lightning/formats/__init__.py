"""Files a trained policy is exported to and loaded from: torch (.pt), safetensors, ONNX, TorchScript.

Each format module writes an `AgentMLP` with its model config (so a loader can rebuild or describe it)
and reads it back as a function from observations to logits, for `agent_lightning.Policy`.
"""

from agent_lightning.formats.registry import FORMATS, format_for_path, require_extra

__all__ = ["FORMATS", "format_for_path", "require_extra"]
