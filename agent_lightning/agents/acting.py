"""A trained policy as the two kinds of actor rollouts use: a batch of observations, or (env, one observation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent_lightning.agents.rollout import Actor, BatchActor


def greedy_batch_actor(model: torch.nn.Module) -> BatchActor:
    """Argmax actions of `model` (raw observations in; its normaliser applies the saved statistics)."""
    model = model.eval()
    device = next(model.parameters()).device

    def act(observations: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.as_tensor(np.asarray(observations, dtype=np.float32), device=device)
            return model(x).argmax(dim=-1).cpu().numpy()

    return act


def single_actor(act: BatchActor) -> Actor:
    """The same policy called as an expert is: (env, one observation) -> int."""

    def one(env: Any, observation: np.ndarray) -> int:
        return int(act(np.asarray(observation, dtype=np.float32)[None])[0])

    return one


def load_model(path: str | Path) -> torch.nn.Module:
    """The policy network of a checkpoint (any strategy, file or sharded directory) or an export, in eval mode."""
    from agent_lightning.export import load_agent

    return load_agent(path)
