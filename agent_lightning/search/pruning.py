"""Trial pruning: a Lightning callback reporting each epoch's metric to the trial's Optuna study."""

from __future__ import annotations

from dataclasses import dataclass

import lightning.pytorch as pl
import optuna

from agent_lightning.errors import ConfigError
from agent_lightning.search.storage import PRUNER_ATTR, build_pruner, open_storage


@dataclass(frozen=True)
class Pruned:
    """What a pruned trial's job returns instead of its metric."""

    epoch: int


class OptunaPruning(pl.Callback):
    """Reports a metric to the trial after every validation and stops the run when the pruner says so.

    Rank 0 talks to the study storage; its decision is broadcast so all ranks stop together.
    """

    def __init__(self, storage: str, study_name: str, trial_id: int, monitor: str = "val/acc") -> None:
        self.storage = storage
        self.study_name = study_name
        self.trial_id = trial_id
        self.monitor = monitor
        self.pruned_at_epoch: int | None = None
        self._trial: optuna.trial.Trial | None = None

    def _get_trial(self) -> optuna.trial.Trial:
        if self._trial is None:
            storage = open_storage(self.storage)
            spec = optuna.load_study(study_name=self.study_name, storage=storage).user_attrs.get(PRUNER_ATTR)
            study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=build_pruner(spec))
            self._trial = optuna.trial.Trial(study, self.trial_id)
        return self._trial

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Report this epoch's metric; decide on rank 0 whether to prune, and stop every rank if so."""
        if trainer.sanity_checking:
            return
        decision: tuple[bool, str | None, bool] = (False, None, True)
        if trainer.is_global_zero:
            decision = self._report(trainer)
        # Every rank learns the decision, or rank 0's error: raised on rank 0 alone, the others would wait forever.
        prune, error, the_users = trainer.strategy.broadcast(decision, src=0)
        if error is not None:
            raise ConfigError(error) if the_users else RuntimeError(error)
        if prune:
            self.pruned_at_epoch = trainer.current_epoch
            trainer.should_stop = True

    def _report(self, trainer: pl.Trainer) -> tuple[bool, str | None, bool]:
        """(whether to prune, None, True) once reported, else (False, the error's line, whether it is yours).

        Yours to fix: a monitor never logged or a storage that failed; otherwise a bug, raised as a crash.
        """
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return False, f"optuna_trial.monitor={self.monitor!r} was not logged; pruning needs it", True
        try:
            trial = self._get_trial()
            trial.report(float(value), step=trainer.current_epoch)
            return trial.should_prune(), None, True
        except Exception as err:  # a line for every rank; the storage's failures named as the storage's
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            stored = isinstance(err, optuna.exceptions.OptunaError | KeyError | OSError)
            if stored or type(err).__module__.startswith("sqlalchemy"):
                where = f"optuna_trial.storage={self.storage}: reporting to study {self.study_name!r} failed"
                return False, f"{where} ({first})", True
            return False, f"reporting to the Optuna study failed: {type(err).__name__}: {first}", False
