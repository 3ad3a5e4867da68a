"""Evaluate a trained policy: `python -m agent_lightning.evaluate ckpt_path=... env=lunarlander episodes=20`.

In an environment: greedy actions on seeds 0..N-1, one line `return mean=.. std=.. min=.. max=.. success=..
length=..`, and `episodes.csv` + `returns.png` in the run directory. On a prepared dataset
(`data=dataset data.path=DIR`): the classification report of the dataset's test split.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from agent_lightning.agents.environments import VECTORIZATIONS, EnvFacts, env_names
from agent_lightning.arguments import SEED, SEED_VALID, Rule, check_arguments, choice, whole
from agent_lightning.config import hydra_command
from agent_lightning.errors import ConfigError

log = logging.getLogger("agent_lightning.evaluate")

RULES: tuple[Rule, ...] = (
    Rule("episodes", whole(1), "a whole number of episodes >= 1"),
    Rule("first_seed", SEED, SEED_VALID),
    Rule("num_envs", whole(1), "a whole number of environments >= 1"),
    Rule("vectorization", choice(*VECTORIZATIONS), " or ".join(VECTORIZATIONS)),
    Rule("split", choice("train", "val", "test"), "train, val or test"),
    Rule("record", whole(0), "a whole number of episodes to record as GIFs >= 0"),
)


def evaluate_in_env(cfg: DictConfig, output_dir: Path) -> dict[str, float]:
    """Roll the checkpoint's greedy policy for `cfg.episodes` episodes; write episodes.csv and returns.png."""
    from agent_lightning.agents.acting import batch_actor
    from agent_lightning.agents.environments import env_config, env_facts
    from agent_lightning.agents.policy import Policy
    from agent_lightning.agents.reports import write_episodes_csv, write_returns_histogram
    from agent_lightning.agents.rollout import evaluate_policy, summarize

    policy = Policy.load(cfg.ckpt_path)
    env = env_config(_env_of(cfg, policy))
    facts = env_facts(env)
    check_fits(policy, facts, str(cfg.ckpt_path))
    episodes = evaluate_policy(
        batch_actor(policy), env, cfg.episodes, cfg.first_seed, cfg.num_envs, cfg.vectorization, facts=facts
    )
    stats = summarize(episodes)
    write_episodes_csv(episodes, output_dir / "episodes.csv")
    title = f"{env.id}: {len(episodes)} episodes, mean {stats['return_mean']:.1f}"
    write_returns_histogram(episodes, output_dir / "returns.png", title, facts.success_threshold)
    if cfg.record:
        from agent_lightning.agents.recording import record_episodes

        seeds = [e.seed for e in episodes[: int(cfg.record)]]
        record_episodes(batch_actor(policy), env, seeds, output_dir)
    return stats


def _env_of(cfg: DictConfig, policy: Any) -> Any:
    """The env to play: `env=` as given, else the one the checkpoint's demonstrations were collected in."""
    collected = policy.env
    if cfg.get("env") is None:
        if collected is None:
            raise ConfigError(
                f"nothing to evaluate on: ckpt_path={cfg.ckpt_path} records no env it was collected in; give "
                f"env=<name> (one of {', '.join(env_names())}) or data=dataset data.path=DIR"
            )
        log.info("env: %s, where the checkpoint's demonstrations were collected", collected["id"])
        return collected
    if collected is not None and collected["id"] != cfg.env.get("id"):  # a variant may be meant: said, not refused
        log.warning(
            "ckpt_path=%s was trained on demonstrations of %s, evaluated here in %s", cfg.ckpt_path, collected["id"],
            cfg.env.get("id"),
        )  # fmt: skip
    return cfg.env


def check_fits(policy: Any, env: EnvFacts, where: str) -> None:
    """ConfigError when the policy's input width or action count is not the environment's."""
    if policy.obs_dim != env.observation_width or policy.n_actions != env.action_count:
        raise ConfigError(
            f"ckpt_path={where} maps {policy.obs_dim} observations to {policy.n_actions} actions, but "
            f"{env.id} has {env.observation_width} observations and {env.action_count} actions: use the env it was "
            "trained for"
        )


def evaluate_on_dataset(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Per-class precision/recall/F1, confusion matrix and calibration of the policy on a prepared dataset."""
    try:
        from agent_lightning.agents.policy import Policy
        from agent_lightning.evaluation.classification import evaluate_dataset
    except ImportError as err:  # a core package that does not import: name it rather than the feature
        raise ConfigError(f"data=dataset evaluation cannot import {err.name or err}: reinstall it ({err})") from None
    from agent_lightning.runs.data_schema import DataSchema, check_same_schema

    policy = Policy.load(cfg.ckpt_path)  # its own one-line errors first (e.g. a program named as weights)
    check_same_schema(f"ckpt_path={cfg.ckpt_path}", DataSchema(policy.feature_names, policy.class_names), cfg.data)
    return evaluate_dataset(policy, cfg.data.path, split=cfg.split, output_dir=output_dir)


def check_request(cfg: DictConfig) -> None:
    """ConfigError naming the first missing or invalid key, before any checkpoint is read."""
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise ConfigError("ckpt_path is required: a checkpoint (file or sharded directory) or an export")
    check_arguments(cfg, RULES)
    if cfg.get("data") is not None and "path" not in cfg.data:  # synthetic or stream: nothing to score on
        raise ConfigError("evaluate reads a prepared dataset: data=dataset data.path=DIR (or env=<name>)")
    if cfg.get("data") is not None and cfg.get("env") is not None:  # one would be ignored without a word
        raise ConfigError("give env=<name> or data=dataset data.path=DIR, not both: evaluate scores one at a time")


@hydra_command("evaluate")
def main(cfg: DictConfig) -> None:
    """Command line: evaluate one checkpoint; a bad input exits 2 with one line."""
    output_dir = Path(cfg.paths.output_dir)
    check_request(cfg)
    if not Path(str(cfg.ckpt_path)).exists():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path} does not exist")
    if cfg.get("data") is not None:
        from agent_lightning.evaluation.classification import summary_line as dataset_line

        print(dataset_line(evaluate_on_dataset(cfg, output_dir)), flush=True)
        log.info("metrics.json, per_class.csv and figures in %s", output_dir)
        return
    stats = evaluate_in_env(cfg, output_dir)
    from agent_lightning.agents.rollout import summary_line

    print(summary_line(stats), flush=True)
    gifs = f" and episode_<seed>.gif for seeds {cfg.first_seed}.." if cfg.record else ""
    log.info("episodes.csv and returns.png%s in %s", gifs, output_dir)


if __name__ == "__main__":
    main()
