"""Where the config tree lives, composing it from Python as the command line does, and the commands' Hydra entry."""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict

from agent_lightning.errors import EXIT_CONFIG, ConfigError, exit_if_reported

# Groups a training run cannot do without: `~group` (or `group=null`) removing one is refused naming its options.
REQUIRED_GROUPS = ("model", "data", "optimizer", "trainer", "strategy")


def check_required_groups(cfg: DictConfig) -> None:
    """ConfigError naming a required group the command line removed, and the options it takes."""
    for group in REQUIRED_GROUPS:
        if not cfg.get(group):
            raise ConfigError(
                f"{group} is required: choose one of {', '.join(group_option_names(group))} ({group}=<option>)"
            )


def config_dir() -> Path:
    """The config tree: inside the installed package, or `conf/` beside it in a source checkout."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no conf/config.yaml next to {package}")


def group_option_names(group: str) -> list[str]:
    """The options of a config group: its YAML files under `conf/<group>/`, sorted."""
    return sorted(path.stem for path in (config_dir() / group).glob("*.yaml"))


def group_options(choices: Mapping[str, str | None]) -> str:
    """The `--help` section on the config groups a command composes: each one's choice, then its other options."""
    lines = []
    for group, chosen in sorted(choices.items()):
        if group == "hydra" or group.startswith("hydra/"):
            continue
        others = ", ".join(option for option in group_option_names(group) if option != chosen)
        lines.append(f"{group}: {chosen or '(none)'}" + (f" | {others}" if others else ""))
    if not lines:
        return ""
    return "\n".join(["== Groups (group=option; the current choice first) ==", *lines, "", ""])


# Resolved in the `--help` template, conf/hydra/help/command.yaml.
OmegaConf.register_new_resolver("agent_lightning.group_options", group_options, replace=True)


def compose_raw(config_name: str, overrides: Sequence[str] = (), with_hydra: bool = False) -> DictConfig:
    """`config_name` composed from `overrides` as the command line would, nothing resolved; Hydra's errors raise."""
    GlobalHydra.instance().clear()  # the Compose API refuses to start while another composition is set up
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name, overrides=list(overrides), return_hydra_config=with_hydra)


def _new_run_dir(root: Path) -> Path:
    """`root/<date>_<time>_<microseconds>`: the command line's form, apart for configs composed in one second."""
    return root / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")


def compose_config(overrides: Sequence[str] = (), output_dir: str | Path | None = None) -> DictConfig:
    """The run config for `overrides` (as on the command line), writing under `output_dir`.

    Outside a Hydra run there is no run directory to interpolate, so `output_dir` (or a `paths.output_dir=`
    override) names it; by default a new directory under `outputs/<name>/` named by the time (the command
    line's form, with microseconds): composing again starts anew.
    """
    cfg = compose_raw("config", overrides)
    given = None if OmegaConf.is_interpolation(cfg.paths, "output_dir") else cfg.paths.output_dir  # paths.output_dir=
    with open_dict(cfg):
        cfg.paths.output_dir = str(
            output_dir or given or _new_run_dir(Path(str(cfg.paths.output_root)) / str(cfg.name))
        )
    from agent_lightning.data.fitting import resolve_data_dims  # lazy: composing stays light

    resolve_data_dims(cfg, required=False)
    return cfg


def hydra_command(
    config_name: str,
    check_job: Callable[[DictConfig], Any] | None = None,
    check_argv: Callable[[list[str]], Any] | None = None,
) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """`hydra.main` on this package's config tree, with every error a user can fix reported as one line.

    A config Hydra cannot compose (an unknown key or option, an unreadable override) exits 2 naming the
    override and what would work, where Hydra would print several lines and exit 1: Hydra raises instead
    of printing when HYDRA_FULL_ERROR is set, so it is set while the command runs, except inside a job
    (whose subprocesses would inherit it). An error a job raises is reported by `errors.user_facing`
    inside the job; a bug keeps its traceback, from the job's frame on, as Hydra prints it.
    `check_job` checks one job's composed config without running it: the sweepers run it on every grid job,
    and on a search space's choices and ends, before the first job starts (`agent_lightning/sweep_jobs.py`).
    `check_argv` checks the command line before Hydra writes anything into the run directory.
    """

    def decorate(job: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        @functools.wraps(job)
        def reported_job(cfg: DictConfig) -> Any:
            with _environment_variable("HYDRA_FULL_ERROR", None):
                try:
                    return job(cfg)
                except Exception as err:
                    exit_if_reported(err)  # inside the job: Hydra would add its own line before a raised error
                    raise

        reported_job.check_job = check_job  # type: ignore[attr-defined]  # read by the sweepers (`sweep_jobs.py`)
        entry = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)(reported_job)

        @functools.wraps(job)
        def command() -> Any:
            asked = os.environ.get("HYDRA_FULL_ERROR") == "1"
            with _environment_variable("HYDRA_FULL_ERROR", "1"):
                try:
                    if check_argv is not None:
                        check_argv(sys.argv[1:])
                    return entry()
                except Exception as err:
                    if asked:
                        raise  # the user asked for Hydra's traceback
                    line = _one_line(err, config_name) or _run_dir_unwritable(err, reported_job)
                    if line is None:  # a bug: its traceback
                        _print_from(reported_job, err)
                        sys.exit(1)
                    print(f"error: {line}", file=sys.stderr)
                    sys.exit(EXIT_CONFIG)

        return command

    return decorate


def _one_line(err: Exception, config_name: str) -> str | None:
    """The line for an error composing the config, or one a user can act on; None for a bug."""
    from hydra.errors import ConfigCompositionException, OverrideParseException, SearchPathException

    from agent_lightning.composition_errors import describe_safely
    from agent_lightning.errors import user_facing

    composing = (OverrideParseException, ConfigCompositionException, SearchPathException)
    if isinstance(err, composing) or (isinstance(err, ValueError) and "Config group override must" in str(err)):
        return describe_safely(err, config_name, sys.argv[1:])
    if isinstance(err, ValueError) and _raised_in(err, "_apply_overrides_to_config"):  # e.g. a key set in a list
        return describe_safely(err, config_name, sys.argv[1:])
    if isinstance(err, ValueError) and str(err).startswith("Only one of --run, --multirun"):  # Hydra's own flags
        return str(err)
    reported = user_facing(err)  # e.g. an interpolation `--cfg job --resolve` could not resolve
    return reported[1] if reported else None


def _raised_in(err: BaseException, function: str) -> bool:
    """Whether `err` was raised in (or below) a call of a function of this name."""
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == function:
            return True
        tb = tb.tb_next
    return False


def _run_dir_unwritable(err: Exception, job: Callable[..., Any]) -> str | None:
    """The line for a run or sweep directory Hydra could not create or write, before the job ran; else None."""
    if not isinstance(err, OSError) or not err.filename:
        return None
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is job.__code__:
            return None  # raised inside the job: its own report, or a bug's traceback
        tb = tb.tb_next
    return (
        f"cannot write the run directory {err.filename} ({err.strerror}): choose another hydra.run.dir "
        "(hydra.sweep.dir for -m, paths.output_root for the default place)"
    )


def _print_from(job: Callable[..., Any], err: BaseException) -> None:
    """Print `err`'s traceback from `job`'s frame on (Hydra's and runpy's frames above it say nothing)."""
    tb = err.__traceback__
    while tb is not None and tb.tb_frame.f_code is not job.__code__:
        tb = tb.tb_next
    traceback.print_exception(type(err), err, tb or err.__traceback__)


@contextlib.contextmanager
def _environment_variable(name: str, value: str | None) -> Iterator[None]:
    """Set (or, for None, remove) an environment variable for the block; restore it after."""
    before = os.environ.get(name)
    _set_environment_variable(name, value)
    try:
        yield
    finally:
        _set_environment_variable(name, before)


def _set_environment_variable(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
