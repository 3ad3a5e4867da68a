"""DAgger: `python -m agent_lightning.dagger env=lunarlander iterations=5`.

Behaviour cloning on expert demonstrations, then N iterations of: roll out the current policy, label the
visited states with the expert, aggregate, continue training from the previous weights, evaluate. Prints a
table and writes `dagger.csv` and `returns.png` (return per iteration) to the run directory.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from agent_lightning.arguments import SEED, SEED_VALID, Rule, check_arguments, whole
from agent_lightning.config import compose_raw, config_dir, group_option_names, hydra_command
from agent_lightning.errors import ConfigError
from agent_lightning.runs.overrides import last_override

log = logging.getLogger("agent_lightning.dagger")

RULES: tuple[Rule, ...] = (
    Rule("iterations", whole(0), "a whole number of DAgger iterations >= 0 (0: behaviour cloning only)"),
    Rule("demo_steps", whole(1), "a whole number of expert steps >= 1"),
    Rule("rollout_steps", whole(1), "a whole number of rollout steps >= 1"),
    Rule("episodes", whole(1), "a whole number of evaluation episodes >= 1"),
    Rule("seed", SEED, SEED_VALID),
    Rule("continue_epochs", whole(1, also=(None,)), "a whole number of epochs >= 1, or null (the experiment's own)"),
)


def _train_overrides(cfg: DictConfig, env_name: str | None) -> list[str]:
    experiment = cfg.get("train_experiment")
    if not experiment:  # the env's own preset, else behaviour cloning's general one (an env of the user's)
        own = f"bc_{env_name}"
        experiment = own if env_name and (config_dir() / "experiment" / f"{own}.yaml").is_file() else "bc"
    if not (config_dir() / "experiment" / f"{experiment}.yaml").is_file():
        names = ", ".join(group_option_names("experiment"))
        raise ConfigError(f"train_experiment={experiment} is not one of {names}: name one, or give train=[...]")
    extra = OmegaConf.to_container(cfg.train, resolve=True) if cfg.get("train") else []
    if not isinstance(extra, list):
        raise ConfigError("train= takes a list of training overrides, e.g. 'train=[\"trainer.max_epochs=5\"]'")
    overrides = [*([f"experiment={experiment}"] if experiment else []), *(str(o) for o in extra), "print_config=false"]
    _check_composes(overrides)
    return overrides


def _check_composes(overrides: list[str]) -> None:
    """Compose the training config once before any demonstration is collected: a typo in train= fails now."""
    from hydra.errors import CompactHydraException

    from agent_lightning.composition_errors import describe_safely

    try:
        compose_raw("config", overrides)  # the data it names is collected later: composed, not read
    except (CompactHydraException, ValueError) as err:  # ValueError: Hydra's, for a group given no name
        raise ConfigError(f"train=[...] for the training runs: {describe_safely(err, 'config', overrides)}") from None


def _refuse_a_dagger_run_dir(argv: list[str]) -> None:
    """A `hydra.run.dir=` that holds a DAgger run: refused before Hydra rewrites its config and log there."""
    chosen = last_override(argv, "hydra.run.dir")
    if chosen is not None and (Path(chosen) / "iter_00").exists():  # its datasets and checkpoints would mix
        raise ConfigError(f"hydra.run.dir={chosen} holds a DAgger run already: choose another directory")


@hydra_command("dagger", check_argv=_refuse_a_dagger_run_dir)
def main(cfg: DictConfig) -> None:
    """Command line: run DAgger; a bad input exits 2 with one line."""
    from agent_lightning.agents.dagger import best, held_out, run_dagger, table
    from agent_lightning.agents.environments import env_config
    from agent_lightning.agents.experts import resolve_expert
    from agent_lightning.agents.reports import write_curve

    output_dir = Path(cfg.paths.output_dir)
    check_arguments(cfg, RULES)
    env = env_config(cfg.get("env"))
    expert_name = str(cfg.expert or env.get("expert") or "")
    if not expert_name:
        raise ConfigError(f"env {env.id} names no default expert: give expert=<name or module:function>")
    expert = resolve_expert(expert_name, env.id)
    overrides = _train_overrides(cfg, HydraConfig.get().runtime.choices.get("env"))
    results = run_dagger(
        env, expert, expert_name, output_dir, overrides, int(cfg.iterations), int(cfg.demo_steps),
        int(cfg.rollout_steps), int(cfg.episodes), int(cfg.seed), cfg.get("continue_epochs"),
    )  # fmt: skip
    with open(output_dir / "dagger.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=[f.name for f in dataclasses.fields(results[0])])
        writer.writeheader()
        writer.writerows(dataclasses.asdict(r) for r in results)
    write_curve([r.return_mean for r in results], output_dir / "returns.png", "mean return", f"DAgger on {env.id}")
    print(table(results, held_out(best(results), env, int(cfg.episodes))), flush=True)
    log.info("dagger.csv and returns.png in %s", output_dir)


if __name__ == "__main__":
    main()
