"""Registers `hydra/sweeper=ray_tune`: a search on Ray Tune (Optuna's sampler, ASHA); Ray is imported only then."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class RayTuneSweeper(Sweeper):
    """agent_lightning's Ray Tune sweeper (Hydra instantiates plugins only from `hydra_plugins`)."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Build the search (importing Ray when it runs)."""
        from agent_lightning.search.ray_tune import RayTuneSearch

        self.search = RayTuneSearch(**self.settings)
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        """Run the search."""
        return self.search.sweep(arguments)


@dataclass
class RayTuneSweeperConf:
    """Settings of `hydra.sweeper` when it is the Ray Tune sweeper."""

    _target_: str = f"{RayTuneSweeper.__module__}.{RayTuneSweeper.__qualname__}"
    _recursive_: bool = False  # the scheduler is built when the search runs, after Ray is imported
    # The metric each trial reports after every epoch, and whether higher is better.
    metric: str = "val/acc"
    mode: str = "max"
    num_samples: int = 20
    max_concurrent_trials: int = 2
    # The search space: key -> choice(...), range(...), interval(...) or tag(log, interval(...)).
    params: Any = None
    # Any ray.tune.schedulers class (ASHAScheduler stops trials that fall behind at each rung), or null.
    scheduler: Any = field(default_factory=lambda: {"_target_": "ray.tune.schedulers.ASHAScheduler"})
    seed: Any = None
    # Parameter sets to try first.
    points_to_evaluate: Any = None
    # An existing Ray cluster ("auto", "ray://head:10001"); null starts Ray on this machine.
    address: Any = None
    # CPUs Ray may use when it starts here (null: all of them).
    num_cpus: Any = None
    # Resources one trial holds: {cpu: 2, gpu: 1}; a trial's torch threads follow its CPUs.
    resources_per_trial: Any = field(default_factory=lambda: {"cpu": 1})
    # The experiment's folder under hydra.sweep.dir; rerunning with the same sweep dir resumes it.
    name: str = "tune"


ConfigStore.instance().store(
    group="hydra/sweeper", name="ray_tune", node=RayTuneSweeperConf, provider="agent_lightning"
)
