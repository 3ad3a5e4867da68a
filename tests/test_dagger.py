"""DAgger: the aggregated dataset grows each iteration, and each retraining starts from the previous weights."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

pytest.importorskip("gymnasium")

from agent_lightning.agents import dagger
from agent_lightning.agents.dagger_state import asked_iterations, stopped_line
from agent_lightning.agents.environments import env_config
from agent_lightning.agents.experts import resolve_expert
from agent_lightning.export import load_agent


class StartWeights(pl.Callback):
    """Records the model's layer weights when training starts (after init_from has been applied)."""

    def __init__(self) -> None:
        self.weights: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = pl_module.model.state_dict()
        self.weights = {k: v.detach().clone() for k, v in state.items() if not k.startswith("normalizer.")}


def test_dagger_aggregates_data_and_continues_from_previous_weights(tmp_path, monkeypatch):
    starts: list[dict[str, torch.Tensor]] = []
    overrides_seen: list[list[str]] = []
    real_train = dagger.train_iteration

    def recording_train(overrides, output_dir):
        from agent_lightning.config import compose_config
        from agent_lightning.train import train

        probe = StartWeights()
        overrides_seen.append(list(overrides))
        result = train(compose_config(list(overrides), output_dir=output_dir), extra_callbacks=[probe])
        starts.append(probe.weights)
        return result

    assert real_train is not None
    monkeypatch.setattr(dagger, "train_iteration", recording_train)
    train_overrides = [
        "experiment=bc_cartpole",
        "model.hidden_dim=32",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.num_sanity_val_steps=0",
        "print_config=false",
    ]
    results = dagger.run_dagger(
        env_config("cartpole"), resolve_expert("cartpole"), "cartpole", tmp_path, train_overrides,
        iterations=2, demo_steps=800, rollout_steps=300, episodes=3,
    )  # fmt: skip
    assert [r.rows for r in results] == [800, 1100, 1400]
    assert dagger.best(results).return_mean == max(r.return_mean for r in results)
    assert dagger.table(results).splitlines()[-1].startswith(f"best: iteration {dagger.best(results).iteration}")
    # The best is chosen on seeds 0..2: played again on seeds that chose nothing, its return is the one to quote.
    held_out = dagger.held_out(dagger.best(results), env_config("cartpole"), 4)
    assert held_out["episodes"] == 4 and 8 <= held_out["return_mean"] <= 500  # CartPole: +1 per step
    line = dagger.table(results, held_out).splitlines()[-1]
    assert line.startswith("held out (seeds 1000000000..1000000003): return mean=") and " success=" in line
    for r in results:  # each iteration's dataset holds every row so far
        manifest = json.loads((Path(r.dataset) / "manifest.json").read_text())
        assert sum(manifest["splits"][s]["rows"] for s in ("train", "val", "test")) == r.rows
        assert manifest["num_classes"] == 2 and manifest["provenance"]["dagger_iteration"] == r.iteration
    assert not any(o.startswith("init_from=") for o in overrides_seen[0])
    for index in (1, 2):
        previous = results[index - 1].checkpoint
        assert f"init_from='{previous}'" in overrides_seen[index]  # quoted: a run directory may hold any character
        saved = {k: v for k, v in load_agent(previous).state_dict().items() if not k.startswith("normalizer.")}
        assert saved.keys() == starts[index].keys()
        for key, value in saved.items():
            torch.testing.assert_close(starts[index][key], value, msg=f"iteration {index} did not start from {key}")
        # ... and trained on from there: its own checkpoint differs from where it started.
        trained = load_agent(results[index].checkpoint).state_dict()
        assert any(not torch.equal(trained[k], v) for k, v in saved.items())


def test_a_stopped_run_resumes_to_the_uninterrupted_runs_result(tmp_path: Path, monkeypatch) -> None:
    from agent_lightning.errors import ConfigError

    env, expert = env_config({"id": "tests.user_envs:Reach-v0"}), resolve_expert("tests.user_envs:reach_expert")
    train_overrides = ["experiment=bc", "model.hidden_dim=32", "trainer.max_epochs=2", "print_config=false"]
    train_overrides += ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
    settings = dict(iterations=1, demo_steps=600, rollout_steps=300, episodes=6)

    def run(work_dir: Path, **extra) -> list[dagger.Iteration]:
        return dagger.run_dagger(env, expert, "reach", work_dir, train_overrides, **settings, **extra)

    straight = run(tmp_path / "straight")
    with pytest.raises(ConfigError, match=r"holds a DAgger run already: continue it \(resume\)"):
        run(tmp_path / "straight")  # a second run over it, from Python: refused before anything is written
    # A run stopped before its first iteration wrote anything continues too.
    (tmp_path / "scratch").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "scratch")  # run directories on symlinked scratch space
    stopped = tmp_path / "linked" / "stopped"
    real_rollout = dagger.rollout
    monkeypatch.setattr(dagger, "rollout", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        run(stopped)
    assert not (stopped / "iter_00").exists()
    assert (
        stopped_line(15, stopped)
        == f"stopped by SIGTERM in iteration 0; no iteration had finished: continue with resume={stopped}"
    )
    monkeypatch.setattr(dagger, "rollout", real_rollout)
    trained = dagger.train_iteration

    def stopped_in_iteration_1(overrides, output_dir):
        if "iter_01" in str(output_dir):
            raise KeyboardInterrupt  # a stop while iteration 1 trains: its data is written, its training is not
        return trained(overrides, output_dir)

    monkeypatch.setattr(dagger, "train_iteration", stopped_in_iteration_1)
    with pytest.raises(KeyboardInterrupt):
        run(stopped, resume=True)
    assert (stopped / "iter_01" / "data").is_dir()
    assert "in iteration 1; iteration 0 is kept" in stopped_line(15, stopped)
    calls: list[str] = []
    monkeypatch.setattr(dagger, "train_iteration", lambda o, d: calls.append(str(d)) or trained(o, d))
    resumed = run(stopped, resume=True)
    assert calls == [str(stopped / "iter_01" / "train")]  # iteration 0 kept, iteration 1 made again
    for ours, theirs in zip(resumed, straight, strict=True):
        assert (ours.rows, ours.new_rows, ours.rollout_return) == (theirs.rows, theirs.new_rows, theirs.rollout_return)
        assert (ours.return_mean, ours.return_std) == (theirs.return_mean, theirs.return_std)
    # Finished, it can go further (iterations=2) but not back.
    with pytest.raises(ConfigError, match=r"iterations=0, but the run in .* has finished iteration 1: give iter"):
        dagger.run_dagger(env, expert, "reach", stopped, train_overrides, 0, 600, 300, 6, resume=True)
    assert asked_iterations(stopped) == 1
    # Iterations without records (a run changed by hand), or a run without dagger.json (an earlier version's):
    # refused, and nothing removed.
    (stopped / "iter_00" / "iteration.json").unlink()
    with pytest.raises(ConfigError, match=r"holds iterations without their record .*nothing was removed"):
        run(stopped, resume=True)
    (stopped / "dagger.json").unlink()
    with pytest.raises(ConfigError, match=r"has no dagger.json: .* earlier version, .*nothing was removed"):
        run(stopped, resume=True)
    assert (stopped / "iter_00" / "data").is_dir() and (stopped / "iter_01" / "iteration.json").is_file()


DAGGER = [sys.executable, "-m", "agent_lightning.dagger"]


def _dagger_command(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DAGGER, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_a_run_stopped_by_a_signal_continues_with_resume_and_prints_lightnings_lines_once(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train = '["trainer.max_epochs=1","trainer.enable_progress_bar=false","trainer.enable_model_summary=false"]'
    command = [
        *DAGGER, "env=cartpole", "iterations=1", "demo_steps=500", "rollout_steps=200", "episodes=1",
        f"train={train}", "train_experiment=bc_cartpole", f"hydra.run.dir={run}",
    ]  # fmt: skip
    with subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as first:
        deadline = time.monotonic() + 120
        while not (run / "iter_01" / "train").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        first.send_signal(signal.SIGTERM)  # in iteration 1's training, or just before it: the same stop
        output = first.communicate(timeout=120)[0]
    assert first.returncode == 128 + signal.SIGTERM, output[-2000:]
    assert f"stopped by SIGTERM in iteration 1; iteration 0 is kept: continue with resume={run}" in output
    first_config = (run / ".hydra" / "config.yaml").read_text()
    first_checkpoint = json.loads((run / "iter_00" / "iteration.json").read_text())["checkpoint"]
    # Anything but iterations= beside resume= would silently differ from the run it continues: refused.
    from agent_lightning.dagger import resume_arguments
    from agent_lightning.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        resume_arguments(["dagger", f"resume={run}", "iterations=2", "env=acrobot"])
    assert str(refused.value) == (
        f"resume={run} continues that run with its own settings ({run}/.hydra/config.yaml): give only "
        "iterations=N beside it, not env=acrobot"
    )
    with pytest.raises(ConfigError, match=f"resume={tmp_path} is not a DAgger run directory"):
        resume_arguments(["dagger", f"resume={tmp_path}"])
    resumed = _dagger_command(f"resume={run}", cwd=tmp_path)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-2000:]
    rows = dagger_rows(run)  # iteration 0 kept, not trained again; iteration 1 made again from its start
    assert [r["rows"] for r in rows] == ["500", "700"] and rows[0]["checkpoint"] == str(run / first_checkpoint)
    # Lightning is imported after Hydra set up logging: its own console handler and Hydra's both printed each line.
    assert output.count("GPU available:") == 1 and output.count("`Trainer.fit` stopped") == 1, output
    assert (run / ".hydra" / "config.yaml").read_text() == first_config  # its own settings, as first run
    assert (run / ".hydra" / "resume-1" / "config.yaml").is_file()
    log = (run / "dagger.log").read_text()  # one log, appended to
    assert "stopped by SIGTERM" in log and "continuing" in log and "GPU available:" in log


def test_a_requeued_job_continues_its_own_dagger_run_and_no_other(tmp_path: Path, monkeypatch) -> None:
    from omegaconf import OmegaConf

    from agent_lightning.agents.dagger_state import start_run
    from agent_lightning.dagger import _refuse_a_dagger_run_dir, requeued_arguments, resume_arguments
    from agent_lightning.errors import ConfigError

    run, command = tmp_path / "run", ["env=cartpole", "iterations=3", 'train=["trainer.max_epochs=1"]']
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(command)))  # as Hydra saves
    (run / ".hydra" / "config.yaml").write_text("iterations: 3\n")
    start_run(run, 3, resume=False)  # the first start wrote its state, then was preempted
    argv = ["dagger", *command, f"hydra.run.dir={run}"]
    for name in ("SLURM_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    assert requeued_arguments(argv) == (argv, None)  # not restarted: the usual refusal of a held directory follows
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    continued, line = requeued_arguments(argv)
    assert continued == ["dagger", f"resume='{run}'"] and line == (
        f"restarted by the scheduler (SLURM_RESTART_COUNT=1): continuing the DAgger run in {run}"
    )
    assert resume_arguments(continued)[-1] == "hydra.output_subdir=.hydra/resume-1"  # accepted as a resume
    monkeypatch.setenv("JOB_DIR", "run")  # a directory named by the job's environment, as Hydra resolves it
    by_env = ["dagger", *command, f"hydra.run.dir={tmp_path}/${{oc.env:JOB_DIR}}", "hydra/job_logging=disabled"]
    continued = requeued_arguments(by_env)[0]
    assert continued == ["dagger", "hydra/job_logging=disabled", f"resume='{run}'"] and resume_arguments(continued)
    other = ["dagger", "env=acrobot", "iterations=3", f"hydra.run.dir={run}"]  # another command there: refused
    assert requeued_arguments(other) == (other, None)
    with pytest.raises(ConfigError, match=r"holds a DAgger run already \(restarted, SLURM_RESTART_COUNT=1, with an"):
        _refuse_a_dagger_run_dir(other[1:])
    new = ["dagger", *command, f"hydra.run.dir={tmp_path / 'new'}"]  # stopped before the run began: a new run
    assert requeued_arguments(new) == (new, None)


def dagger_rows(run: Path) -> list[dict[str, str]]:
    """The rows of a DAgger run's dagger.csv."""
    import csv

    with open(run / "dagger.csv", newline="") as file:
        return list(csv.DictReader(file))


def test_the_training_preset_is_its_own_key_beside_the_experiment_group() -> None:
    # `experiment` is a config group: dagger's key of that name could never be set from the command line.
    from omegaconf import OmegaConf

    from agent_lightning.dagger import _train_overrides

    chosen = _train_overrides(OmegaConf.create({"train_experiment": "bc_acrobot", "train": []}), "cartpole")
    assert chosen[0] == "experiment=bc_acrobot"
    assert _train_overrides(OmegaConf.create({"train_experiment": None, "train": []}), "cartpole")[0] == (
        "experiment=bc_cartpole"
    )


def test_bad_training_overrides_and_counts_are_refused_before_any_demonstration() -> None:
    from omegaconf import OmegaConf

    from agent_lightning.arguments import check_arguments
    from agent_lightning.dagger import RULES, _train_overrides
    from agent_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train=\[...\] for the training runs: optimizer=sgdd: no such option"):
        _train_overrides(OmegaConf.create({"train_experiment": None, "train": ["optimizer=sgdd"]}), "cartpole")
    bad_value = r"train=\[...\] for the training runs: trainer.float32_matmul_precision='med' is invalid: use highest"
    with pytest.raises(ConfigError, match=bad_value):  # a value, checked as train checks it: now, not after the demos
        precision = ["trainer.float32_matmul_precision=med"]
        _train_overrides(OmegaConf.create({"train_experiment": None, "train": precision}), "cartpole")
    with pytest.raises(ConfigError, match=r"iterations='abc' is invalid: use a whole number of DAgger iterations"):
        check_arguments(OmegaConf.create({"iterations": "abc"}), RULES)
    for bad in (0, -1, 2.5, "abc"):  # 0 read as "the experiment's own", -1 as "no epoch limit": both refused
        with pytest.raises(
            ConfigError, match=rf"continue_epochs={bad!r} is invalid: use a whole number of epochs >= 1"
        ):
            check_arguments(OmegaConf.create({"continue_epochs": bad}), RULES)
    check_arguments(OmegaConf.create({"continue_epochs": None}), RULES)


def test_rollout_seeds_that_would_meet_the_evaluation_or_held_out_seeds_are_refused() -> None:
    from agent_lightning.errors import ConfigError

    dagger.check_seeds(1000, 5, 50_000, 20)  # the defaults
    with pytest.raises(ConfigError, match=r"seed=10: rollout episodes would be played on the evaluation seeds 0..19"):
        dagger.check_seeds(10, 5, 50_000, 20)
    with pytest.raises(ConfigError, match=r"seed=999999000: .* held-out seeds 1000000000..1000000019: give a seed"):
        dagger.check_seeds(999_999_000, 1, 10_000, 20)
    dagger.check_seeds(dagger.HELD_OUT_SEED + 20, 5, 50_000, 20)  # beyond them


def test_an_env_without_a_bc_preset_of_its_own_trains_with_the_general_one() -> None:
    from omegaconf import OmegaConf

    from agent_lightning.dagger import _train_overrides

    assert _train_overrides(OmegaConf.create({"train_experiment": None, "train": []}), "reach")[0] == "experiment=bc"
