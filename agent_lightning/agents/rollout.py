"""Episodes in gymnasium environments: greedy evaluation on fixed seeds, and rollouts that record labelled states.

Actions: a policy chooses a class 0..n-1; the environment's action is `start` + that class (gymnasium's
`Discrete(n, start)`). Experts answer in the environment's own actions, and are recorded as classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from agent_lightning.agents.environments import EnvFacts, env_config, env_facts, make_env, make_vector_env
from agent_lightning.errors import ConfigError

BatchActor = Callable[[np.ndarray], np.ndarray]  # observations [n, width] -> classes [n] (0..n_actions-1)
Actor = Callable[[Any, np.ndarray], int]  # (env, one observation) -> action, as experts are called
T = TypeVar("T")


@dataclass(frozen=True)
class Episode:
    """One finished episode: its seed, return and length, and whether it succeeded (None: no threshold)."""

    seed: int
    ret: float
    length: int
    success: bool | None


def guarded_env_call(env_id: str, where: str, call: Callable[[], T]) -> T:
    """`call()` (an env's reset or step); the env's own error becomes one line naming the env and the episode."""
    try:
        return call()
    except ConfigError:
        raise
    except Exception as err:  # a user's environment failing: said in its words, with where it happened
        raise ConfigError(f"env.id={env_id} raised {type(err).__name__} {where}: {err}") from None


def _check_finite(env_id: str, observation: np.ndarray, where: str) -> None:
    if not np.isfinite(observation).all():
        raise ConfigError(f"env.id={env_id} returned an observation holding NaN or inf {where}: {observation}")


def _check_reward(env_id: str, reward: float, where: str) -> None:
    if not math.isfinite(reward):  # a return of nan would pass as a number in every summary
        raise ConfigError(f"env.id={env_id} returned a reward of {reward} {where}")


def evaluate_policy(
    act: BatchActor,
    env: str | Mapping[str, Any],
    episodes: int,
    first_seed: int = 0,
    num_envs: int = 16,
    vectorization: str = "sync",
    facts: EnvFacts | None = None,
) -> list[Episode]:
    """Run `episodes` episodes on seeds first_seed.. with `act` choosing classes for a batch of observations.

    Each seed is one episode, counted once: every batch of copies is reset with its own seeds and stepped until
    all have ended; what a vector env's autoreset starts after an episode's end is ignored. `facts`, when the
    caller has read them, spare making the env once more (a simulator may be slow to start).
    """
    cfg = env_config(env)
    facts = facts if facts is not None else env_facts(cfg)
    width = max(1, min(num_envs, episodes))
    # Facts are read from a made copy, so the env is known to make: no check copy before the vector env's.
    vector = make_vector_env(cfg, width, vectorization, checked=True)
    results: list[Episode] = []
    try:
        for start in range(first_seed, first_seed + episodes, width):
            seeds = list(range(start, min(start + width, first_seed + episodes)))
            results += _run_batch(vector, act, seeds, width, facts)
    finally:
        vector.close()
    return results


def _run_batch(vector: Any, act: BatchActor, seeds: list[int], width: int, facts: EnvFacts) -> list[Episode]:
    padded = seeds + [seeds[-1]] * (width - len(seeds))  # spare copies of a last, smaller batch are ignored
    obs, _ = guarded_env_call(facts.id, f"in reset (seeds {seeds[0]}..{seeds[-1]})", lambda: vector.reset(seed=padded))
    active = np.arange(width) < len(seeds)
    returns = np.zeros(width)
    lengths = np.zeros(width, dtype=np.int64)
    while active.any():
        observations = np.asarray(obs, dtype=np.float32)
        finite = np.isfinite(observations).all(axis=1)
        if (active & ~finite).any():
            i = int(np.flatnonzero(active & ~finite)[0])
            _check_finite(facts.id, observations[i], f"(episode seed {padded[i]}, step {lengths[i]})")
        # A copy whose episode has ended steps on unseen: its observation need not be one the policy can read.
        observations[~finite] = 0.0
        actions = np.asarray(act(observations), dtype=np.int64) + facts.action_start
        stepping = f"in step (episode seeds {seeds[0]}..{seeds[-1]}, step {int(lengths[active].max())})"
        obs, reward, terminated, truncated, _ = guarded_env_call(facts.id, stepping, lambda a=actions: vector.step(a))
        if not np.isfinite(reward[active]).all():
            i = int(np.flatnonzero(active & ~np.isfinite(reward))[0])
            _check_reward(facts.id, float(reward[i]), f"(episode seed {padded[i]}, step {lengths[i]})")
        returns[active] += reward[active]
        lengths[active] += 1
        active &= ~(terminated | truncated)
    threshold = facts.success_threshold
    return [
        Episode(s, float(returns[i]), int(lengths[i]), None if threshold is None else bool(returns[i] >= threshold))
        for i, s in enumerate(seeds)
    ]


def summarize(episodes: list[Episode]) -> dict[str, float]:
    """Mean, std, min and max return, success rate (where a threshold is known) and mean length over the episodes."""
    returns = np.array([e.ret for e in episodes])
    stats = {
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "return_min": float(returns.min()),
        "return_max": float(returns.max()),
        "length_mean": float(np.mean([e.length for e in episodes])),
        "episodes": float(len(episodes)),
    }
    if all(e.success is not None for e in episodes):  # no success threshold: no rate, rather than a made-up one
        stats["success_rate"] = float(np.mean([e.success for e in episodes]))
    return stats


def summary_line(stats: Mapping[str, float]) -> str:
    """`return mean=.. std=.. min=.. max=.. success=.. length=..`: the line `evaluate` prints."""
    success = f" success={stats['success_rate']:.2f}" if "success_rate" in stats else ""
    return (
        f"return mean={stats['return_mean']:.2f} std={stats['return_std']:.2f} min={stats['return_min']:.2f} "
        f"max={stats['return_max']:.2f}{success} length={stats['length_mean']:.1f}"
    )


@dataclass
class Rollout:
    """States visited by an actor, each labelled with the labeller's action (as a class), and its episode."""

    observations: np.ndarray
    actions: np.ndarray
    episodes: np.ndarray
    returns: list[float]  # the actor's return in each finished episode

    def __len__(self) -> int:
        return len(self.actions)


def _chosen(actor: Actor, env: Any, obs: np.ndarray, role: str = "expert") -> int:
    """The actor's action for `obs`; ConfigError in one line when it fails or is not one of the env's actions.

    `role` says what the actor is: the `expert` (a user's function, answering in the env's actions) or the
    `learner` (a policy, answering with its class 0..n-1).
    """
    # A user's expert by its function's name; the learner (a policy wrapped for acting) by its role.
    name = getattr(actor, "__name__", None) or type(actor).__name__ if role == "expert" else f"the {role}"
    try:
        action = actor(env.unwrapped, obs)
    except Exception as err:  # the actor's own error, said in its words
        what = " (an expert is a function (env, obs) -> action)" if role == "expert" else ""
        raise ConfigError(f"{name} raised {type(err).__name__}: {err}{what}") from None
    count = int(env.action_space.n)
    start = int(env.action_space.start) if role == "expert" else 0
    number = action.item() if isinstance(action, np.ndarray) and action.size == 1 else action
    if isinstance(number, bool) or not isinstance(number, int | np.integer) or not start <= number < start + count:
        raise ConfigError(
            f"{name} returned {action!r} for an observation: an action of {env.spec.id} is {start}..{start + count - 1}"
        )
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
    cfg = env_config(env)
    made = make_env(cfg)
    start = int(made.action_space.start)
    observations, actions, episode_ids, returns = [], [], [], []
    episode = 0
    try:
        while len(actions) < steps:
            where = f"(episode seed {seed + episode}, step 0)"
            obs, _ = guarded_env_call(cfg.id, f"in reset {where}", lambda s=seed + episode: made.reset(seed=s))
            total, done, step = 0.0, False, 0
            while not done and len(actions) < steps:
                where = f"(episode seed {seed + episode}, step {step})"
                _check_finite(cfg.id, np.asarray(obs, dtype=np.float64), where)
                wanted = _chosen(label, made, obs)
                taken = wanted if label is act else start + _chosen(act, made, obs, role="learner")
                observations.append(np.asarray(obs, dtype=np.float32))
                actions.append(wanted - start)
                episode_ids.append(first_episode + episode)
                obs, reward, terminated, truncated, _ = guarded_env_call(
                    cfg.id, f"in step {where}", lambda a=taken: made.step(a)
                )
                _check_reward(cfg.id, float(reward), where)
                total += float(reward)
                done, step = terminated or truncated, step + 1
            if done:
                returns.append(total)
            episode += 1
    finally:
        made.close()
    return Rollout(np.stack(observations), np.asarray(actions), np.asarray(episode_ids, dtype=np.int64), returns)


def random_returns(env: str | Mapping[str, Any], episodes: int, seed: int = 0) -> list[float]:
    """Returns of a uniformly random policy on seeds seed.., the floor an expert's return is read against."""
    cfg = env_config(env)
    made = make_env(cfg)
    made.action_space.seed(seed)
    returns = []
    try:
        for index in range(episodes):
            where = f"(random policy, episode seed {seed + index})"
            guarded_env_call(cfg.id, f"in reset {where}", lambda s=seed + index: made.reset(seed=s))
            total, done = 0.0, False
            while not done:
                action = made.action_space.sample()
                stepped = guarded_env_call(cfg.id, f"in step {where}", lambda a=action: made.step(a))
                _, reward, terminated, truncated, _ = stepped
                _check_reward(cfg.id, float(reward), where)
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        made.close()
    return returns
