"""Agents that act: a trained policy network as a function from observations to actions."""

from agent_lightning.agents.policy import Policy

__all__ = ["Policy"]
