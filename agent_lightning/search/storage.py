"""Opening a study's storage, and telling live trials from trials whose search process died.

A search process records a heartbeat for each trial it runs. When the process is killed its
trials stop beating: after `grace_period` seconds any search sharing the study marks them `FAIL`
and enqueues each once more with the same parameters, so a killed trial is rerun instead of
staying `RUNNING` forever. Heartbeats need a database storage (sqlite, postgres, mysql).
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import hydra
import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

JOURNAL_PREFIX = "journal:///"
PRUNER_ATTR = "agent_lightning_pruner"


def open_storage(
    spec: str, heartbeat_interval: int | None = None, grace_period: int | None = None, retries: int = 1
) -> optuna.storages.BaseStorage:
    """An Optuna storage from its spec: a database URL, or `journal:///<path>` for a journal file.

    With `heartbeat_interval` (database storages only) stale trials are failed and retried `retries` times.
    """
    if spec.startswith(JOURNAL_PREFIX):
        path = spec.removeprefix(JOURNAL_PREFIX)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend("/" + path.lstrip("/")))
    if heartbeat_interval is None:
        return RDBStorage(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(
            spec,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=retries),
        )


def build_pruner(spec: Any) -> optuna.pruners.BasePruner:
    """An Optuna pruner from its config (`_target_` and arguments); none means never prune."""
    return hydra.utils.instantiate(spec) if spec else optuna.pruners.NopPruner()


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Mark `RUNNING` trials whose heartbeat is older than the grace period `FAIL` (and enqueue retries)."""
    before = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    after = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
    return sorted(t.number for t in after if t.number not in before)


class Heartbeat:
    """Records a heartbeat every `interval` seconds for each trial this process runs (a background thread)."""

    def __init__(self, storage: optuna.storages.BaseStorage) -> None:
        self.storage = storage
        # Only database storages keep heartbeats (a journal file has none: its trials are never stale).
        self.interval = storage.get_heartbeat_interval() if isinstance(storage, RDBStorage) else None
        self.trial_ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="optuna-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        if self.interval is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def add(self, trial_id: int) -> None:
        """Start beating for a trial (and record its first beat now)."""
        with self._lock:
            self.trial_ids.add(trial_id)
        if self.interval is not None:
            self.storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]

    def remove(self, trial_id: int) -> None:
        """Stop beating for a finished trial."""
        with self._lock:
            self.trial_ids.discard(trial_id)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = list(self.trial_ids)
            for trial_id in ids:
                self.storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
