"""Starts the ranks of one job with torch's elastic launcher, without re-running Hydra.

Lightning's own launcher re-executes the command line once per rank, which re-runs Hydra and
breaks multirun sweeps. Here the Hydra job resolves its config once and hands it to each rank.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
import warnings
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from agent_lightning.errors import ConfigError

log = logging.getLogger(__name__)
USER_ERROR_EXIT = 2  # a rank exits with this after printing a user-fixable error itself


class LaunchError(RuntimeError):
    """One or more ranks failed."""


def launch_ranks(cfg: DictConfig, devices: int) -> dict[str, Any]:
    """Run `train(cfg)` on `devices` local ranks (x `cfg.num_nodes`) and return this node's first rank's metrics."""
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
    )
    elastic_logger = logging.getLogger("torch.distributed.elastic")
    level, elastic_logger.level = elastic_logger.level, logging.CRITICAL  # we report failures ourselves
    try:
        results = elastic_launch(config, _rank_main)(resolved, log_file)
    except ChildFailedError as err:
        codes = {failure.exitcode for failure in err.failures.values()}
        if USER_ERROR_EXIT in codes:
            raise SystemExit(USER_ERROR_EXIT) from None  # the failing rank printed the reason
        ranks = ", ".join(f"rank {rank} (exit code {f.exitcode})" for rank, f in sorted(err.failures.items()))
        raise LaunchError(f"training failed on {ranks}; see the messages above") from None
    finally:
        elastic_logger.setLevel(level)
    # Keyed by global rank; on a node other than the first, its lowest rank speaks for it.
    return results[min(results)] if results else {}


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
        root.setLevel(logging.ERROR)
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.ERROR)
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


def _rank_main(resolved: dict[str, Any], log_file: str | None) -> dict[str, Any]:
    """Entry point of one rank: the job's resolved config in, metrics out (rank 0's are kept)."""
    from agent_lightning.callbacks import NonFiniteLossError
    from agent_lightning.train import train

    rank = int(os.environ.get("RANK", "0"))
    setup_rank_logging(rank, log_file)
    try:
        return train(OmegaConf.create(resolved))
    except NonFiniteLossError as err:  # raised on every rank together: rank 0 speaks
        if rank == 0:
            logging.getLogger("agent_lightning").error("%s", err)
        sys.exit(USER_ERROR_EXIT)
    except ConfigError as err:  # may concern this rank's data alone (say, one of its shards)
        print(f"error on rank {rank}: {err}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT)


__all__ = ["LaunchError", "launch_ranks", "setup_rank_logging"]
