"""Collect demonstrations: `python -m agent_lightning.collect env=lunarlander expert=heuristic steps=50000 output=DIR`.

Rolls the expert in the environment and writes a prepared dataset (train with `data=dataset data.path=DIR`),
split by episode; the expert's and a random policy's mean returns are printed and kept in the manifest.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from agent_lightning.arguments import (
    SEED,
    SEED_VALID,
    Rule,
    boolean,
    check_arguments,
    fraction,
    name_or_none,
    path,
    whole,
)
from agent_lightning.config import hydra_command
from agent_lightning.errors import ConfigError

log = logging.getLogger("agent_lightning.collect")

RULES: tuple[Rule, ...] = (
    Rule("output", path, "the directory to write the dataset to, e.g. output=data/demos"),
    Rule("steps", whole(1), "a whole number of steps >= 1"),
    Rule("expert", name_or_none, "a built-in expert or module:function (or null: the env's own)"),
    Rule("seed", SEED, SEED_VALID),
    Rule("val_fraction", fraction, "a number in [0, 1)"),
    Rule("test_fraction", fraction, "a number in [0, 1)"),
    Rule("random_episodes", whole(0), "a whole number of episodes >= 0"),
    Rule("overwrite", boolean, "true or false"),
)


def collect(
    env: Any,
    output: str | Path,
    steps: int = 50_000,
    expert: str | None = None,
    seed: int = 1000,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    random_episodes: int = 20,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Roll the expert for `steps` steps, write the prepared dataset at `output` and return its manifest."""
    from agent_lightning.agents.demonstrations import mean_or_nan, write_demonstrations
    from agent_lightning.agents.environments import env_config, space_sizes
    from agent_lightning.agents.experts import resolve_expert
    from agent_lightning.agents.rollout import random_returns, rollout
    from agent_lightning.prepare import check_output

    check_arguments(locals(), RULES)
    cfg = env_config(env)
    expert_name = expert or cfg.get("expert")
    if not expert_name:
        raise ConfigError(f"env {cfg.id} names no default expert: give expert=<name or module:function>")
    actor = resolve_expert(str(expert_name), env_id=str(cfg.id))
    output = Path(output)
    check_output(output, overwrite)  # before minutes of rolling out
    _, n_actions = space_sizes(cfg)
    data = rollout(cfg, steps, actor, seed=seed)
    randoms = random_returns(cfg, random_episodes, seed=seed) if random_episodes > 0 else []
    provenance = {
        "env": cfg.id,
        "env_config": OmegaConf.to_container(cfg, resolve=True),  # what a policy trained on it is evaluated in
        "expert": str(expert_name),
        "steps": len(data),
        "episodes": len(set(data.episodes.tolist())),
        "finished_episodes": len(data.returns),
        "expert_return_mean": mean_or_nan(data.returns),
        "random_return_mean": mean_or_nan(randoms),
        "random_episodes": len(randoms),
        "seed": seed,
    }
    return write_demonstrations(data, output, n_actions, provenance, val_fraction, test_fraction, seed, overwrite)


def summary(manifest: dict[str, Any], output: str | Path) -> str:
    """The line `collect` prints: rows per split, the expert's and a random policy's mean returns."""
    p, splits = manifest["provenance"], manifest["splits"]
    rows = ", ".join(f"{s} {splits[s]['rows']:,}" for s in ("train", "val", "test"))
    # Whole episodes go to a split by a hash of each: a few long episodes can leave an asked-for split empty.
    asked = manifest.get("source", {})
    empty = [s for s in ("val", "test") if asked.get(f"{s}_fraction", 0) > 0 and not splits[s]["rows"]]
    if empty:
        rows += (
            f"; no {' or '.join(empty)} episode among {p['episodes']}"
            + (": a run on it trains without validation and keeps its final weights" if "val" in empty else "")
            + "; more steps give more episodes"
        )
    return (
        f"wrote {output}: {p['steps']:,} steps in {p['episodes']} episodes ({rows}); expert {p['expert']} return "
        f"mean={p['expert_return_mean']:.2f} over {p['finished_episodes']} finished episodes, random policy "
        f"mean={p['random_return_mean']:.2f}; train with: python -m agent_lightning.train data=dataset "
        f"data.path={output}"
    )


@hydra_command("collect")
def main(cfg: DictConfig) -> None:
    """Command line: collect one dataset; a bad input exits 2 with one line."""
    if OmegaConf.is_missing(cfg, "output"):
        raise ConfigError("output is required: the directory to write the prepared dataset to")
    # The values go in as given (no int()/bool()): `steps=abc` and `overwrite=no` are refused by RULES.
    manifest = collect(
        cfg.get("env"),
        cfg.output,
        cfg.steps,
        cfg.expert,
        cfg.seed,
        cfg.val_fraction,
        cfg.test_fraction,
        cfg.random_episodes,
        cfg.overwrite,
    )
    print(summary(manifest, cfg.output), flush=True)


if __name__ == "__main__":
    main()
