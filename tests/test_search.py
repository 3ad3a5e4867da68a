"""Hyperparameter search: Optuna on current releases, pruning, resumable studies, bad input."""

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from agent_lightning.errors import ConfigError
from agent_lightning.search import parse_space

from .conftest import run_cli

SMALL = [
    "data.train_size=8192",
    "data.val_size=2048",
    "data.test_size=1024",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
# A good trial first, then a hopeless one (lr 1e-4 learns little in an epoch): the pruner must stop it.
GOOD_THEN_HOPELESS = "hydra.sweeper.enqueue_trials=[{optimizer.lr: 0.005}, {optimizer.lr: 0.0001}]"
PRUNE_AFTER_ONE = "hydra.sweeper.pruner.n_startup_trials=1"


def test_search_space_syntax_maps_to_optuna_distributions() -> None:
    space, fixed = parse_space(
        {"optimizer.lr": "tag(log, interval(1e-4, 1e-2))", "model.dropout": "interval(0.0, 0.5)"},
        ["model.hidden_dim=choice(128, 256)", "model.num_layers=range(1, 4)", "trainer.max_epochs=3", "a=x,y"],
    )
    assert space["optimizer.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert space["model.dropout"] == FloatDistribution(0.0, 0.5)
    assert space["model.hidden_dim"] == CategoricalDistribution([128, 256])
    assert space["model.num_layers"] == IntDistribution(1, 3)  # range() excludes its stop, as in Python
    assert space["a"] == CategoricalDistribution(["x", "y"])
    assert fixed == ["trainer.max_epochs=3"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"optimizer.lr": "interval(1e-3)"}, "malformed search space"),
        ({"optimizer.lr": "interval(1e-2, 1e-3)"}, "needs start < end"),
        ({"optimizer.lr": "tag(log, interval(0, 1))"}, "log interval needs start > 0"),
        ({"model.num_layers": "range(3, 3)"}, "is empty"),
        ({}, "nothing to search"),
    ],
)
def test_bad_search_spaces_are_refused_with_the_key(params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_space(params, [])


def pruned_search(tmp_path: Path, *overrides: str) -> tuple[Path, str]:
    """Run a search whose second trial is hopeless and prunable; return its sweep dir and output."""
    sweep = tmp_path / "search"
    result = run_cli(
        "hparams_search=optuna",
        PRUNE_AFTER_ONE,
        GOOD_THEN_HOPELESS,
        *SMALL,
        *overrides,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return sweep, output


@pytest.mark.timeout(300)
def test_search_completes_prunes_the_hopeless_trial_and_reports_the_best(tmp_path: Path) -> None:
    sweep, output = pruned_search(tmp_path, "hydra.sweeper.n_trials=4")
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.trials.complete + results.trials.pruned == 4
    assert results.trials.pruned >= 1
    trials = (sweep / "trials.csv").read_text().splitlines()
    assert trials[2].startswith("1,PRUNED,")  # the hopeless one
    assert set(results.best_params) == {"optimizer", "optimizer.lr", "model.hidden_dim", "model.dropout"}
    assert results.best_value > 0.5
    assert f"Best trial {results.best_trial}: val/acc_best = {results.best_value:.6g}" in output
    # Where the best trial's checkpoints and metrics are (its job directory), in the summary and the table.
    best_run = Path(results.best_run_dir)
    assert best_run == sweep / str(results.best_trial) and (best_run / "summary.json").is_file()
    assert trials[0].split(",")[-2:] == ["run_dir", "error"] and str(best_run) in trials[results.best_trial + 1]
    assert (sweep / "optimization_history.png").stat().st_size > 1000
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]


@pytest.mark.timeout(300)
def test_a_stored_study_resumes_and_keeps_counting(tmp_path: Path, caplog) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = ["hparams_search=optuna", f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=resumable", *SMALL]
    first = run_cli(*common, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={tmp_path / 'first'}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli(*common, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path / 'second'}", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumes with 1 finished trials" in second.stdout + second.stderr
    study = optuna.load_study(study_name="resumable", storage=storage)
    assert [t.number for t in study.trials] == [0, 1]
    assert sorted(p.name for p in (tmp_path / "second").iterdir() if p.is_dir()) == ["1"]  # only the missing trial
    # Another study in the first one's sweep dir would write its trial 0 over that study's: refused at once.
    from agent_lightning.search.optuna_sweep import OptunaSearch

    kept = (tmp_path / "first" / "0" / ".hydra" / "overrides.yaml").read_bytes()
    other = OptunaSearch(
        None, None, "maximize", "other", storage, n_trials=1, n_jobs=None, params={"seed": "range(0, 9)"}
    )
    other.config = OmegaConf.create({"hydra": {"sweep": {"subdir": "${hydra.job.num}"}}})
    other.sweep_dir, other.job_checker, other.launcher = tmp_path / "first", None, None  # nothing may run
    with pytest.raises(SystemExit) as refused, caplog.at_level("ERROR"):
        other.sweep([])
    assert refused.value.code == 2 and (tmp_path / "first" / "0" / ".hydra" / "overrides.yaml").read_bytes() == kept
    assert f"hydra.sweep.dir={tmp_path / 'first'} holds the trials of study 'resumable' (0/ and on)" in caplog.text
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["resumable"]


def test_tune_reports_each_epochs_own_training_metrics(compose_cfg, tmp_path: Path) -> None:
    import csv

    from agent_lightning.search.ray_tune import TuneReport
    from agent_lightning.train import train

    class Reported(TuneReport):
        def __init__(self) -> None:
            self.losses: list[float | None] = []

        def report(self, trainer) -> None:  # what Tune would be handed, without a Ray session
            value = trainer.callback_metrics.get("train/loss_epoch")
            self.losses.append(None if value is None else float(value))

    reported = Reported()
    small = ["data.train_size=2048", "data.val_size=512", "test=false", "logger=csv"]
    train(compose_cfg(*small), extra_callbacks=[reported])
    with next((tmp_path / "run").glob("csv/**/metrics.csv")).open() as rows:
        logged = [float(row["train/loss_epoch"]) for row in csv.DictReader(rows) if row.get("train/loss_epoch")]
    assert len(logged) == 2 and reported.losses == pytest.approx(logged)  # each epoch's, not the one before


def test_max_failures_stops_new_trials_and_tells_the_running_ones(tmp_path: Path) -> None:
    import threading
    from types import SimpleNamespace

    from optuna.trial import TrialState

    from agent_lightning.search.optuna_sweep import OptunaSearch
    from agent_lightning.search.storage import open_storage

    first_running = threading.Event()

    class Job:  # what Hydra's launcher returns: the value, or the job's error when it is read
        def __init__(self, number: int) -> None:
            self.number, self.hydra_cfg = number, None

        @property
        def return_value(self) -> float:
            if self.number == 0:
                return 0.9
            raise RuntimeError("training diverged")

    def launch(jobs: list[list[str]], initial_job_idx: int) -> list[Job]:
        if initial_job_idx == 0:  # the first trial runs on while the next ones fail
            first_running.set()
            time.sleep(1.0)
        else:
            first_running.wait()
        return [Job(initial_job_idx)]

    search = OptunaSearch(
        None, None, "maximize", "failing", None, n_trials=10, n_jobs=2, params={"seed": "range(0, 100)"}, max_failures=2
    )
    search.config, search.sweep_dir = OmegaConf.create({}), tmp_path / "sweep"

    class EveryJobComposes:
        def __call__(self, overrides: list[str]) -> None:
            pass

        def composing_only(self) -> "EveryJobComposes":
            return self

    search.job_checker = EveryJobComposes()
    search.launcher = SimpleNamespace(launch=launch)
    with pytest.raises(SystemExit) as stopped:
        search.sweep([])
    study = optuna.load_study(
        study_name="failing", storage=open_storage(f"journal:///{tmp_path / 'sweep' / 'optuna.journal'}")
    )
    states = [t.state for t in study.trials]
    assert stopped.value.code == 1 and states[0] == TrialState.COMPLETE and study.trials[0].value == 0.9
    assert states[1:] == [TrialState.FAIL, TrialState.FAIL]  # no trial started after the second failure in a row


def test_trials_are_pruned_on_the_optimized_metric_and_a_study_ranked_upside_down_is_refused() -> None:
    from agent_lightning.config import compose_config
    from agent_lightning.search.optuna_sweep import OptunaSearch
    from agent_lightning.validation import pruning_monitor

    def monitor(*overrides: str) -> str:
        return pruning_monitor(compose_config(["hparams_search=optuna", *overrides]))

    assert monitor() == "val/acc_best"  # what the study maximises, reported after every validation
    assert monitor("optimized_metric=val/loss") == "val/loss"
    assert monitor("optimized_metric=test/acc") == "val/acc"  # not logged per validation: the default
    minimized = compose_config(["hparams_search=optuna", "optimized_metric=test/loss"])
    assert pruning_monitor(minimized, "minimize") == "val/loss"  # the default better the study's way
    assert monitor("optuna_trial.monitor=val/loss", "optimized_metric=val/loss") == "val/loss"

    def search(direction: str, **config: object) -> OptunaSearch:
        made = OptunaSearch(None, None, direction, "s", None, n_trials=1, n_jobs=1, params={})
        made.config = OmegaConf.create(config)
        return made

    search("minimize", optimized_metric="val/loss")._check_settings()
    search("minimize", optimized_metric="test/loss")._check_settings()  # pruned on val/loss: no conflict
    with pytest.raises(
        ConfigError, match=r"^hydra.sweeper.direction=maximize but optimized_metric=val/loss is better "
    ):
        search("maximize", optimized_metric="val/loss")._check_settings()
    wrong_monitor = search("minimize", optimized_metric="val/loss", optuna_trial={"monitor": "val/acc"})
    wrong_monitor.pruner = {"_target_": "optuna.pruners.MedianPruner"}
    with pytest.raises(ConfigError, match=r"^optuna_trial.monitor=val/acc is better higher but the study's direction"):
        wrong_monitor._check_settings()
    wrong_monitor.pruner = None  # nothing prunes: what the trials report does not matter
    wrong_monitor._check_settings()


def test_ray_tune_compares_trials_on_the_optimized_metric_as_it_is_reported_each_epoch() -> None:
    from agent_lightning.config import compose_raw
    from agent_lightning.search.ray_tune import RayTuneSearch

    def check(*overrides: str) -> None:
        cfg = compose_raw("config", ["hparams_search=ray", *overrides], with_hydra=True)
        sweeper = OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)
        search = RayTuneSearch(**{k: v for k, v in sweeper.items() if not k.startswith("_")})
        search.config = cfg
        search._check([])

    check()  # val/acc_best, max
    check("optimized_metric=val/loss", "hydra.sweeper.mode=min")
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.mode=max but optimized_metric=val/loss is better lower"):
        check("optimized_metric=val/loss")
    with pytest.raises(ConfigError, match=r"^optimized_metric=test/acc is not reported after each epoch"):
        check("optimized_metric=test/acc")


def test_a_sampler_that_cannot_be_built_is_one_line_naming_the_key() -> None:
    from agent_lightning.search.optuna_sweep import OptunaSearch

    study = optuna.create_study()
    for sampler, why in (
        ({"_target_": "optuna.samplers.NoSuchSampler"}, "NoSuchSampler"),
        ({"_target_": "optuna.samplers.TPESampler", "n_startup": 3}, "n_startup"),
    ):
        search = OptunaSearch(OmegaConf.create(sampler), None, "maximize", "s", None, n_trials=1, n_jobs=1, params={})
        with pytest.raises(ConfigError, match=rf"^hydra.sweeper.sampler: .*{why}"):
            search._reseed(study)


def test_a_pruning_report_that_fails_on_rank_0_stops_every_rank_with_its_line(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from agent_lightning.search.pruning import OptunaPruning

    sent: list[object] = []

    def trainer(rank_0: bool, from_rank_0: object = None) -> SimpleNamespace:
        def broadcast(obj: object, src: int = 0) -> object:
            sent.append(obj)
            return obj if rank_0 else from_rank_0

        metrics = {"val/acc": 0.5}
        return SimpleNamespace(
            sanity_checking=False,
            is_global_zero=rank_0,
            callback_metrics=metrics,
            current_epoch=0,
            strategy=SimpleNamespace(broadcast=broadcast),
            should_stop=False,
        )

    pruning = OptunaPruning(storage=f"sqlite:///{tmp_path / 'search.db'}", study_name="gone", trial_id=0)
    refused = r"optuna_trial.storage=sqlite:///.*search.db: reporting to study 'gone' failed \(.*Record does not exist"
    with pytest.raises(ConfigError, match=refused):
        pruning.on_validation_end(trainer(rank_0=True), None)
    (decision,) = sent
    assert decision[0] is False and "gone" in decision[1] and decision[2]  # sent to the other ranks before raised
    with pytest.raises(ConfigError, match=refused):  # another rank raises rank 0's line instead of waiting for it
        OptunaPruning("unused", "gone", 0).on_validation_end(trainer(rank_0=False, from_rank_0=decision), None)
    unlogged = trainer(rank_0=True)
    unlogged.callback_metrics = {}
    with pytest.raises(ConfigError, match=r"optuna_trial.monitor='val/acc' was not logged"):
        pruning.on_validation_end(unlogged, None)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pruning_works_when_trials_run_ddp_ranks(tmp_path: Path) -> None:
    sweep, _ = pruned_search(tmp_path, "strategy=ddp", "devices=2", "hydra.sweeper.n_trials=2")
    lines = (sweep / "trials.csv").read_text().splitlines()
    assert lines[1].startswith("0,COMPLETE,") and lines[2].startswith("1,PRUNED,")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_parallel_searches_share_one_study(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    command = [
        sys.executable,
        "-m",
        "agent_lightning.train",
        "hparams_search=optuna",
        *SMALL,
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=shared",
        "hydra.sweeper.n_trials=4",
    ]
    workers = [
        subprocess.Popen(
            [*command, f"hydra.sweep.dir={tmp_path / f'worker{i}'}"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        errors = [w.communicate(timeout=240)[1] for w in workers]
    finally:
        for worker in workers:
            worker.kill()
    assert [w.returncode for w in workers] == [0, 0], errors
    study = optuna.load_study(study_name="shared", storage=storage)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) >= 4 and len({t.number for t in study.trials}) == len(study.trials)
    ran = [len([p for p in (tmp_path / f"worker{i}").iterdir() if p.is_dir()]) for i in range(2)]
    assert all(n >= 1 for n in ran)  # both processes contributed trials


def test_jobs_that_run_elsewhere_are_only_composed_before_the_sweep() -> None:
    # A SLURM job's devices and data paths are its node's: it checks them itself when it starts.
    from agent_lightning.config import compose_raw
    from agent_lightning.sweep_jobs import JobChecker

    def task(cfg: object) -> None:
        pass

    task.check_job = print  # type: ignore[attr-defined]

    def checked(*overrides: str) -> object:
        return JobChecker.for_sweep(None, task, compose_raw("config", overrides, with_hydra=True)).check

    assert checked() is print  # in this process
    assert checked("hydra/launcher=joblib") is print  # in processes on this machine
    assert checked("hydra/launcher=slurm") is None


@pytest.mark.timeout(120)
def test_a_grid_with_one_bad_job_is_refused_before_any_job_trains(tmp_path: Path) -> None:
    sweep = tmp_path / "grid"
    result = run_cli("-m", "optimizer.lr=1e-3,-1", *SMALL, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output
    assert "grid job 1 of 2 (optimizer.lr=-1" in output and "optimizer.lr=-1 is invalid" in output
    assert not sweep.exists()  # job 0, whose config is good, never ran


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [
                "-m",
                "hparams_search=optuna",
                "hydra.sweeper.n_trials=1",
                "optimized_metric=val/nope",
                "trainer.max_steps=3",
            ],
            "optimized_metric='val/nope' is not a metric the run logs",
        ),
        (["-m", "optimizer.lr=range(1,1)"], "empty grid: optimizer.lr=range(1,1)"),
        (["hparams_search=optuna", "+hydra.sweeper.params.lr='interval(1)'"], "malformed search space"),
    ],
)
def test_bad_search_input_exits_nonzero_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    result = run_cli(
        *args, *SMALL, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0 and message in output
    assert "Traceback" not in output


def test_a_sweep_dir_holding_another_studys_or_a_grids_runs_is_refused(tmp_path: Path) -> None:
    from agent_lightning.search.sweep_dir import check_trial_dirs_free

    def run(number: int, *overrides: str) -> None:
        (tmp_path / str(number) / ".hydra").mkdir(parents=True)
        (tmp_path / str(number) / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(list(overrides)))

    run(0, "optuna_trial.study_name='mine'", "optimizer.lr=0.01")
    (tmp_path / "3").mkdir()  # no run in it: nothing to overwrite
    check_trial_dirs_free(tmp_path, "${hydra.job.num}", "mine")
    with pytest.raises(ConfigError, match=r"holds the trials of study 'mine' \(0/ and on\): study 'new' would write"):
        check_trial_dirs_free(tmp_path, "${hydra.job.num}", "new")
    check_trial_dirs_free(tmp_path, "${hydra.sweeper.study_name}_${hydra.job.num}", "new")  # its own names
    run(1, "optimizer.lr=0.01")  # a grid's job
    with pytest.raises(ConfigError, match=r"holds an earlier sweep's runs \(1/ and on\): .* another hydra.sweep.dir$"):
        check_trial_dirs_free(tmp_path, "${hydra.job.num}", "mine")
