"""Evaluate the trained policy in its environment when fitting ends: `env/return_mean` etc. in the run's metrics.

Enabled by `env_eval: {env: lunarlander, episodes: 20}` in the run config (the bc_* experiments set it).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig
from torch import Tensor, nn

from agent_lightning.agents.policy import Policy
from agent_lightning.parallel.sharding import is_parallelized

log = logging.getLogger("agent_lightning")


class EnvEvaluation(Callback):
    """On rank 0 after fit: greedy episodes on seeds first_seed.. with the best checkpoint (else current weights).

    Metrics go to every logger and to `trainer.callback_metrics` (so to summary.json); episodes.csv and
    returns.png go to `<run>/env_eval/`. An environment that fails (raises, returns NaN) is kept in `failure`,
    one line, so that the run still tests and writes its summary before it reports the failure.
    """

    def __init__(
        self,
        env: str | dict[str, Any],
        episodes: int = 20,
        first_seed: int = 0,
        num_envs: int = 16,
        output_dir: str = "",
    ) -> None:
        self.env, self.episodes, self.first_seed, self.num_envs = env, episodes, first_seed, num_envs
        self.output_dir = output_dir
        self.stats: dict[str, float] = {}
        self.failure: str | None = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Roll out the policy on rank 0 and log `env/*` metrics."""
        if trainer.sanity_checking:
            return
        best = _best_checkpoint(trainer)
        # Without a best checkpoint a sharded model's weights are gathered: a collective, so on every rank.
        gathered = _full_weights(pl_module.model) if not best and is_parallelized(pl_module.model) else None
        if not trainer.is_global_zero:
            return
        from agent_lightning.agents.acting import batch_actor
        from agent_lightning.agents.environments import env_facts
        from agent_lightning.agents.reports import write_episodes_csv, write_returns_histogram
        from agent_lightning.agents.rollout import evaluate_policy, summarize, summary_line
        from agent_lightning.errors import ConfigError

        policy, source = _policy(best, pl_module, gathered)
        try:
            facts = env_facts(self.env)
            episodes = evaluate_policy(
                batch_actor(policy), self.env, self.episodes, self.first_seed, self.num_envs, facts=facts
            )
        except ConfigError as err:
            self.failure = str(err)
            log.error("env eval failed: %s", err)
            return
        self.stats = summarize(episodes)
        metrics = {f"env/{k}": v for k, v in self.stats.items() if k != "episodes"}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        if self.output_dir:
            out = Path(self.output_dir) / "env_eval"
            out.mkdir(parents=True, exist_ok=True)
            write_episodes_csv(episodes, out / "episodes.csv")
            title = f"{facts.id}: {len(episodes)} episodes ({source})"
            write_returns_histogram(episodes, out / "returns.png", title, facts.success_threshold)
        log.info("env eval (%s, %s, %d episodes): %s", facts.id, source, len(episodes), summary_line(self.stats))


def _best_checkpoint(trainer: pl.Trainer) -> str:
    # The model the run tests and hands on; the same path on every rank (Lightning broadcasts it).
    checkpoint = trainer.checkpoint_callback
    return checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""


def _full_weights(model: nn.Module) -> dict[str, Tensor]:
    """A sharded (DTensor) model's whole weights, on CPU on rank 0 (an empty dict elsewhere)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _policy(best: str, pl_module: pl.LightningModule, gathered: dict[str, Tensor] | None) -> tuple[Any, str]:
    if best and Path(best).exists():
        return Policy.load(best), "best checkpoint"  # a sharded checkpoint is gathered on this process
    if gathered is None:
        return Policy(copy.deepcopy(pl_module.model).cpu()), "final weights"
    from agent_lightning.export import build_agent

    config = {k: v for k, v in pl_module.hparams.config["model"].items() if not k.startswith("_")}
    return Policy(build_agent(config, gathered, "the gathered final weights")), "final weights"


def env_eval_callbacks(cfg: DictConfig) -> list[Callback]:
    """The EnvEvaluation callback when `cfg.env_eval` is set, else none."""
    spec = cfg.get("env_eval")
    if not spec:
        return []
    return [
        EnvEvaluation(
            env=spec.env if isinstance(spec.env, str) else dict(spec.env),
            episodes=int(spec.get("episodes", 20)),
            first_seed=int(spec.get("first_seed", 0)),
            num_envs=int(spec.get("num_envs", 16)),
            output_dir=str(cfg.paths.output_dir),
        )
    ]
