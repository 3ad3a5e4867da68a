"""A trained policy as the two kinds of actor rollouts use: a batch of observations, or (env, one observation)."""

from __future__ import annotations

from typing import Any

import numpy as np

from agent_lightning.agents.policy import Policy
from agent_lightning.agents.rollout import Actor, BatchActor


def batch_actor(policy: Policy) -> BatchActor:
    """Greedy actions of `policy` for a batch of raw observations (its normaliser applies the saved statistics)."""

    def act(observations: np.ndarray) -> np.ndarray:
        return np.asarray(policy.act(np.asarray(observations, dtype=np.float32)))

    return act


def single_actor(policy: Policy) -> Actor:
    """The same policy called as an expert is: (env, one observation) -> int."""

    def one(env: Any, observation: np.ndarray) -> int:
        return int(policy.act(np.asarray(observation, dtype=np.float32)))

    return one
