"""DAgger: `python -m agent_lightning.dagger env=lunarlander iterations=5`.

Behaviour cloning on expert demonstrations, then N iterations of: roll out the current policy, label the
visited states with the expert, aggregate, continue training from the previous weights, evaluate. Prints a
table and writes `dagger.csv` and `returns.png` (return per iteration) to the run directory. A stopped run
continues with `resume=<its run directory>` (and `iterations=N` to go further than it was asked).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from agent_lightning.arguments import SEED, SEED_VALID, Rule, check_arguments, whole
from agent_lightning.config import compose_raw, config_dir, group_option_names, hydra_command
from agent_lightning.errors import EXIT_CONFIG, STOP_SIGNALS, ConfigError, StoppedBySignalError
from agent_lightning.runs.in_place import HYDRA_SUBDIR, next_resume_subdir
from agent_lightning.runs.lock import run_directory_lock, scheduler_restart
from agent_lightning.runs.overrides import (
    command_overrides,
    last_override,
    pasteable_override,
    quoted_value,
    sets_hydra,
)

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
    """Compose and check the training config before any demonstration is collected: a bad train= fails now.

    Not after the demonstrations, in a run directory then holding a run that `resume=` could not mend.
    """
    from hydra.errors import CompactHydraException

    from agent_lightning.composition_errors import describe_safely
    from agent_lightning.validation import check_values

    try:
        cfg = compose_raw("config", overrides)  # the data it names is collected later: composed, not read
    except (CompactHydraException, ValueError) as err:  # ValueError: Hydra's, for a group given no name
        raise ConfigError(f"train=[...] for the training runs: {describe_safely(err, 'config', overrides)}") from None
    try:
        check_values(cfg)  # each value against its valid range, as `train` checks it before a rank starts
    except ConfigError as err:
        raise ConfigError(f"train=[...] for the training runs: {err}") from None


def _refuse_a_dagger_run_dir(argv: list[str]) -> None:
    """A `hydra.run.dir=` that holds a DAgger run: refused before Hydra rewrites its config and log there."""
    from agent_lightning.agents.dagger_state import RUN_STATE

    chosen = _given_run_dir(argv)
    held = chosen is not None and any((chosen / name).exists() for name in ("iter_00", RUN_STATE))
    if _resumed(argv) is None and held:  # its datasets and checkpoints would mix with a new run's
        restart = scheduler_restart()  # a requeued job whose command is not the one that began the run there
        why = f" (restarted, {restart}, with another command than its {HYDRA_SUBDIR}/overrides.yaml)" if restart else ""
        raise ConfigError(
            f"hydra.run.dir={chosen} holds a DAgger run already{why}: choose another directory, or continue that run "
            f"with {pasteable_override('resume', chosen)}"
        )


def _given_run_dir(argv: list[str]) -> Path | None:
    """The command line's `hydra.run.dir=`, its `${oc.env:...}` resolved; None where not given or left to Hydra."""
    chosen = last_override(argv, "hydra.run.dir")
    try:  # e.g. outputs/dagger/${oc.env:SLURM_JOB_ID}: the same directory on every start of a job
        return None if chosen is None else Path(str(OmegaConf.create({"dir": chosen}).dir))
    except Exception:  # Hydra's own resolvers (${now:...}): a new directory on each start, not one to check
        return None


def _resumed(argv: list[str]) -> Path | None:
    value = last_override(command_overrides(argv), "resume")
    return None if value in (None, "", "null") else Path(value)


# What a resumed run may be given: it keeps every other setting of the run it continues.
_RESUME_KEYS = ("resume", "iterations")


def requeued_arguments(argv: list[str]) -> tuple[list[str], str | None]:
    """A requeued job's command line, when it reruns the command of the DAgger run in its `hydra.run.dir`: resume=.

    A scheduler that restarts a job (SLURM's requeue after a preemption or a node failure) runs its script
    again: the run then continues where it was stopped instead of being refused as a new run over it. Also
    returns the line that says so (None: the command line as it was).
    """
    import yaml

    from agent_lightning.agents.dagger_state import RUN_STATE

    restart, overrides = scheduler_restart(), command_overrides(argv[1:])
    run = _given_run_dir(overrides)
    if restart is None or run is None or _resumed(argv[1:]) is not None or not (run / RUN_STATE).is_file():
        return argv, None
    try:  # the command that started the run, as Hydra saved it (read as text: its interpolations stay unresolved)
        first = yaml.safe_load((run / HYDRA_SUBDIR / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):  # none, or unreadable: not a run to match (the usual refusal follows)
        return argv, None
    own = [arg for arg in overrides if not sets_hydra(arg)]
    if not isinstance(first, list) or [str(arg) for arg in first] != own:  # another command: refused as usual
        return argv, None
    line = f"restarted by the scheduler ({restart}): continuing the DAgger run in {run.resolve()}"
    placed = [arg for arg in argv if arg not in own and last_override([arg], "hydra.run.dir") is None]
    return [*placed, f"resume={quoted_value(run)}"], line  # resume= places the run in its directory itself


def resume_arguments(argv: list[str]) -> list[str]:
    """The command line with `resume=DIR` run in DIR (its first config kept: Hydra saves this one beside it)."""
    from agent_lightning.agents.dagger_state import RUN_STATE, asked_iterations

    run = _resumed(argv[1:])
    if run is None:
        return argv
    if not (run / HYDRA_SUBDIR / "config.yaml").is_file() or asked_iterations(run) is None:
        earlier = " (one written by an earlier version cannot be continued)" if (run / "iter_00").is_dir() else ""
        raise ConfigError(f"resume={run} is not a DAgger run directory (.hydra/config.yaml and {RUN_STATE}){earlier}")
    if any(arg in ("-m", "--multirun") for arg in argv[1:]):
        raise ConfigError(f"resume={run} continues one run: leave out -m")
    overrides = command_overrides(argv[1:])
    for arg in overrides:
        key = arg.lstrip("+~").split("=", 1)[0]
        if key not in _RESUME_KEYS and not sets_hydra(arg):
            raise ConfigError(
                f"resume={run} continues that run with its own settings ({run}/.hydra/config.yaml): give only "
                f"iterations=N beside it, not {arg}"
            )
    chosen = _given_run_dir(overrides)
    if chosen is not None and chosen.resolve() != run.resolve():
        raise ConfigError(f"resume={run} continues in its own directory: leave out hydra.run.dir={chosen}")
    try:
        with run_directory_lock(run):  # refused here, before Hydra writes into it, if a run still holds it
            pass
    except ConfigError:
        raise ConfigError(f"resume={run}: a command is still running in it; wait for it to end") from None
    return [*argv, f"hydra.run.dir={quoted_value(run)}", f"hydra.output_subdir={next_resume_subdir(run)}"]


def _settings_of_resumed_run(cfg: DictConfig) -> tuple[DictConfig, str | None]:
    """The resumed run's own config (with this command's `iterations=`, if given) and its env's preset name."""
    from agent_lightning.agents.dagger_state import asked_iterations

    run = Path(cfg.paths.output_dir)
    try:  # YAML: nothing in it runs. The env's preset name picks the training preset (bc_<env>), as first run.
        first = OmegaConf.load(run / HYDRA_SUBDIR / "config.yaml")
        env_name = OmegaConf.select(OmegaConf.load(run / HYDRA_SUBDIR / "hydra.yaml"), "hydra.runtime.choices.env")
    except Exception as err:  # missing or not YAML: the first run's settings cannot be known
        raise ConfigError(
            f"{run}/.hydra/ cannot be read ({type(err).__name__}: {err}): the run cannot be continued"
        ) from None
    given = {arg.lstrip("+~").split("=", 1)[0] for arg in HydraConfig.get().overrides.task}
    first.paths = cfg.paths  # where the run is now (it may have been moved)
    first.resume = str(run)
    # The iterations this command asks for, else those the run's last command asked for.
    first.iterations = cfg.iterations if "iterations" in given else asked_iterations(run)
    return first, None if env_name is None else str(env_name)


def _refuse_keys_it_would_ignore(cfg: DictConfig) -> None:
    """A key added with `+` that DAgger never reads (`+trainer.max_epochs=3`): refused, not silently ignored."""
    own = OmegaConf.load(config_dir() / "dagger.yaml")
    known = {str(key) for key in own if key != "defaults"} | {"paths", "env"}  # and its groups
    unread = [str(key) for key in cfg if str(key) not in known]
    if unread:
        key = unread[0]
        given = HydraConfig.get().overrides.task
        override = next((o for o in given if o.lstrip("+").startswith((f"{key}.", f"{key}="))), key)
        inside = f"'train=[\"{override.lstrip('+')}\"]'"
        raise ConfigError(
            f"{override}: dagger has no setting {key}; a training run's settings go in train=, e.g. {inside}"
        )


@hydra_command("dagger", check_argv=_refuse_a_dagger_run_dir)
def hydra_main(cfg: DictConfig) -> None:
    """Hydra entry: run DAgger, or continue a stopped run (`resume=DIR`); a bad input exits 2 with one line."""
    _refuse_keys_it_would_ignore(cfg)
    env_name = HydraConfig.get().runtime.choices.get("env")
    if cfg.get("resume"):
        cfg, env_name = _settings_of_resumed_run(cfg)
    check_arguments(cfg, RULES)
    with run_directory_lock(cfg.paths.output_dir):  # a second command resuming the same run is refused
        try:
            with _signals_stop_the_run():
                _run(cfg, env_name)
        except _Signalled as stop:
            from agent_lightning.agents.dagger_state import stopped_line

            raise StoppedBySignalError(stop.signum, stopped_line(stop.signum, Path(cfg.paths.output_dir))) from None


class _Signalled(BaseException):
    """A stop signal between training runs (a training run stops itself, at a step's end).

    Not an Exception: an env's or a library's `except Exception` must not take it for its own error.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _signals_stop_the_run() -> Iterator[None]:
    """SIGTERM, SIGINT and SIGUSR1 stop the run where it is: an unfinished iteration is made again on resume."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Signalled(signum)

    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run(cfg: DictConfig, env_name: str | None) -> None:
    from agent_lightning.agents.dagger import best, held_out, run_dagger, table
    from agent_lightning.agents.environments import env_config
    from agent_lightning.agents.experts import resolve_expert
    from agent_lightning.agents.reports import write_curve

    output_dir = Path(cfg.paths.output_dir)
    env = env_config(cfg.get("env"))
    expert_name = str(cfg.expert or env.get("expert") or "")
    if not expert_name:
        raise ConfigError(f"env {env.id} names no default expert: give expert=<name or module:function>")
    expert = resolve_expert(expert_name, env.id)
    overrides = _train_overrides(cfg, env_name)
    results = run_dagger(
        env, expert, expert_name, output_dir, overrides, int(cfg.iterations), int(cfg.demo_steps),
        int(cfg.rollout_steps), int(cfg.episodes), int(cfg.seed), cfg.get("continue_epochs"),
        resume=bool(cfg.get("resume")),
    )  # fmt: skip
    with open(output_dir / "dagger.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=[f.name for f in dataclasses.fields(results[0])])
        writer.writeheader()
        writer.writerows(dataclasses.asdict(r) for r in results)
    write_curve([r.return_mean for r in results], output_dir / "returns.png", "mean return", f"DAgger on {env.id}")
    print(table(results, held_out(best(results), env, int(cfg.episodes))), flush=True)
    log.info("dagger.csv and returns.png in %s", output_dir)


def main() -> None:
    """Command line: `resume=DIR` (or a requeued job's run) is placed in DIR before Hydra starts; then Hydra runs."""
    try:
        requeued, line = requeued_arguments(sys.argv)
        sys.argv = resume_arguments(requeued)
        if line:  # said once the resume is accepted
            print(line, file=sys.stderr)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except OSError as err:  # e.g. a run copied read-only: its lock file cannot be made
        print(f"error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    hydra_main()


if __name__ == "__main__":
    main()
