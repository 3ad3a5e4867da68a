"""DAgger: the learner drives, the expert labels every state it visits, the data grows, training continues.

Iteration 0 is behaviour cloning on expert demonstrations. Each later iteration rolls out the current
policy, labels the visited states with the expert's actions, writes the aggregate (all rows so far) as a
new prepared dataset, and trains from the previous iteration's weights (`init_from=`: weights only, fresh
optimizer and epoch count); every policy is evaluated greedily on seeds 0..episodes-1. A stopped run
continues from its last finished iteration (`resume=True`, see `dagger_state.py`), as if never stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from agent_lightning.agents.dagger_state import (
    clear_unfinished,
    finished_iterations,
    iteration_dir,
    save_iteration,
    start_run,
    stopped_line,
)
from agent_lightning.agents.demonstrations import mean_or_nan, write_demonstrations
from agent_lightning.agents.environments import env_facts
from agent_lightning.agents.experts import Expert
from agent_lightning.agents.rollout import Rollout, evaluate_policy, rollout, summarize, summary_line
from agent_lightning.errors import ConfigError, StoppedBySignalError
from agent_lightning.runs.overrides import quoted_value

log = logging.getLogger("agent_lightning.dagger")
# Rollout episode seeds: far from the evaluation seeds (0..episodes-1) and distinct per iteration.
SEED_STRIDE = 100_000
# The best iteration is chosen on seeds 0..episodes-1, so its return there is flattered by the choice;
# it is played again on seeds no iteration was chosen, trained or rolled out on.
HELD_OUT_SEED = 1_000_000_000


@dataclass(frozen=True)
class Iteration:
    """One DAgger iteration: the data it trained on, where its weights are, and how the policy played."""

    iteration: int
    rows: int
    new_rows: int
    rollout_return: float  # the policy that visited the new states (the expert for iteration 0)
    dataset: str
    checkpoint: str
    return_mean: float
    return_std: float
    success_rate: float


def check_seeds(seed: int, iterations: int, steps: int, episodes: int) -> None:
    """ConfigError when rollout episodes could be played on the evaluation or the held-out seeds.

    A rollout of `steps` steps plays at most `steps` episodes, iteration k's on seeds seed + k * SEED_STRIDE..;
    a policy evaluated on the episodes it was trained on would be flattered.
    """
    last = seed + iterations * SEED_STRIDE + steps - 1
    if seed < episodes:
        raise ConfigError(
            f"seed={seed}: rollout episodes would be played on the evaluation seeds 0..{episodes - 1}: give "
            f"seed={episodes} or more"
        )
    if last >= HELD_OUT_SEED and seed < HELD_OUT_SEED + episodes:
        raise ConfigError(
            f"seed={seed}: rollout episodes (seeds up to {last}) would be played on the held-out seeds "
            f"{HELD_OUT_SEED}..{HELD_OUT_SEED + episodes - 1}: give a seed below {HELD_OUT_SEED - (last - seed)} "
            f"or from {HELD_OUT_SEED + episodes}"
        )


def _concat(parts: Sequence[Rollout]) -> Rollout:
    return Rollout(
        np.concatenate([p.observations for p in parts]),
        np.concatenate([p.actions for p in parts]),
        np.concatenate([p.episodes for p in parts]),
        [r for p in parts for r in p.returns],
    )


def _checkpoint_of(result: dict[str, Any]) -> str:
    best = result.get("best_model_path") or ""
    if best and Path(best).exists():
        return str(best)
    last = Path(result["run_dir"]) / "checkpoints" / "last.ckpt"
    if last.exists():
        return str(last)
    raise RuntimeError(f"training in {result['run_dir']} left no checkpoint to continue from")


def train_iteration(overrides: Sequence[str], output_dir: Path) -> dict[str, Any]:
    """One training run in this process, as `python -m agent_lightning.train OVERRIDES` would run it."""
    from agent_lightning.config import compose_config
    from agent_lightning.train import train

    return train(compose_config(list(overrides), output_dir=output_dir))


def run_dagger(
    env: DictConfig,
    expert: Expert,
    expert_name: str,
    work_dir: Path,
    train_overrides: Sequence[str],
    iterations: int = 5,
    demo_steps: int = 50_000,
    rollout_steps: int = 10_000,
    episodes: int = 20,
    seed: int = 1000,
    continue_epochs: int | None = None,
    resume: bool = False,
) -> list[Iteration]:
    """BC on `demo_steps` expert steps, then `iterations` DAgger iterations; one `Iteration` per trained policy.

    With `resume`, the iterations `work_dir` holds finished are read back and the run goes on from the next
    (every seed depends on the iteration's number only, so the result is the uninterrupted run's).
    """
    from agent_lightning.agents.acting import batch_actor, single_actor
    from agent_lightning.agents.policy import Policy

    check_seeds(seed, iterations, max(demo_steps, rollout_steps), episodes)
    done = finished_iterations(work_dir, Iteration) if resume else []
    if len(done) > iterations + 1:
        raise ConfigError(
            f"iterations={iterations}, but the run in {work_dir} has finished iteration {len(done) - 1}: give "
            f"iterations={len(done) - 1} or more"
        )
    if resume:
        after = f"after iteration {len(done) - 1}" if done else "from iteration 0 (none had finished)"
        log.info("continuing %s %s", work_dir, after)
        clear_unfinished(work_dir, len(done))
    start_run(work_dir, iterations, resume)  # before any work: a stop from here on can be continued
    results = [record for record, _ in done]
    parts = [rows for _, rows in done]
    checkpoint = results[-1].checkpoint if results else None
    facts = env_facts(env)  # once: every iteration's evaluation plays the same env
    for index in range(len(done), iterations + 1):
        episode_base = index * SEED_STRIDE
        if checkpoint is None:
            new = rollout(env, demo_steps, expert, seed=seed, first_episode=episode_base)
        else:
            learner = single_actor(Policy.load(checkpoint))
            new = rollout(
                env, rollout_steps, learner, label=expert, seed=seed + episode_base, first_episode=episode_base
            )
        parts.append(new)
        data = _concat(parts)
        dataset = iteration_dir(work_dir, index) / "data"
        provenance = {
            "env": env.id,
            "env_config": OmegaConf.to_container(env, resolve=True),
            "expert": expert_name,
            "dagger_iteration": index,
            "steps": len(data),
            "new_steps": len(new),
            "rollout_return_mean": mean_or_nan(new.returns),
        }
        write_demonstrations(data, dataset, facts.action_count, provenance, seed=seed)
        data_path = f"data.path={quoted_value(dataset)}"  # a run directory may hold any character
        overrides = [*train_overrides, "data=dataset", data_path, "env_eval=null", f"seed={seed + index}"]
        if checkpoint is not None:
            overrides.append(f"init_from={quoted_value(checkpoint)}")
            # The aggregate's statistics, not the previous iteration's: its rows are what the learner visits, by
            # design, and over 5 iterations on two seeds this returned more (mean 252 against 244). The user's
            # own `train=[data.normalize=...]` still wins: it comes later.
            overrides.insert(0, "data.normalize=standard")
            if continue_epochs:  # fine-tuning from the previous weights needs fewer epochs than starting fresh
                overrides.append(f"trainer.max_epochs={continue_epochs}")
        try:
            result = train_iteration(overrides, iteration_dir(work_dir, index) / "train")
        except StoppedBySignalError as err:  # its hint (ckpt_path=) would resume one training run, not DAgger
            raise StoppedBySignalError(err.signum, stopped_line(err.signum, work_dir)) from None
        checkpoint = _checkpoint_of(result)
        stats = summarize(evaluate_policy(batch_actor(Policy.load(checkpoint)), env, episodes, facts=facts))
        record = Iteration(
            index,
            len(data),
            len(new),
            mean_or_nan(new.returns),
            str(dataset),
            checkpoint,
            stats["return_mean"],
            stats["return_std"],
            stats.get("success_rate", float("nan")),  # nan: the env has no success threshold
        )
        save_iteration(work_dir, record, new)
        results.append(record)
        log.info("iteration %d: %d rows (+%d), %s", index, len(data), len(new), summary_line(stats))
    return results


def held_out(result: Iteration, env: DictConfig, episodes: int) -> dict[str, float]:
    """`result`'s policy on seeds HELD_OUT_SEED..: its return where the choice of the best did not look."""
    from agent_lightning.agents.acting import batch_actor
    from agent_lightning.agents.policy import Policy

    return summarize(evaluate_policy(batch_actor(Policy.load(result.checkpoint)), env, episodes, HELD_OUT_SEED))


def best(results: Sequence[Iteration]) -> Iteration:
    """The iteration whose policy returned the most on the evaluation seeds (the first of equals)."""
    return max(results, key=lambda r: (r.return_mean, -r.iteration))


def table(results: Sequence[Iteration], held_out_stats: dict[str, float] | None = None) -> str:
    """The per-iteration table `dagger` prints, the best iteration's checkpoint and its held-out return."""
    lines = [f"{'iter':>4}  {'rows':>8}  {'new':>7}  {'rollout':>8}  {'return':>8}  {'std':>7}  {'success':>7}"]
    for r in results:
        lines.append(
            f"{r.iteration:>4}  {r.rows:>8,}  {r.new_rows:>7,}  {r.rollout_return:>8.2f}  {r.return_mean:>8.2f}  "
            f"{r.return_std:>7.2f}  {r.success_rate:>7.2f}"
        )
    top = best(results)
    lines.append(f"best: iteration {top.iteration}, return mean={top.return_mean:.2f}, checkpoint {top.checkpoint}")
    if held_out_stats:
        last = HELD_OUT_SEED + int(held_out_stats["episodes"]) - 1
        lines.append(f"held out (seeds {HELD_OUT_SEED}..{last}): {summary_line(held_out_stats)}")
    return "\n".join(lines)
