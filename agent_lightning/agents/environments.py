"""gymnasium environments from `conf/env/<name>.yaml`: one for rolling an expert, a vector of them for evaluation.

An env config names a gymnasium id and, optionally, `kwargs` for `gymnasium.make`, an episode cap, a success
threshold (both default to what the id registered), the default expert and gymnasium wrappers to apply.
gymnasium (and box2d for LunarLander) come with the optional extra: pip install 'lightning-agent-trainer[env]'.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import numbers
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from agent_lightning.config import config_dir
from agent_lightning.errors import ConfigError

INSTALL_HINT = "pip install 'lightning-agent-trainer[env]'"
VECTORIZATIONS = ("sync", "async")
ENV_KEYS = ("id", "kwargs", "max_episode_steps", "success_threshold", "expert", "wrappers")
FLATTEN_HINT = "env.wrappers='[{_target_: gymnasium.wrappers.FlattenObservation}]'"


@contextlib.contextmanager
def _hydra() -> Iterator[Any]:
    """Hydra's config loader: the running command's (its `-cd` dirs and search path), else the package's alone."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        yield GlobalHydra.instance().config_loader()
        return
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


def env_names() -> list[str]:
    """The environments Hydra finds: `conf/env/` and the `env/` of a config dir added with `-cd` or a search path."""
    with _hydra() as loader:
        return sorted({*loader.get_group_options("env"), *(p.stem for p in (config_dir() / "env").glob("*.yaml"))})


def _composed(name: str) -> DictConfig:
    """The env option `name` as `env=name` composes it (defaults lists included), from wherever Hydra finds it."""
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # a command's own search path: composed each time
        with _hydra() as loader:
            found = name in loader.get_group_options("env")
        preset = config_dir() / "env" / f"{name}.yaml"
        if not found and preset.is_file():  # Hydra set up by another app (a notebook's): the package's own preset
            return OmegaConf.create(OmegaConf.to_container(OmegaConf.load(preset)))
        return _compose_env(name)
    # From Python, the package's presets alone: the same every time, and a composition costs ~0.1 s.
    return OmegaConf.create(OmegaConf.to_container(_package_env(name)))


@functools.cache
def _package_env(name: str) -> DictConfig:
    return _compose_env(name)


def _compose_env(name: str) -> DictConfig:
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException

    overrides = [f"+env={name}"]
    if HydraConfig.initialized() and HydraConfig.get().searchpath:  # `hydra.searchpath=` of the running command
        overrides.append(f"hydra.searchpath=[{','.join(HydraConfig.get().searchpath)}]")
    with _hydra() as loader:
        if name not in loader.get_group_options("env"):
            raise ConfigError(f"env={name!r} is unknown: choose one of {', '.join(env_names())}")
        try:
            composed = compose(overrides=overrides).env
        except (HydraException, ValueError) as err:
            raise ConfigError(f"env={name}: {' '.join(str(err).split())}") from None
    if not isinstance(composed, DictConfig):
        raise ConfigError(f"env={name} is not a mapping of env settings ({', '.join(ENV_KEYS)})")
    return composed


def env_config(env: str | Mapping[str, Any] | None) -> DictConfig:
    """The checked env config: a name (`conf/env/`, or a `-cd` dir's) or an already composed mapping."""
    if env is None:
        raise ConfigError(f"env is not set: choose one of {', '.join(env_names())} (e.g. env=cartpole)")
    if isinstance(env, str):
        cfg = _composed(env)
    elif isinstance(env, DictConfig | Mapping):
        cfg = env if isinstance(env, DictConfig) else OmegaConf.create(dict(env))
    else:
        raise ConfigError(f"env={env} is not a mapping of env settings ({', '.join(ENV_KEYS)}) or an env's name")
    _check_settings(cfg)
    return cfg


def _check_settings(cfg: DictConfig) -> None:
    """Each env key's value, or the first wrong one named: a typo would otherwise be ignored without a word."""
    if OmegaConf.is_missing(cfg, "id") or not cfg.get("id"):
        raise ConfigError("env.id is not set: name a gymnasium environment id, e.g. env=gym env.id=CartPole-v1")
    unknown = sorted(str(key) for key in cfg if key not in ENV_KEYS)
    if unknown:  # a typo (`max_steps`) would be ignored without a word
        raise ConfigError(
            f"env.{unknown[0]} is not an env setting: use {', '.join(ENV_KEYS)} (a note belongs in a # comment)"
        )
    steps = cfg.get("max_episode_steps")
    if steps is not None and (not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 1):
        raise ConfigError(
            f"env.max_episode_steps={steps} must be a whole number of steps >= 1, or null for the id's registered limit"
        )
    threshold = cfg.get("success_threshold")
    real = isinstance(threshold, numbers.Real) and not isinstance(threshold, bool)
    if threshold is not None and not (real and math.isfinite(threshold)):  # every return is below nan
        raise ConfigError(
            f"env.success_threshold={threshold!r} must be a finite number (a return), or null for the id's "
            "reward_threshold"
        )
    if cfg.get("kwargs") is not None and not isinstance(cfg.kwargs, DictConfig | dict):
        raise ConfigError(f"env.kwargs={cfg.kwargs} must be a mapping of gymnasium.make arguments, e.g. '{{}}'")
    wrappers = cfg.get("wrappers")
    if wrappers is not None and not isinstance(wrappers, ListConfig | list):
        raise ConfigError(f"env.wrappers must be a list of wrappers, e.g. {FLATTEN_HINT}")
    for index, wrapper in enumerate(wrappers or []):
        if not isinstance(wrapper, DictConfig | dict) or not wrapper.get("_target_"):
            raise ConfigError(
                f"env.wrappers[{index}]={wrapper} must name its class as _target_ (its arguments beside it), "
                f"e.g. {FLATTEN_HINT}"
            )


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
    if cfg.get("max_episode_steps") is not None:
        kwargs["max_episode_steps"] = int(cfg.max_episode_steps)
    return kwargs


def _apply_wrapper(index: int, spec: dict[str, Any], env: Any) -> Any:
    """`spec`'s wrapper class around `env` (a module-level function: async vector envs pickle it)."""
    import hydra

    try:
        return hydra.utils.instantiate(spec, env)
    except Exception as err:  # an unknown class or a wrong argument: Hydra's message (or its cause's), on one line
        located = isinstance(err.__cause__, ImportError)  # Hydra's own line would only point at HYDRA_FULL_ERROR
        said = " ".join(str(err.__cause__ if located else err).split()) or type(err).__name__
        raise ConfigError(f"env.wrappers[{index}] ({spec['_target_']}): {said}") from None


def _wrapper_factories(cfg: DictConfig) -> list[Callable[[Any], Any]]:
    specs = OmegaConf.to_container(cfg.wrappers, resolve=True) if cfg.get("wrappers") else []
    assert isinstance(specs, list)
    return [functools.partial(_apply_wrapper, index, spec) for index, spec in enumerate(specs)]


def make_env(env: str | Mapping[str, Any]) -> Any:
    """One gymnasium environment (with its time limit and the configured wrappers) for the configured id."""
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
    except ModuleNotFoundError as err:  # `module:Id` naming a module that does not import
        raise ConfigError(f"env.id={cfg.id}: {err} (a `module:Id` id imports the module that registers Id)") from None
    except Exception as err:  # the env's own constructor, or its module, failing: said in its words
        raise ConfigError(f"env.id={cfg.id} could not be made: {type(err).__name__}: {err}") from None
    try:
        _check_episode_cap(made, cfg.id)
        for wrap in _wrapper_factories(cfg):
            made = wrap(made)
        _check_spaces(made, cfg.id)
    except ConfigError:
        made.close()
        raise
    return made


def make_vector_env(
    env: str | Mapping[str, Any], num_envs: int, vectorization: str = "sync", checked: bool = False
) -> Any:
    """`num_envs` copies in one gymnasium vector env: `sync` (one process) or `async` (a process per copy).

    Unless the caller has made one copy already (`checked`), one is made first: a bad id, wrapper or missing
    package then fails here, as one line, not inside a worker.
    """
    if vectorization not in VECTORIZATIONS:
        raise ConfigError(f"vectorization={vectorization!r} is not one of {', '.join(VECTORIZATIONS)}")
    cfg = env_config(env)
    if not checked:
        make_env(cfg).close()
    gym = gymnasium()
    return gym.make_vec(
        cfg.id,
        num_envs=num_envs,
        vectorization_mode=vectorization,
        wrappers=_wrapper_factories(cfg) or None,
        **_make_kwargs(cfg),
    )


def _check_episode_cap(env: Any, env_id: str) -> None:
    """Every episode must end: an env without a registered or configured step limit could run forever."""
    spec = getattr(env, "spec", None)
    if spec is None or spec.max_episode_steps is None:
        raise ConfigError(
            f"env.id={env_id} registers no episode limit and env.max_episode_steps is not set: an episode that "
            "never ends would never finish; set env.max_episode_steps=N"
        )


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
            f"CartPole-v1; flatten them with {FLATTEN_HINT}"
        )


@dataclass(frozen=True)
class EnvFacts:
    """What rollouts and checks need of an environment, read once from a made copy."""

    id: str
    observation_width: int
    action_count: int
    # Discrete(n, start): the env's actions are start..start+n-1; a policy's classes are 0..n-1.
    action_start: int
    max_episode_steps: int
    success_threshold: float | None  # None: none configured, and none registered for this episode cap


def env_facts(env: str | Mapping[str, Any]) -> EnvFacts:
    """The environment's sizes, action numbering, episode cap and success threshold (config first, then registry)."""
    cfg = env_config(env)
    made = make_env(cfg)
    try:
        threshold = cfg.get("success_threshold")
        if threshold is None and made.spec.max_episode_steps == _registered_cap(made):
            # A registered threshold is a return over the registered episode length: with a lower cap, a cut-short
            # MountainCar episode (-100 after 100 steps) would pass -110 without reaching the flag.
            threshold = made.spec.reward_threshold
        return EnvFacts(
            id=str(cfg.id),
            observation_width=int(made.observation_space.shape[0]),
            action_count=int(made.action_space.n),
            action_start=int(made.action_space.start),
            max_episode_steps=int(made.spec.max_episode_steps),
            success_threshold=None if threshold is None else float(threshold),
        )
    finally:
        made.close()


def _registered_cap(env: Any) -> int | None:
    """The episode limit the id registered (the made env's spec holds the configured one)."""
    try:
        return gymnasium().spec(env.spec.id).max_episode_steps
    except Exception:  # an id made from a spec that is not in the registry
        return None


def space_sizes(env: str | Mapping[str, Any]) -> tuple[int, int]:
    """(observation width, number of actions) of the environment."""
    facts = env_facts(env)
    return facts.observation_width, facts.action_count


def check_env_eval(cfg: DictConfig) -> None:
    """ConfigError (before any rank starts) when `env_eval` names an unknown env or one the model does not fit.

    A name is replaced by its config here, where Hydra's search path (`-cd DIR`) is known: ranks read no files.
    """
    spec = cfg.get("env_eval")
    if not spec:
        return
    if "env" not in spec:
        raise ConfigError("env_eval needs an env, e.g. env_eval='{env: cartpole}' or +env_eval.env=cartpole")
    known = ("env", "episodes", "first_seed", "num_envs")
    unknown = sorted(str(key) for key in spec if key not in known)
    if unknown:  # a typo (`episode`) would silently play the default count
        raise ConfigError(f"env_eval.{unknown[0]} is not a setting of env_eval: use {', '.join(known)}")
    name = spec.env if isinstance(spec.env, str) else spec.env.get("id")
    try:
        resolved = env_config(spec.env)
        if isinstance(spec.env, str):
            spec.env = resolved
        width, actions = space_sizes(resolved)
    except ConfigError as err:  # said as the key the user set: env_eval.env...
        said = str(err)
        raise ConfigError(f"env_eval.{said}" if said.startswith("env") else f"env_eval: {said}") from None
    model = cfg.get("model") or {}
    for key, value, what in (("input_dim", width, "observations"), ("output_dim", actions, "actions")):
        if model.get(key) is not None and int(model[key]) != value:
            raise ConfigError(
                f"env_eval.env={name} has {value} {what} but model.{key}={model[key]}: evaluate on the env "
                "the data came from"
            )
    if int(spec.get("episodes", 20)) < 1:
        raise ConfigError(f"env_eval.episodes={spec.episodes} must be >= 1")
