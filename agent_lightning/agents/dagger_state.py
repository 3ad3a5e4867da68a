"""What a DAgger run keeps, so that a stopped run continues where it stopped.

The run directory holds `dagger.json` (written before anything else: the run's format and the number of
iterations last asked for), and each finished `iter_NN/` the rows that iteration added (`new_rows.npz`)
and, written last, its record (`iteration.json`): an iteration with a record is whole. Paths in a record
are relative to the run directory, so a run copied elsewhere (off a cluster) still continues.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from agent_lightning.agents.rollout import Rollout
from agent_lightning.errors import ConfigError
from agent_lightning.replacing import replace_file, sync_to_disk
from agent_lightning.runs.overrides import pasteable_override

log = logging.getLogger("agent_lightning.dagger")
RUN_STATE = "dagger.json"
RECORD = "iteration.json"
NEW_ROWS = "new_rows.npz"
FORMAT = 1
_ITERATION_DIR = re.compile(r"iter_(\d+)")
_PATHS = ("dataset", "checkpoint")
# What reading a damaged file back can raise (an empty or cut .npz: EOFError, BadZipFile).
_UNREADABLE = (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile)


def iteration_dir(work_dir: Path, index: int) -> Path:
    """`<work_dir>/iter_NN`: the data and training run of iteration `index`."""
    return work_dir / f"iter_{index:02d}"


def _write_whole(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    replace_file(partial, path)  # whole or absent: a stop (or a power cut) while writing leaves no half file


def start_run(work_dir: Path, iterations: int, resume: bool) -> None:
    """Mark `work_dir` as this format's DAgger run, with the iterations asked for; refuse another run over one."""
    if not resume and (work_dir / RUN_STATE).exists():
        raise ConfigError(f"{work_dir} holds a DAgger run already: continue it (resume) or choose another directory")
    work_dir.mkdir(parents=True, exist_ok=True)
    _write_whole(work_dir / RUN_STATE, json.dumps({"format": FORMAT, "iterations": iterations}) + "\n")


def asked_iterations(work_dir: Path) -> int | None:
    """The iterations the run's last command asked for (None: not a run this format can continue)."""
    try:
        state = json.loads((work_dir / RUN_STATE).read_text())
        return int(state["iterations"]) if state.get("format") == FORMAT else None
    except (*_UNREADABLE, AttributeError):
        return None


def save_iteration(work_dir: Path, record: Any, new: Rollout) -> None:
    """Keep iteration `record.iteration`'s new rows and its record (a dataclass), the record last."""
    folder = iteration_dir(work_dir, record.iteration)
    np.savez(
        folder / NEW_ROWS,
        observations=new.observations,
        actions=new.actions,
        episodes=new.episodes,
        returns=np.asarray(new.returns, dtype=np.float64),
    )
    sync_to_disk(folder / NEW_ROWS)  # on disk before the record that vouches for it
    fields = dataclasses.asdict(record)
    for key in _PATHS:  # real paths on both sides: Lightning resolves symlinks in checkpoint paths, Hydra does not
        fields[key] = os.path.relpath(os.path.realpath(fields[key]), os.path.realpath(work_dir))
    _write_whole(folder / RECORD, json.dumps(fields, indent=1) + "\n")


def finished_iterations(work_dir: Path, kind: type) -> list[tuple[Any, Rollout]]:
    """The iterations 0, 1, ... a run finished (records of class `kind`, with their new rows), to the first gap."""
    if asked_iterations(work_dir) is None:
        raise ConfigError(
            f"{work_dir} has no {RUN_STATE}: it is not a DAgger run, or one written by an earlier version, which "
            "cannot be continued (nothing was removed)"
        )
    done: list[tuple[Any, Rollout]] = []
    while (folder := iteration_dir(work_dir, len(done))).joinpath(RECORD).is_file():
        try:
            fields = json.loads((folder / RECORD).read_text())
            for key in _PATHS:
                fields[key] = str(work_dir / fields[key])
            record = kind(**fields)
            with np.load(folder / NEW_ROWS, allow_pickle=False) as saved:
                rows = Rollout(saved["observations"], saved["actions"], saved["episodes"], saved["returns"].tolist())
        except _UNREADABLE as err:
            raise ConfigError(f"{folder} cannot be continued from: {type(err).__name__}: {err}") from None
        if not Path(record.checkpoint).exists():
            raise ConfigError(f"{folder / RECORD} names the checkpoint {record.checkpoint}, which is missing")
        done.append((record, rows))
    return done


def stopped_line(signum: int, work_dir: Path) -> str:
    """The line a stopped run ends with: where it stopped, what is kept, and the command that continues it."""
    name = signal.Signals(signum).name
    asked = asked_iterations(work_dir)
    if asked is None:
        return f"stopped by {name} before the run began: nothing to continue"
    finished = 0
    while iteration_dir(work_dir, finished).joinpath(RECORD).is_file():
        finished += 1
    if finished > asked:
        resume = pasteable_override("resume", work_dir)
        return f"stopped by {name} after its last iteration, while writing its report: continue with {resume}"
    kept = f"iterations 0..{finished - 1} are kept"
    kept = {0: "no iteration had finished", 1: "iteration 0 is kept"}.get(finished, kept)
    return f"stopped by {name} in iteration {finished}; {kept}: continue with {pasteable_override('resume', work_dir)}"


def clear_unfinished(work_dir: Path, finished: int) -> None:
    """Remove the part-written iteration a stop left (number `finished`): it is made again from its start.

    Anything else without a record (iterations beyond it, or more rows in `dagger.csv` than records) is a run
    this cannot read back: refused, and nothing removed.
    """
    left = sorted(
        (int(match.group(1)), folder)
        for folder in work_dir.glob("iter_*")
        if (match := _ITERATION_DIR.fullmatch(folder.name)) and folder.is_dir() and int(match.group(1)) >= finished
    )
    summary = work_dir / "dagger.csv"
    listed = len(summary.read_text().splitlines()) - 1 if summary.is_file() else 0
    if [index for index, _ in left] not in ([], [finished]) or listed > finished:
        raise ConfigError(
            f"{work_dir} holds iterations without their record ({RECORD}): it was changed since it was written, "
            "and cannot be continued (nothing was removed)"
        )
    for _, folder in left:
        log.info("%s was not finished when the run stopped: it is made again from its start", folder.name)
        shutil.rmtree(folder)
