"""agent_lightning: train AI-agent policy networks with PyTorch Lightning and Hydra."""

from agent_lightning.model import AgentMLP
from agent_lightning.module import AgentModule

__all__ = ["AgentMLP", "AgentModule"]
__version__ = "0.1.0"
