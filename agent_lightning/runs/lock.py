"""One run per run directory: a second run pointed at the same directory is refused, not interleaved."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from agent_lightning.errors import ConfigError
from agent_lightning.runs.overrides import last_override, pasteable_override

LOCK_FILE = ".run.lock"
# Set while a process holds the lock, so the ranks it starts (and `train` inside `run`) share it.
HELD_ENV = "AGENT_LIGHTNING_RUN_LOCK"


def global_rank() -> int:
    """The global rank of this process as its launcher set it (torch elastic / torchrun: RANK; srun: SLURM_PROCID)."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def refuse_taken_run_dir(argv: Sequence[str]) -> None:
    """Refuse (ConfigError) a `hydra.run.dir=` that another run holds, or that holds a run's checkpoints.

    Checked before Hydra writes its config and log there. A new run in a finished run's directory would
    replace its `last.ckpt`, config and metrics; `ckpt_path=` continues it instead (a resume in place).
    """
    chosen = last_override(argv, "hydra.run.dir")
    if chosen is None:
        return
    directory = Path(chosen)
    if (directory / LOCK_FILE).is_file():
        with run_directory_lock(directory):  # taken and given back at once: the run takes it again when it starts
            pass
    refuse_new_run_over(directory, "hydra.run.dir", last_override(argv, "ckpt_path"))


# How many times a scheduler restarted this job (SLURM requeue, torchrun --max-restarts): it comes back to its own run.
RESTART_COUNTS = ("SLURM_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT")


def scheduler_restart() -> str | None:
    """`NAME=N` when a scheduler restarted this job (its restart count above 0), else None."""
    return next(
        (f"{name}={os.environ[name]}" for name in RESTART_COUNTS if os.environ.get(name, "0") not in ("", "0")), None
    )


def refuse_new_run_over(directory: Path, key: str, ckpt_path: Any = None) -> None:
    """ConfigError when `directory` (given as `key`) holds a run's checkpoints that this run would replace.

    Not when `ckpt_path` continues that run, nor in a job its scheduler restarted.
    """
    saved = sorted((directory / "checkpoints").glob("*.ckpt")) if (directory / "checkpoints").is_dir() else []
    if not saved or scheduler_restart():
        return
    if continues_run_in(directory, ckpt_path):
        return
    last = directory / "checkpoints" / "last.ckpt"
    named = last if last in saved else saved[-1]
    resume = pasteable_override("ckpt_path", named)
    raise ConfigError(
        f"{key}={directory} holds a run ({named}): continue it with {resume}, or choose another {key} (a new run "
        "there would replace its checkpoints and metrics)"
    )


def continues_run_in(directory: Path, ckpt_path: Any) -> bool:
    """Whether `ckpt_path` resumes the run of `directory`: a checkpoint inside it, or one a run there wrote.

    (Ray Tune hands a trial back its own checkpoint from a directory of Tune's.) `latest` counts: it names
    the newest run by name, resolved later.
    """
    if ckpt_path is None or str(ckpt_path) in ("", "null"):
        return False
    if str(ckpt_path) == "latest":
        return True
    path, here = Path(str(ckpt_path)), directory.resolve()
    if path.resolve().is_relative_to(here):
        return True
    from agent_lightning import safe_load

    try:
        state = safe_load.load_file(path / safe_load.LIGHTNING_META if path.is_dir() else path, mmap=True)
    except Exception:  # missing or unreadable: the resume's own checks name it
        return True
    written_in = (((state.get("hyper_parameters") or {}).get("config") or {}).get("paths") or {}).get("output_dir")
    return written_in is not None and Path(str(written_in)).resolve() == here


@contextmanager
def run_directory_lock(output_dir: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `output_dir` for the duration; raise ConfigError if another run holds it.

    The lock is `flock` on `<output_dir>/.run.lock`: the kernel drops it when the holder exits, even
    on SIGKILL, so a crashed run never leaves a stale lock behind (only its file, reused).
    """
    directory = Path(output_dir).resolve()
    if os.environ.get(HELD_ENV) == str(directory):
        yield  # our parent process (or an outer call in this one) holds it
        return
    if global_rank() != 0:
        yield  # under torchrun/srun, or across nodes, global rank 0 holds it for the job
        return
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    handle = _lock(path, directory)
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    handle.flush()
    previous = os.environ.get(HELD_ENV)
    os.environ[HELD_ENV] = str(directory)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(HELD_ENV, None)
        else:
            os.environ[HELD_ENV] = previous
        path.unlink(missing_ok=True)  # leave the run directory as the run made it (removed while still held)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _lock(path: Path, directory: Path) -> IO[str]:
    """The lock file `path`, opened and exclusively locked; ConfigError naming the holder if another run has it."""
    while True:
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError(
                f"run directory {directory} is in use by another run ({holder}); wait for it to finish or choose "
                "another hydra.run.dir / paths.output_dir"
            ) from None
        # A holder removes the file before it lets go: a lock won on that removed file would be a second lock.
        try:
            if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()
