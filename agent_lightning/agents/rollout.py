"""Episodes in gymnasium environments: greedy evaluation on fixed seeds, and rollouts that record labelled states."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent_lightning.agents.environments import env_config, make_env, make_vector_env
from agent_lightning.errors import ConfigError

BatchActor = Callable[[np.ndarray], np.ndarray]  # observations [n, width] -> actions [n]
Actor = Callable[[Any, np.ndarray], int]  # (env, one observation) -> action, as experts are called


@dataclass(frozen=True)
class Episode:
    """One finished episode: the seed it was reset with, its return, its length and whether it succeeded."""

    seed: int
    ret: float
    length: int
    success: bool


def evaluate_policy(
    act: BatchActor,
    env: str | Mapping[str, Any],
    episodes: int,
    first_seed: int = 0,
    num_envs: int = 16,
    vectorization: str = "sync",
) -> list[Episode]:
    """Run `episodes` episodes on seeds first_seed.. with `act` choosing actions for a batch of observations.

    Each seed is one episode, counted once: every batch of copies is reset with its own seeds and stepped until
    all have ended; what a vector env's autoreset starts after an episode's end is ignored.
    """
    cfg = env_config(env)
    width = max(1, min(num_envs, episodes))
    vector = make_vector_env(cfg, width, vectorization)
    results: list[Episode] = []
    try:
        for start in range(first_seed, first_seed + episodes, width):
            seeds = list(range(start, min(start + width, first_seed + episodes)))
            results += _run_batch(vector, act, seeds, width, float(cfg.success_threshold))
    finally:
        vector.close()
    return results


def _run_batch(vector: Any, act: BatchActor, seeds: list[int], width: int, threshold: float) -> list[Episode]:
    padded = seeds + [seeds[-1]] * (width - len(seeds))  # spare copies of a last, smaller batch are ignored
    obs, _ = vector.reset(seed=padded)
    active = np.arange(width) < len(seeds)
    returns = np.zeros(width)
    lengths = np.zeros(width, dtype=np.int64)
    while active.any():
        actions = np.asarray(act(np.asarray(obs, dtype=np.float32)), dtype=np.int64)
        obs, reward, terminated, truncated, _ = vector.step(actions)
        returns[active] += reward[active]
        lengths[active] += 1
        active &= ~(terminated | truncated)
    return [Episode(s, float(returns[i]), int(lengths[i]), bool(returns[i] >= threshold)) for i, s in enumerate(seeds)]


def summarize(episodes: list[Episode]) -> dict[str, float]:
    """Mean, std, min and max return, success rate and mean length over the episodes."""
    returns = np.array([e.ret for e in episodes])
    return {
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "return_min": float(returns.min()),
        "return_max": float(returns.max()),
        "success_rate": float(np.mean([e.success for e in episodes])),
        "length_mean": float(np.mean([e.length for e in episodes])),
        "episodes": float(len(episodes)),
    }


def summary_line(stats: Mapping[str, float]) -> str:
    """`return mean=.. std=.. min=.. max=.. success=.. length=..`: the line `evaluate` prints."""
    return (
        f"return mean={stats['return_mean']:.2f} std={stats['return_std']:.2f} min={stats['return_min']:.2f} "
        f"max={stats['return_max']:.2f} success={stats['success_rate']:.2f} length={stats['length_mean']:.1f}"
    )


@dataclass
class Rollout:
    """States visited by an actor, each labelled with the labeller's action, and the episode it belongs to."""

    observations: np.ndarray
    actions: np.ndarray
    episodes: np.ndarray
    returns: list[float]  # the actor's return in each finished episode

    def __len__(self) -> int:
        return len(self.actions)


def _chosen(actor: Actor, env: Any, obs: np.ndarray, role: str = "expert") -> int:
    """The actor's action for `obs`; ConfigError in one line when it fails or is not one of the env's actions.

    `role` says what the actor is in the message: the `expert` (a user's function) or the `learner` (a policy).
    """
    # A user's expert by its function's name; the learner (a policy wrapped for acting) by its role.
    name = getattr(actor, "__name__", None) or type(actor).__name__ if role == "expert" else f"the {role}"
    try:
        action = actor(env.unwrapped, obs)
    except Exception as err:  # the actor's own error, said in its words
        what = " (an expert is a function (env, obs) -> action)" if role == "expert" else ""
        raise ConfigError(f"{name} raised {type(err).__name__}: {err}{what}") from None
    count = getattr(env.action_space, "n", None)
    number = action.item() if isinstance(action, np.ndarray) and action.size == 1 else action
    if isinstance(number, bool) or not isinstance(number, int | np.integer) or (count and not 0 <= number < count):
        valid = f"0..{int(count) - 1}" if count else "a whole number"
        raise ConfigError(f"{name} returned {action!r} for an observation: an action of {env.spec.id} is {valid}")
    return int(number)


def rollout(
    env: str | Mapping[str, Any],
    steps: int,
    act: Actor,
    label: Actor | None = None,
    seed: int = 0,
    first_episode: int = 0,
) -> Rollout:
    """Step `act` through episodes (seeds seed, seed+1, ...) for `steps` steps; record `label`'s action per state.

    `label` defaults to `act` (demonstrations); DAgger passes the expert as `label` and the learner as `act`.
    The last episode stops where `steps` runs out; only finished episodes count in `returns`.
    """
    label = label or act
    made = make_env(env)
    observations, actions, episode_ids, returns = [], [], [], []
    episode = 0
    try:
        while len(actions) < steps:
            obs, _ = made.reset(seed=seed + episode)
            total, done = 0.0, False
            while not done and len(actions) < steps:
                wanted = _chosen(label, made, obs)
                taken = wanted if label is act else _chosen(act, made, obs, role="learner")
                observations.append(np.asarray(obs, dtype=np.float32))
                actions.append(wanted)
                episode_ids.append(first_episode + episode)
                obs, reward, terminated, truncated, _ = made.step(taken)
                total += float(reward)
                done = terminated or truncated
            if done:
                returns.append(total)
            episode += 1
    finally:
        made.close()
    return Rollout(np.stack(observations), np.asarray(actions), np.asarray(episode_ids, dtype=np.int64), returns)


def random_returns(env: str | Mapping[str, Any], episodes: int, seed: int = 0) -> list[float]:
    """Returns of a uniformly random policy on seeds seed.., the floor an expert's return is read against."""
    made = make_env(env)
    made.action_space.seed(seed)
    returns = []
    try:
        for index in range(episodes):
            made.reset(seed=seed + index)
            total, done = 0.0, False
            while not done:
                _, reward, terminated, truncated, _ = made.step(made.action_space.sample())
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        made.close()
    return returns
