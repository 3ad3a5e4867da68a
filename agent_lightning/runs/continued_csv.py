"""Lightning's CSVLogger, continuing the run directory's `metrics.csv` when the run resumes in place.

Lightning's CSV writer deletes an existing `metrics.csv` when it opens its directory, so a run
resumed in its own directory would lose the metrics of everything before the interruption. Here,
for a resumed run (`resume` set: the checkpoint it continues from), the file is kept and new rows
are appended under the same header; a metric the earlier part never logged widens the header
(earlier rows leave it empty), as Lightning does within one run.
"""

from __future__ import annotations

import csv
from typing import Any

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _ContinuingWriter(ExperimentWriter):
    """Keeps an existing `metrics.csv` and appends to it, starting from its header's columns."""

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            self.metrics_keys = sorted(next(csv.reader(file), []))


class ContinuingCSVLogger(CSVLogger):
    """`CSVLogger` that appends to an existing `metrics.csv` when `resume` (a checkpoint path) is set."""

    def __init__(self, *args: Any, resume: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._continue = bool(resume)

    @property
    @rank_zero_experiment
    def experiment(self) -> _ExperimentWriter:
        """The writer (created on first use, on rank 0 only, as Lightning's)."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            writer = _ContinuingWriter if self._continue else ExperimentWriter
            self._experiment = writer(log_dir=self.log_dir)
        return self._experiment
