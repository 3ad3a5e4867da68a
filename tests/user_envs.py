"""Environments of a user's own, as `module:Id` names them: `gymnasium.make("tests.user_envs:Reach-v0")`.

Reach: walk a point on a line to a target with actions -1, 0, +1 (`Discrete(3, start=-1)`); the other
environments fail in the ways a user's environment can: no episode limit, a NaN observation, an error.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class Reach(gym.Env):
    """Position and target in [-10, 10]; reward -1 per step until the point is on the target (return = -steps)."""

    made = 0  # copies constructed in this process: a simulator can be slow to start

    def __init__(
        self,
        nan_at: int | None = None,
        raise_at: int | None = None,
        endless: bool = False,
        nan_reward_at: int | None = None,
        fail_to_start: bool = False,
    ) -> None:
        if fail_to_start:
            raise ValueError("no licence for the simulator")
        Reach.made += 1
        self.observation_space = spaces.Box(-10.0, 10.0, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Discrete(3, start=-1)
        self.nan_at, self.raise_at, self.endless, self.nan_reward_at = nan_at, raise_at, endless, nan_reward_at
        self.position, self.target, self.steps = 0, 0, 0

    def _observation(self) -> np.ndarray:
        if self.nan_at is not None and self.steps >= self.nan_at:
            return np.array([np.nan, self.target], dtype=np.float32)
        return np.array([self.position, self.target], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.position, self.target = (int(v) for v in self.np_random.integers(-8, 9, size=2))
        self.steps = 0
        return self._observation(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        assert self.action_space.contains(action), f"invalid action {action!r}"
        self.steps += 1
        if self.raise_at is not None and self.steps >= self.raise_at:
            raise RuntimeError("the simulator lost its state")
        self.position = int(np.clip(self.position + int(action), -10, 10))
        reached = self.position == self.target and not self.endless
        reward = float("nan") if self.nan_reward_at is not None and self.steps >= self.nan_reward_at else -1.0
        return self._observation(), reward, reached, False, {}


def reach_expert(env: Any, obs: np.ndarray) -> int:
    """Step toward the target: -1, 0 or +1, the environment's own actions."""
    return int(np.sign(obs[1] - obs[0]))


class DictReach(gym.ObservationWrapper):
    """Reach with its observation as a Dict, as many environments give theirs: flattened by a wrapper."""

    def __init__(self, env: gym.Env | None = None) -> None:
        super().__init__(env or Reach())
        box = spaces.Box(-10.0, 10.0, shape=(1,), dtype=np.float32)
        self.observation_space = spaces.Dict({"position": box, "target": box})

    def observation(self, observation: np.ndarray) -> dict[str, np.ndarray]:
        return {"position": observation[:1], "target": observation[1:]}


gym.register("Reach-v0", entry_point=Reach, max_episode_steps=40, reward_threshold=-10)
gym.register("EndlessReach-v0", entry_point=Reach, kwargs={"endless": True})  # no max_episode_steps
gym.register("DictReach-v0", entry_point=DictReach, max_episode_steps=40)
