"""Resume in place: `ckpt_path=<run>/checkpoints/...` (or `ckpt_path=latest`) continues in that run's directory.

Hydra picks the run directory before `train` sees the config, so the command line is read first:
when the checkpoint lies in a run directory (`<run>/checkpoints/`, beside `<run>/.hydra/`), the
run is pointed there (`hydra.run.dir`), and Hydra saves the resumed run's composed config in
`<run>/.hydra/resume-<n>/` beside the first run's (never over it). Metrics continue in the same
`csv/metrics.csv`, the checkpoint callbacks continue their best-k tracking in the same
`checkpoints/`, and `train.log` is appended to. The run-directory lock still refuses a second run
writing into the directory. `ckpt_path=latest` is the newest `checkpoints/last.ckpt` (by time
written) under `<paths.output_root>/<name>/`; a sweep's jobs are not candidates (a newer one is named).
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, open_dict

from agent_lightning.errors import ConfigError
from agent_lightning.runs.lock import global_rank, run_directory_lock
from agent_lightning.runs.overrides import (
    command_overrides,
    last_override,
    pasteable_override,
    quoted_value,
    sets_hydra,
    unquoted_value,
)

log = logging.getLogger("agent_lightning")
LATEST = "latest"
CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
HYDRA_SUBDIR = ".hydra"
_CKPT = re.compile(r"^\+{0,2}ckpt_path=(.*)$")
_MULTIRUN = ("-m", "--multirun")


def _newest(paths: list[Path]) -> Path | None:
    return max(paths, key=lambda path: path.stat().st_mtime) if paths else None


def latest_checkpoint(output_root: str | Path, name: str, multirun_root: str | Path | None = None) -> Path:
    """The most recently written `checkpoints/last.ckpt` of the runs under `<output_root>/<name>/`.

    A sweep's jobs (`<multirun_root>/<name>/<time>/<job>/`) are not candidates: each job's config comes from
    the sweep's overrides, which a resume command does not repeat, and which job finished last is chance.
    A newer one is named, so that `latest` never passes it over in silence.
    """
    root = Path(output_root) / name
    latest = _newest([path for path in root.glob(f"*/{CHECKPOINTS}/{LAST}") if path.exists()])
    swept = None
    if multirun_root:
        swept = _newest([p for p in (Path(multirun_root) / name).glob(f"*/*/{CHECKPOINTS}/{LAST}") if p.exists()])
    if latest is None:
        hint = ""
        if swept:
            hint = f"; a sweep's job is never latest: give {pasteable_override('ckpt_path', swept)} to resume that one"
        raise ConfigError(
            f"ckpt_path=latest: no run under {root}/ has a {CHECKPOINTS}/{LAST}; train one first (name={name}), or "
            f"give ckpt_path=<path to a checkpoint>{hint}"
        )
    if swept is not None and swept.stat().st_mtime > latest.stat().st_mtime and global_rank() == 0:
        log.warning(
            "ckpt_path=latest is %s; the newer %s is a sweep job's, never latest: give its path to resume that one",
            latest,
            swept,
        )
    return latest


def resolve_latest(cfg: DictConfig) -> None:
    """Replace `ckpt_path=latest` in `cfg` by the newest run's last checkpoint."""
    if str(cfg.get("ckpt_path")) == LATEST:
        with open_dict(cfg):
            cfg.ckpt_path = str(latest_checkpoint(cfg.paths.output_root, cfg.name, cfg.paths.get("multirun_root")))


def run_directory_of(checkpoint: Path) -> Path | None:
    """The run directory a checkpoint was written in (`<run>/checkpoints/<file or dir>`), if it is one."""
    run = checkpoint.parent.parent
    if checkpoint.parent.name == CHECKPOINTS and (run / HYDRA_SUBDIR).is_dir():
        return run
    return None


def _output_settings(overrides: Sequence[str]) -> tuple[str, str, str | None]:
    """(paths.output_root, name, paths.multirun_root) of the run these overrides compose."""
    from agent_lightning.config import compose_config

    kept = [arg for arg in overrides if not sets_hydra(arg) and not _CKPT.match(arg)]
    cfg = compose_config(kept)
    multirun_root = cfg.paths.get("multirun_root")
    return str(cfg.paths.output_root), str(cfg.name), str(multirun_root) if multirun_root else None


def in_place_arguments(argv: Sequence[str]) -> list[str]:
    """The command line with `ckpt_path=latest` resolved and, for a run directory's checkpoint, the run moved there."""
    args = list(argv)
    at = max((i for i, arg in enumerate(args) if _CKPT.match(arg)), default=None)
    if at is None:
        return args
    value = unquoted_value(_CKPT.match(args[at]).group(1))
    overrides = command_overrides(args[1:])
    if value == LATEST:
        value = str(latest_checkpoint(*_output_settings(overrides)))
        args[at] = f"ckpt_path={quoted_value(value)}"
    multirun = any(arg in _MULTIRUN for arg in args)
    run = run_directory_of(Path(value)) if value and value != "null" else None
    if run is None or multirun or any(arg.startswith("paths.output_dir=") for arg in overrides):
        return args
    chosen = last_override(overrides, "hydra.run.dir")
    if chosen is not None and Path(chosen).resolve() != run.resolve():
        return args  # another directory asked for: a new run there, from this checkpoint
    with run_directory_lock(run):  # refused here, before Hydra writes into it, if another run holds it
        pass
    subdir = next_resume_subdir(run) if global_rank() == 0 else "null"  # one rank saves it
    placed = [] if chosen is not None else [f"hydra.run.dir={quoted_value(run)}"]
    return [*args, *placed, f"hydra.output_subdir={subdir}", *_identity_of(run, overrides)]


def next_resume_subdir(run: Path) -> str:
    """`.hydra/resume-<n>`: where Hydra saves the config of the run's next resume, beside the first run's."""
    names = [path.name.removeprefix("resume-") for path in (run / HYDRA_SUBDIR).glob("resume-*")]
    number = max((int(n) for n in names if n.isdigit()), default=0) + 1  # after the last, even with gaps
    return f"{HYDRA_SUBDIR}/resume-{number}"


def _identity_of(run: Path, overrides: Sequence[str]) -> list[str]:
    """`name=` and `tags=` of the run being resumed, where the command line does not give them.

    The run keeps its identity (its trackers' experiment, summary.json) when resumed by checkpoint path alone.
    """
    from omegaconf import OmegaConf

    from agent_lightning.runs.identity import SAFE_WORD

    try:
        first = OmegaConf.load(run / HYDRA_SUBDIR / "config.yaml")  # YAML: nothing in it runs
        name, tags = first.get("name"), first.get("tags")
    except Exception:  # no readable config: the command line's identity stands
        return []
    given = {arg.lstrip("+~").split("=", 1)[0] for arg in overrides}
    identity = []
    if "name" not in given and isinstance(name, str) and SAFE_WORD.fullmatch(name):
        identity.append(f"name={name}")
    if "tags" not in given and OmegaConf.is_list(tags) and tags and all(SAFE_WORD.fullmatch(str(t)) for t in tags):
        identity.append(f"tags=[{','.join(str(t) for t in tags)}]")
    return identity


def discard_resume_record() -> None:
    """Remove the `.hydra/resume-<n>/` Hydra saved for this job: its resume was refused before it ran."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    subdir = hydra_cfg.output_subdir
    if subdir and re.fullmatch(rf"{re.escape(HYDRA_SUBDIR)}/resume-\d+", str(subdir)):
        shutil.rmtree(Path(hydra_cfg.runtime.output_dir) / subdir, ignore_errors=True)
