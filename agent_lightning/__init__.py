"""agent_lightning: train AI-agent policy networks with PyTorch Lightning and Hydra."""

from __future__ import annotations

from typing import Any

__all__ = ["AgentMLP", "AgentModule", "Policy"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Imported on first use, so tools that need no Lightning (e.g. `agent_lightning.prepare`) start fast.
    if name == "AgentMLP":
        from agent_lightning.model import AgentMLP

        return AgentMLP
    if name == "AgentModule":
        from agent_lightning.module import AgentModule

        return AgentModule
    if name == "Policy":
        from agent_lightning.agents.policy import Policy

        return Policy
    raise AttributeError(f"module 'agent_lightning' has no attribute {name!r}")
