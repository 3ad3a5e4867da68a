"""Searches that survive their failures: a killed search resumes cleanly, a bad trial fails alone, lazy imports."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from optuna.trial import TrialState

from agent_lightning.config import config_dir
from agent_lightning.search.space import flatten

from .conftest import run_cli

TINY = [
    "data.train_size=2048",
    "data.val_size=512",
    "data.test_size=512",
    "trainer.max_epochs=1",
    "test=false",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def test_importing_the_trainer_or_hydras_plugins_does_not_import_optuna_or_ray() -> None:
    code = (
        "import sys, agent_lightning.train\n"
        "from hydra.core.plugins import Plugins\n"
        "from hydra.plugins.sweeper import Sweeper\n"
        "names = sorted(c.__name__ for c in Plugins.instance().discover(Sweeper))\n"
        "print(names, 'optuna' in sys.modules, 'ray' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip().endswith("False False"), result.stdout
    assert "OptunaSweeper" in result.stdout and "RayTuneSweeper" in result.stdout


def hydra_config(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_the_sweeper_has_a_name_of_its_own_and_the_slurm_preset_composes() -> None:
    cfg = hydra_config("hparams_search=optuna")
    assert cfg.hydra.sweeper._target_.endswith("agent_lightning_sweepers.optuna_sweeper.OptunaSweeper")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = hydra_config("hydra/launcher=slurm", "devices=4", "num_nodes=2")
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert (cfg.hydra.launcher.nodes, cfg.hydra.launcher.tasks_per_node, cfg.hydra.launcher.gpus_per_node) == (2, 4, 4)


def test_dotted_keys_given_on_the_command_line_become_flat_search_keys() -> None:
    # `+hydra.sweeper.params.model.num_layers="range(1,3)"` arrives nested under params.
    nested = {"model": {"num_layers": "range(1,3)"}, "optimizer.lr": "interval(1e-4, 1e-2)"}
    assert flatten(nested) == {"model.num_layers": "range(1,3)", "optimizer.lr": "interval(1e-4, 1e-2)"}


@pytest.mark.timeout(180)
def test_a_failing_trial_fails_alone_with_its_error_and_the_search_goes_on(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'bad.db'}"
    result = run_cli(
        "hparams_search=optuna",
        *TINY,
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.n_trials=1",
        # The README's form: a dotted key given under params on the command line.
        '+hydra.sweeper.params.model.num_layers="range(1,3)"',
        # A learning rate of 1e6 is a valid value, and makes the loss explode when the trial runs.
        'hydra.sweeper.params={optimizer: "choice(adam, sgd)", optimizer.lr: "choice(0.003, 1e6)"}',
        "hydra.sweeper.enqueue_trials=[{optimizer: sgd, optimizer.lr: 1e6}, {optimizer: adam, optimizer.lr: 0.003}]",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    trials = optuna.load_study(study_name="agent_lightning", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "optimizer.lr" in trials[0].user_attrs["error"]
    assert trials[1].params["model.num_layers"] in (1, 2)
    assert "optimizer.lr" in (tmp_path / "sweep" / "trials.csv").read_text()


@pytest.mark.timeout(120)
def test_a_space_with_a_value_no_trial_can_run_is_refused_before_the_first(tmp_path: Path) -> None:
    search = "optimizer.lr=interval(-1, 0.01)"
    message = "search space optimizer.lr: no trial can run optimizer.lr=-1.0: optimizer.lr=-1.0 is invalid"
    sweep = tmp_path / "sweep"
    result = run_cli("hparams_search=optuna", *TINY, search, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and message in output, output[-2000:]
    assert "Traceback" not in output and not sweep.exists()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["hparams_search=ray", "devices=2"], "a Ray Tune trial trains in one process"),
        (["hparams_search=optuna", "hydra.sweeper.max_failures=0"], "hydra.sweeper.max_failures=0 must be"),
        (
            ["hparams_search=optuna", "hydra.sweeper.storage=bogus://x", "hydra.sweeper.sampler._target_=a.NoSuch"],
            "hydra.sweeper.storage=bogus://x cannot hold the study (NoSuchModuleError",
        ),
    ],
)
def test_bad_sweeper_settings_exit_2_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    result = run_cli(*args, *TINY, f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and message in output, output[-2000:]
    assert "Traceback" not in output


def _wait_for_running_trial(
    storage: str, number: int, run_dir: Path, proc: subprocess.Popen, timeout: float = 120
) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the search ended before it could be killed"
        try:
            trials = optuna.load_study(study_name="resumable", storage=storage).trials
        except KeyError:  # the study is not created yet
            trials = []
        if len(trials) > number and trials[number].state == TrialState.RUNNING and run_dir.is_dir():
            return
        time.sleep(0.3)
    raise TimeoutError(f"trial {number} never started")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_killed_search_resumes_with_no_running_trial_and_no_repeated_values(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = [
        "hparams_search=optuna",
        *TINY,
        "trainer.max_epochs=3",  # trials long enough to be caught running on a busy machine
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=resumable",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.pruner=null",
        "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "agent_lightning.train", *args]
    with subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    ) as proc:
        try:
            _wait_for_running_trial(storage, 1, tmp_path / "sweep" / "1", proc)  # its job has started
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
    killed = optuna.load_study(study_name="resumable", storage=storage).trials
    assert [t.state for t in killed] == [TrialState.COMPLETE, TrialState.RUNNING]

    time.sleep(2.5)  # the killed trial's heartbeat is now older than the grace period
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    trials = optuna.load_study(study_name="resumable", storage=storage).trials
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    assert trials[1].state == TrialState.FAIL
    reruns = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert len(reruns) == 1 and reruns[0].params == trials[1].params and reruns[0].state == TrialState.COMPLETE
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 3
    values = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(values)) == len(values), values  # the resumed sampler did not re-propose trial 0's values


def test_a_space_is_refused_for_a_value_refused_by_name_or_that_cannot_be_composed() -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from agent_lightning.errors import ConfigError
    from agent_lightning.search.space_check import check_enqueued, check_space
    from agent_lightning.sweep_jobs import JobRefusedError

    def checker(overrides: list[str]) -> None:  # the run's checks, as `JobChecker` reports them
        if "optimizer=adamx" in overrides:
            raise JobRefusedError("optimizer=adamx: no such option", composing=True)
        if "optimizer.lr=-1.0" in overrides:
            raise JobRefusedError("optimizer.lr=-1.0 is invalid: use a positive number", composing=False)
        if "model.dropout=0.5" in overrides:  # refused because of another key's configured value
            raise JobRefusedError("model.hidden_dim=3 leaves nothing to drop", composing=False)

    with pytest.raises(ConfigError, match="search space optimizer: no trial can run optimizer=adamx: optimizer=adamx"):
        check_space({"optimizer": CategoricalDistribution(["adam", "adamx"])}, ["seed=1"], checker)
    with pytest.raises(ConfigError, match=r"search space optimizer.lr: no trial can run optimizer.lr=-1.0: "):
        check_space({"optimizer.lr": FloatDistribution(-1.0, 0.01)}, [], checker)
    check_space({"model.dropout": FloatDistribution(0.0, 0.5)}, [], checker)  # trials with another hidden_dim may run
    space = {"optimizer.lr": FloatDistribution(1e-4, 1e-2)}
    with pytest.raises(ConfigError, match=r"hydra.sweeper.enqueue_trials\[1\] \(optimizer.lr=-1.0\): optimizer.lr"):
        check_enqueued([{"optimizer.lr": 0.001}, {"optimizer.lr": -1.0, "not.searched": 1}], space, [], checker)

    def fixed_setting_refused(overrides: list[str]) -> None:  # a fixed setting every trial would have
        raise JobRefusedError("optimized_metric='val/nope' is not a metric the run logs", composing=False)

    with pytest.raises(ConfigError, match=r"^optimized_metric='val/nope' is not .* \(every value of the search space"):
        check_space({"model.dropout": FloatDistribution(0.0, 0.5)}, [], fixed_setting_refused)


def test_a_trial_killed_as_its_job_started_does_not_make_its_sweep_dir_foreign(tmp_path: Path) -> None:
    """Killed while Hydra wrote `.hydra/`, a trial's directory holds no overrides yet: its study still resumes there."""
    from agent_lightning.errors import ConfigError
    from agent_lightning.search.sweep_dir import check_trial_dirs_free

    sweep = tmp_path / "sweep"
    (sweep / "0" / ".hydra").mkdir(parents=True)
    (sweep / "0" / ".hydra" / "overrides.yaml").write_text("- optuna_trial.study_name=resumable\n")
    (sweep / "1" / ".hydra").mkdir(parents=True)
    (sweep / "1" / ".hydra" / "config.yaml").write_text("seed: 1\n")  # its overrides.yaml never written
    check_trial_dirs_free(sweep, "${hydra.job.num}", "resumable")
    (sweep / "1" / ".hydra" / "overrides.yaml").write_text("- seed=1\n")  # a run of no study: it would be lost
    with pytest.raises(ConfigError, match=r"holds an earlier sweep's runs \(1/ and on\)"):
        check_trial_dirs_free(sweep, "${hydra.job.num}", "resumable")
