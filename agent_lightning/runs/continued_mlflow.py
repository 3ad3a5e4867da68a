"""Lightning's MLFlowLogger, continuing the run directory's MLflow run when the run resumes in place.

A run resumed in its own directory (`resume` set: the checkpoint it continues from) logs into the
MLflow run tagged with that directory (`run_dir`), so the metrics of both parts form one history
instead of a second MLflow run. MLflow refuses to change a param: a value the resumed part changed
(e.g. `trainer.max_epochs`) is kept as the param of the first part and logged as the tag
`resumed.<key>` (the latest resume's value).
"""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

RUN_DIR_TAG = "run_dir"
RESUMED_TAG_PREFIX = "resumed."
_PARAM_CHARS = 250  # what Lightning's MLFlowLogger keeps of a param's value
_TAG_CHARS = 5000  # MLflow's limit on a tag's value


def run_dir_tag(directory: str | Path) -> str:
    """The `run_dir` tag's value for a run directory: its resolved path, the same however it was named."""
    return str(Path(directory).resolve())


class ContinuingMLFlowLogger(MLFlowLogger):
    """`MLFlowLogger` that continues the MLflow run of its run directory when `resume` (a checkpoint path) is set."""

    def __init__(self, *args: Any, resume: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._run_dir = (kwargs.get("tags") or {}).get(RUN_DIR_TAG)
        self._look_for_previous = bool(resume) and self._run_id is None and bool(self._run_dir)
        self.continued = False  # whether this logger continues an earlier part's MLflow run

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The MLflow client, bound to the continued run or to a new one (created on first use, rank 0 only)."""
        if self._look_for_previous:
            self._look_for_previous = False
            self._run_id = self._previous_run_id()
            if self._run_id is not None:
                self.continued = True
                self._mlflow_client.update_run(self._run_id, status="RUNNING")
        return super().experiment

    def _previous_run_id(self) -> str | None:
        client = self._mlflow_client
        found = client.get_experiment_by_name(self._experiment_name)
        if found is None or found.lifecycle_stage == "deleted":
            return None
        wanted = run_dir_tag(self._run_dir)
        runs = client.search_runs(
            [found.experiment_id],
            # A quote cannot be written in MLflow's filter: such a path is compared here instead.
            filter_string="" if "'" in wanted else f"tags.{RUN_DIR_TAG} = '{wanted}'",
            order_by=["attributes.start_time DESC"],
            max_results=1000,
        )
        return next((run.info.run_id for run in runs if run.data.tags.get(RUN_DIR_TAG) == wanted), None)

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        """Log params; in a continued run, a value that differs from the first part's goes to a `resumed.` tag."""
        flat = _flatten_dict(_convert_params(params))
        client = self.experiment
        if self.continued:
            logged = client.get_run(self.run_id).data.params
            changed = {k: v for k, v in flat.items() if k in logged and logged[k] != str(v)[:_PARAM_CHARS]}
            for key, value in changed.items():
                client.set_tag(self.run_id, f"{RESUMED_TAG_PREFIX}{key}", str(value)[:_TAG_CHARS])
            flat = {k: v for k, v in flat.items() if k not in changed}
        super().log_hyperparams(flat)
