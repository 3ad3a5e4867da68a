"""Give the caller its process environment back after a run.

Lightning writes the distributed settings of a run (MASTER_ADDR/PORT, LOCAL_RANK, NODE_RANK, and
OMP_NUM_THREADS when it starts a process group) into `os.environ` and leaves them there. In a
notebook or a test that calls `train(cfg)` twice, or then starts a command line, those leftovers
would read as "already launched by torchrun" or as a user's thread setting. MLflow's client writes
its tracking URI into `MLFLOW_TRACKING_URI`, which `logger.mlflow.tracking_uri` reads: left there, the
next run would log to the previous run's store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

# What Lightning sets while a run sets up (see lightning.fabric.utilities.distributed).
RUN_VARIABLES = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "OMP_NUM_THREADS",
    "PL_GLOBAL_SEED",
    "PL_SEED_WORKERS",
    "MLFLOW_TRACKING_URI",  # set by mlflow.set_tracking_uri, which Lightning's MLFlowLogger calls
)


@contextmanager
def environment_restored() -> Iterator[None]:
    """Restore the run variables of `os.environ` to what they were on entry."""
    before = {name: os.environ.get(name) for name in RUN_VARIABLES}
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
