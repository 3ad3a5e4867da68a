"""gymnasium environments from `conf/env/<name>.yaml`: one for rolling an expert, a vector of them for evaluation.

gymnasium (and box2d for LunarLander) come with the optional extra: pip install 'lightning-agent-trainer[env]'.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from agent_lightning.config import config_dir, group_option_names
from agent_lightning.errors import ConfigError

INSTALL_HINT = "pip install 'lightning-agent-trainer[env]'"
VECTORIZATIONS = ("sync", "async")


def env_names() -> list[str]:
    """The environments configured under `conf/env/`."""
    return group_option_names("env")


def env_config(env: str | Mapping[str, Any] | None) -> DictConfig:
    """The env config: a name from `conf/env/` or an already composed mapping; ConfigError listing valid names."""
    if env is None:
        raise ConfigError(f"env is not set: choose one of {', '.join(env_names())} (e.g. env=cartpole)")
    if isinstance(env, str):
        path = config_dir() / "env" / f"{env}.yaml"
        if not path.is_file():
            raise ConfigError(f"env={env!r} is unknown: choose one of {', '.join(env_names())}")
        loaded = OmegaConf.load(path)
        assert isinstance(loaded, DictConfig)
        return loaded
    cfg = env if isinstance(env, DictConfig) else OmegaConf.create(dict(env))
    if not cfg.get("id"):
        raise ConfigError("env.id is not set: name a gymnasium environment id, e.g. env.id=CartPole-v1")
    return cfg


def gymnasium() -> Any:
    """The gymnasium module; ConfigError naming the extra when it is not installed."""
    try:
        return importlib.import_module("gymnasium")
    except ImportError:
        raise ConfigError(f"environments need gymnasium: {INSTALL_HINT}") from None


def _make_kwargs(cfg: DictConfig) -> dict[str, Any]:
    given = cfg.get("kwargs")
    kwargs = OmegaConf.to_container(given, resolve=True) if isinstance(given, DictConfig) else dict(given or {})
    assert isinstance(kwargs, dict)
    if cfg.get("max_episode_steps"):
        kwargs["max_episode_steps"] = int(cfg.max_episode_steps)
    return kwargs


def make_env(env: str | Mapping[str, Any]) -> Any:
    """One gymnasium environment (with its time limit) for the configured id."""
    cfg = env_config(env)
    gym = gymnasium()
    try:
        made = gym.make(cfg.id, **_make_kwargs(cfg))
    except gym.error.DependencyNotInstalled as err:
        raise ConfigError(f"env.id={cfg.id} needs a package that is missing ({err}): {INSTALL_HINT}") from None
    except gym.error.Error as err:  # unknown id, wrong version, bad kwargs
        raise ConfigError(f"env.id={cfg.id}: {str(err).splitlines()[0]}") from None
    except TypeError as err:
        raise ConfigError(f"env.kwargs for {cfg.id}: {err}") from None
    try:
        _check_spaces(made, cfg.id)
    except ConfigError:
        made.close()
        raise
    return made


def make_vector_env(env: str | Mapping[str, Any], num_envs: int, vectorization: str = "sync") -> Any:
    """`num_envs` copies in one gymnasium vector env: `sync` (one process) or `async` (a process per copy)."""
    if vectorization not in VECTORIZATIONS:
        raise ConfigError(f"vectorization={vectorization!r} is not one of {', '.join(VECTORIZATIONS)}")
    cfg = env_config(env)
    make_env(cfg).close()  # a bad id or a missing package fails here, as one line, not inside a worker
    gym = gymnasium()
    kwargs = _make_kwargs(cfg)
    return gym.make_vec(cfg.id, num_envs=num_envs, vectorization_mode=vectorization, **kwargs)


def _check_spaces(env: Any, env_id: str) -> None:
    """Policies here map an observation vector (a 1-d Box) to one of n discrete actions."""
    from gymnasium.spaces import Box, Discrete

    if not isinstance(env.action_space, Discrete):
        raise ConfigError(
            f"env.id={env_id} has {env.action_space} actions: policies here choose among discrete actions "
            "(for LunarLander keep env.kwargs.continuous=false)"
        )
    space = env.observation_space
    if not isinstance(space, Box) or len(space.shape) != 1:
        raise ConfigError(
            f"env.id={env_id} has {space} observations: policies here read a vector of numbers (a 1-d Box), e.g. "
            "CartPole-v1; wrap the env to flatten or one-hot its observations"
        )


def space_sizes(env: str | Mapping[str, Any]) -> tuple[int, int]:
    """(observation width, number of actions) of the environment."""
    made = make_env(env)
    try:
        return int(made.observation_space.shape[0]), int(made.action_space.n)
    finally:
        made.close()


def check_env_eval(cfg: DictConfig) -> None:
    """ConfigError (before any rank starts) when `env_eval` names an unknown env or one the model does not fit."""
    spec = cfg.get("env_eval")
    if not spec:
        return
    if "env" not in spec:
        raise ConfigError("env_eval needs an env, e.g. env_eval='{env: cartpole}' or +env_eval.env=cartpole")
    known = ("env", "episodes", "first_seed", "num_envs")
    unknown = sorted(str(key) for key in spec if key not in known)
    if unknown:  # a typo (`episode`) would silently play the default count
        raise ConfigError(f"env_eval.{unknown[0]} is not a setting of env_eval: use {', '.join(known)}")
    width, actions = space_sizes(env_config(spec.env))
    model = cfg.get("model") or {}
    for key, value, what in (("input_dim", width, "observations"), ("output_dim", actions, "actions")):
        if model.get(key) is not None and int(model[key]) != value:
            raise ConfigError(
                f"env_eval.env={spec.env} has {value} {what} but model.{key}={model[key]}: evaluate on the env "
                "the data came from"
            )
    if int(spec.get("episodes", 20)) < 1:
        raise ConfigError(f"env_eval.episodes={spec.episodes} must be >= 1")
