"""Starts the ranks of one job with torch's elastic launcher, without re-running Hydra.

Lightning's own launcher re-executes the command line once per rank, which re-runs Hydra and
breaks multirun sweeps. Here the Hydra job resolves its config once and hands it to each rank.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import uuid
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from agent_lightning.errors import EXIT_CONFIG, EXIT_CRASHED, signal_exit_code, user_facing
from agent_lightning.runs.lock import global_rank

log = logging.getLogger(__name__)
# Signals the launcher passes on to its ranks (torch elastic's default list, plus SIGUSR1 that
# schedulers send before pre-empting a job).
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def launch_ranks(cfg: DictConfig, devices: int, world: int) -> dict[str, Any]:
    """Run `train(cfg)` on `devices` local ranks (x `cfg.num_nodes`) and return this node's first rank's metrics.

    Each rank that fails writes its error (one line, and where it was raised) to a report file; the
    launcher prints the cause once (the first error, a config error before a peer's lost connection)
    and raises it with its exit code: 2 config, 3 crashed rank, 128 + N stopped by signal N.
    """
    resolved = OmegaConf.to_container(cfg, resolve=True)
    log_file = _job_log_file()
    # One node: a private rendezvous on a free local port. Several: every node's launcher meets
    # at the same endpoint and job id (the c10d store runs on the first to arrive).
    endpoint = cfg.get("rdzv_endpoint") or "127.0.0.1:0"
    run_id = cfg.get("rdzv_id") or (str(uuid.uuid4()) if cfg.num_nodes == 1 else "agent_lightning")
    config = LaunchConfig(
        min_nodes=cfg.num_nodes,
        max_nodes=cfg.num_nodes,
        nproc_per_node=devices,
        run_id=str(run_id),
        rdzv_backend="c10d",
        rdzv_endpoint=endpoint,
        max_restarts=0,
        start_method="spawn",
        logs_specs=DefaultLogsSpecs(log_dir=os.devnull),
        signals_to_handle=FORWARDED_SIGNALS,
    )
    # We report failures ourselves (torch elastic also sets levels on some of its own loggers).
    elastic_loggers = [
        logging.getLogger(n) for n in ("torch.distributed.elastic", "torch.distributed.elastic.agent.server.api")
    ]
    levels = [logger.level for logger in elastic_loggers]
    for logger in elastic_loggers:
        logger.setLevel(logging.CRITICAL)
    reports = Path(tempfile.mkdtemp(prefix="agent_lightning_ranks_"))
    signals_before = os.environ.get("TORCHELASTIC_SIGNALS_TO_HANDLE")  # torch elastic sets it for good
    handlers = {sig: signal.getsignal(sig) for sig in _forwarded()}  # torch elastic replaces them
    try:
        results = elastic_launch(config, _rank_main)(resolved, devices, world, log_file, str(reports))
    except ChildFailedError as err:
        raise _failure(reports, err) from None
    except SignalException as err:  # this process was signalled: the ranks got the same signal and stopped
        raise _failure(reports, None, signal_code=signal_exit_code(err.sigval)) from None
    finally:
        for logger, level in zip(elastic_loggers, levels, strict=True):
            logger.setLevel(level)
        if signals_before is None:
            os.environ.pop("TORCHELASTIC_SIGNALS_TO_HANDLE", None)
        else:
            os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = signals_before
        shutil.rmtree(reports, ignore_errors=True)
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    # Keyed by global rank; on a node other than the first, its lowest rank speaks for it.
    return results[min(results)] if results else {}


def _forwarded() -> list[signal.Signals]:
    return [getattr(signal, name) for name in FORWARDED_SIGNALS.split(",") if hasattr(signal, name)]


class LaunchError(RuntimeError):
    """One or more ranks failed: the one error that caused it (as the ranks reported it), with its exit code."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _read_reports(reports: Path) -> list[dict[str, Any]]:
    found = []
    for path in reports.glob("rank*.json"):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda report: report["time"])


def _failure(reports: Path, err: ChildFailedError | None, signal_code: int | None = None) -> LaunchError:
    found = _read_reports(reports)
    # The root cause first: a config error (often raised by every rank alike), then a requested stop,
    # then the earliest crash (a peer's "connection closed" comes after the error that caused it).
    config = [r for r in found if r["code"] == EXIT_CONFIG]
    if config:
        first = config[0]
        everywhere = len(config) > 1 and len({r["message"] for r in config}) == 1
        return LaunchError(EXIT_CONFIG, first["message"] if everywhere else f"rank {first['rank']}: {first['message']}")
    stops = sorted((r for r in found if r["code"] >= 128), key=lambda r: r["rank"])
    if stops:  # the lowest rank's line names the checkpoint
        return LaunchError(stops[0]["code"], stops[0]["message"])
    if found:
        first = found[0]
        return LaunchError(first["code"], f"training failed on rank {first['rank']}: {first['message']}")
    if signal_code is not None:
        return LaunchError(signal_code, f"stopped by a signal (exit code {signal_code}) before training started")
    # No report: a rank was killed (SIGKILL, out of memory) or died before it could write one.
    rank, failure = err.get_first_failure() if err else (-1, None)
    if failure is None:
        return LaunchError(EXIT_CRASHED, "training failed on a rank that reported nothing")
    how = f"was killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exited with code {failure.exitcode}"
    return LaunchError(EXIT_CRASHED, f"training failed: rank {rank} {how} without reporting an error")


def _job_log_file() -> str | None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None


def setup_rank_logging(rank: int, log_file: str | None) -> None:
    """Rank 0 logs to the console and the job's log file; other ranks only report errors."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if rank != 0:
        # Process-wide, so that it holds for Lightning too, which sets its loggers' levels when it is imported
        # (after this: the config is checked before Lightning loads).
        logging.disable(logging.WARNING)
        warnings.filterwarnings("ignore")
        return
    fmt = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file, mode="a"))
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def _where(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return ""
    frame = frames[-1]
    return f" (at {Path(frame.filename).name}:{frame.lineno} in {frame.name})"


def _report(reports: str, rank: int, code: int, message: str) -> None:
    path = Path(reports) / f"rank{rank}.json"
    path.write_text(json.dumps({"rank": rank, "code": code, "message": message, "time": time.time()}))


def _rank_main(
    resolved: dict[str, Any], devices: int, world: int, log_file: str | None, reports: str
) -> dict[str, Any]:
    """Entry point of one rank: the job's resolved and checked config in, metrics out (rank 0's are kept).

    The launcher has checked the config (manifests, checkpoints, an environment): the ranks train it.
    A failing rank does not print: it reports its error to the launcher, which prints the cause once.
    """
    from agent_lightning.train import train_checked

    rank = global_rank()
    setup_rank_logging(rank, log_file)
    cfg = OmegaConf.create(resolved)
    try:
        return train_checked(cfg, devices, world)
    except Exception as err:
        known = user_facing(err)  # a bad value or file, a diverged run, a requested stop
        if known is None:  # a crash: its type, first line and where it was raised; the traceback in the run dir
            first = (str(err).strip().splitlines() or [""])[0]
            kept = _keep_traceback(Path(str(cfg.paths.output_dir)), rank)
            known = (EXIT_CRASHED, f"{type(err).__name__}: {first}{_where(err)}{kept}")
        _report(reports, rank, *known)
        sys.exit(known[0])


def _keep_traceback(run_dir: Path, rank: int) -> str:
    """Write the exception being handled, whole, to the run directory; the line's ending that names the file."""
    path = run_dir / f"crash-rank{rank}.log"
    try:
        path.write_text(traceback.format_exc())
    except OSError:
        return ""
    return f"; traceback in {path}"


__all__ = ["LaunchError", "launch_ranks", "setup_rank_logging"]
