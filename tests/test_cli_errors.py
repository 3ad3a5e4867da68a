"""Bad input from the command line: one clear message naming the key, a non-zero exit, no traceback."""

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import CompactHydraException
from omegaconf import OmegaConf

from agent_lightning.composition_errors import describe
from agent_lightning.config import compose_config, config_dir
from agent_lightning.data import ClusterTask
from agent_lightning.errors import user_facing
from agent_lightning.prepare import prepare
from agent_lightning.train import run

from .conftest import run_cli

pytestmark = pytest.mark.timeout(120)

# From the command line: errors composing the config (a group option or key that does not exist), and one of
# each kind of ours.
CLI_CASES = {
    "unknown strategy": (["strategy=dpp"], "strategy=dpp: no such option (did you mean strategy=ddp?)"),
    "unknown top-level key": (["learning_rate=0.1"], "learning_rate=0.1: the config has no key learning_rate"),
    "negative lr": (["optimizer.lr=-1"], "optimizer.lr=-1 is invalid"),
    "missing checkpoint": (["ckpt_path=/no/such/last.ckpt"], "ckpt_path=/no/such/last.ckpt does not exist"),
    "a relative path in a job that changes directory": (
        ["hydra.job.chdir=true", "init_from=runs/a/last.ckpt"],
        "init_from=runs/a/last.ckpt is relative, and hydra.job.chdir=true reads it from the run directory",
    ),
}
# The other checks raise the same kinds of error, which the command prints the same way (`errors.user_facing`):
# they are run in this process, and the line the command would print is read from `user_facing`.
CHECKED_CASES = {
    "no devices": (["devices=0"], "devices=0 is invalid"),
    "Lightning's word for the last checkpoint": (["ckpt_path=last"], "ckpt_path=last does not exist (ckpt_path=latest"),
    "more devices than exist": (["strategy=ddp", "devices=4096"], "devices=4096 but this machine has"),
    "batch not divisible": (["strategy=ddp", "devices=2", "data.batch_size=511"], "data.batch_size=511 (global)"),
    "non-numeric lr": (["optimizer.lr=abc"], "optimizer.lr='abc' is invalid"),
    "single strategy on two devices": (["devices=2"], "strategy=single runs on one device"),
    "bad parallel degrees": (
        ["strategy=model_parallel", "devices=2", "strategy.tensor_parallel=3"],
        "dp(-1) x tp(3) != world size 2",
    ),
    "tensor parallel with a norm layer": (
        ["strategy=model_parallel", "devices=2", "model.norm=layernorm"],
        "tensor_parallel > 1 needs model.norm=none",
    ),
    "offload without a GPU": (["strategy=fsdp", "strategy.offload=true"], "strategy.offload=true"),
    "an optimizer without DTensor support on shards": (
        ["strategy=fsdp", "devices=2", "optimizer=lamb"],
        "optimizer pytorch_optimizer.Lamb does not work on the sharded (DTensor) parameters of strategy=fsdp",
    ),
    "clipping a tensor-parallel model with a whole layer": (
        ["strategy=model_parallel", "devices=2", "trainer.gradient_clip_val=1.0"],
        "layer head is not split by the model's plan",
    ),
    "validation interval longer than an epoch": (
        ["data.train_size=4096", "trainer.val_check_interval=100"],
        "trainer.val_check_interval=100 is more batches than an epoch has",
    ),
    "interpolation of a key that does not exist": (["optimizer.lr=${nope}"], "optimizer.lr: Interpolation key 'nope'"),
    "nodes without a rendezvous": (["strategy=ddp", "num_nodes=2"], "num_nodes=2 needs rdzv_endpoint=HOST:PORT"),
    "no training batches": (["trainer.limit_train_batches=0"], "trainer.limit_train_batches=0 is invalid"),
    "a required group removed": (["~optimizer"], "optimizer is required: choose one of adam, adamw, lamb, sgd"),
    "a monitor the run never logs": (
        ["callbacks.early_stopping.monitor=val/accuracy"],
        "callbacks.early_stopping.monitor='val/accuracy' is not a metric the run logs while it trains: use one of",
    ),
    "an optimized metric the run never logs": (["optimized_metric=val/nosuch"], "optimized_metric='val/nosuch' is not"),
    "a pruning metric validation does not log": (
        ["optuna_trial.monitor=train/loss_epoch"],
        "optuna_trial.monitor='train/loss_epoch' is not a metric each validation logs: use one of val/acc",
    ),
    "a data size that is not a number": (["data.train_size=abc"], "data.train_size='abc' is invalid"),
    "a Trainer argument the run passes itself": (
        ["+trainer.enable_checkpointing=false"],
        "trainer.enable_checkpointing is set by the run itself: remove its checkpoint callbacks: ~callbacks.best_",
    ),
    "no validation rows": (
        ["data.val_size=0"],
        "data.val_size=0 is invalid: use a whole number of rows >= 1 (no valid",
    ),
    "negative noise": (["augment=noise", "augment.noise.std=-1"], "augment.noise.std=-1 is invalid: use a number >= 0"),
    "a time limit Lightning cannot read": (["trainer.max_time=garbage"], "trainer.max_time='garbage' is invalid"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_bad_input_exits_nonzero_with_one_clear_message(case: str, tmp_path: Path) -> None:
    overrides, message = CLI_CASES[case]
    result = run_cli(*overrides, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2
    assert message in output
    assert "Traceback" not in output and "HYDRA_FULL_ERROR" not in output
    assert len(result.stderr.strip().splitlines()) <= 1  # the error line, printed once
    assert "Composed config" not in output  # checked before the config tree is printed: the message stands alone
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing started


def test_a_bad_value_is_refused_before_lightning_loads(tmp_path: Path) -> None:
    # The checks need only torch and Hydra: the answer comes without waiting for Lightning's import.
    code = (
        "import sys\n"
        "from agent_lightning.train import main\n"
        "sys.argv = ['train', 'strategy=ddp', 'devices=2', 'data.batch_size=511', 'hydra.run.dir=run']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as stop:\n"
        "    print(stop.code, 'lightning' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "data.batch_size=511 (global)" in result.stdout + result.stderr, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "2 False"


# Overrides Hydra cannot compose, and the line the command prints for each (`composition_errors.describe`).
COMPOSITION_CASES = {
    "unknown option": (
        ["optimizer=adamm"],
        "optimizer=adamm: no such option (did you mean optimizer=adam?); optimizer takes adam, adamw, lamb, sgd",
    ),
    "misspelt key of a chosen option": (
        ["optimizer=sgd", "optimizer.momentun=0.9"],
        "optimizer.momentun=0.9: optimizer has no key momentun (did you mean optimizer.momentum=0.9?); "
        "optimizer has lr, momentum, nesterov, weight_decay",
    ),
    "misspelt group": (
        ["optimzer.lr=1"],
        "optimzer.lr=1: the config has no key optimzer (did you mean optimizer.lr=1?)",
    ),
    "new key of a constructor": (
        ["optimizer.zzz=1"],
        "optimizer.zzz=1: optimizer has no key zzz; optimizer has betas, lr, weight_decay; "
        "+optimizer.zzz=1 passes it to torch.optim.Adam",
    ),
    "a key that lives in a section": (
        ["lr=1e-3"],
        "lr=1e-3: the config has no key lr (did you mean optimizer.lr=1e-3?)",
    ),
    "a key of another option": (
        ["strategy.tensor_parallel=2"],
        "strategy.tensor_parallel=2: strategy has no key tensor_parallel; strategy=model_parallel has it",
    ),
    "two keys as near": (
        ["trainer.epochs=3"],
        "trainer.epochs=3: trainer has no key epochs (did you mean trainer.max_epochs=3 or trainer.min_epochs=3?)",
    ),
    "a group the command does not use": (["env=cartpole"], "env=cartpole: this command does not use the env group"),
    "a group set to null": (["debug=null"], "debug=null: a group is not set to null here"),
    "a group given a value": (["logger=false"], "logger=false: logger takes an option's name; logger takes csv,"),
    "a group given a float word": (["model=NaN"], "model=NaN: model takes an option's name; model takes mlp,"),
    "a Trainer argument the run sets itself": (
        ["trainer.logger=false"],
        "trainer.logger=false: the run sets trainer.logger itself: choose logger=<option> instead (logger=none: no",
    ),
    "a key under a group placed at the top": (["debug.max_steps=1"], "debug.max_steps=1: debug options set keys at"),
    "a section that is null": (
        ["env_eval.env=cartpole"],
        "env_eval.env=cartpole: env_eval has no key env: env_eval is null; where it takes a section, give it whole",
    ),
    "unreadable override": (["model.hidden_dim=[1,2"], "cannot read the override 'model.hidden_dim=[1,2'"),
}


@pytest.mark.parametrize("case", sorted(COMPOSITION_CASES))
def test_an_override_hydra_cannot_compose_is_one_line_naming_it(case: str) -> None:
    overrides, message = COMPOSITION_CASES[case]
    with pytest.raises(Exception) as info:
        compose_config(overrides)
    line = describe(info.value, "config", overrides)
    assert line.startswith(message) and "\n" not in line, line


def test_a_training_setting_given_to_dagger_is_shown_inside_its_train_list() -> None:
    from agent_lightning.config import compose_raw

    expected = {
        "trainer.max_epochs=3": "trainer.max_epochs=3: the config has no key trainer (did you mean "
        "'train=[\"trainer.max_epochs=3\"]'?)",
        "train.max_epochs=3": "train.max_epochs=3: train is a list of overrides, not a section: "
        "'train=[\"max_epochs=3\"]'",  # OmegaConf's own error here is a traceback about int()
    }
    for override, line in expected.items():
        with pytest.raises(Exception) as info:
            compose_raw("dagger", [override])
        assert describe(info.value, "dagger", [override]) == line


def test_a_sweep_is_described_with_its_first_values() -> None:
    # `-m optimizer=sgd,adamw`: the keys listed are those of the sweep's first job, not of the default optimizer.
    with pytest.raises(CompactHydraException) as info:
        compose_config(["optimizer=sgd", "optimizer.momentumm=0.9"])
    line = describe(info.value, "config", ["-m", "optimizer=sgd,adamw", "optimizer.momentumm=0.9"])
    assert "(did you mean optimizer.momentum=0.9?)" in line, line


def test_a_bug_keeps_its_traceback_and_hydra_full_error_keeps_hydras_own(monkeypatch, capsys, tmp_path) -> None:
    from hydra.errors import ConfigCompositionException

    from agent_lightning import train as train_command

    def broken(cfg):
        raise RuntimeError("a bug")

    monkeypatch.setattr(train_command, "_resolve_and_check", broken)
    monkeypatch.setattr(sys, "argv", ["train", "hydra.run.dir=run", "hydra.output_subdir=null"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        train_command.main()
    printed = capsys.readouterr().err
    assert stop.value.code == 1 and "RuntimeError: a bug" in printed
    assert "in reported_job" in printed and "hydra/_internal" not in printed  # from the job's frame on
    monkeypatch.setattr(sys, "argv", ["train", "optimizer.lrr=1"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigCompositionException):  # asked for: Hydra's exception, with its traceback
        train_command.main()


def test_each_command_suggests_its_own_keys_and_groups() -> None:
    # evaluate's `env` group defaults to null: no key in its config, yet `env=cartpole` is what was meant.
    GlobalHydra.instance().clear()
    with pytest.raises(CompactHydraException) as info, initialize_config_dir(str(config_dir()), version_base="1.3"):
        compose("evaluate", overrides=["enf=cartpole"])
    line = describe(info.value, "evaluate", ["enf=cartpole"])
    assert line.startswith("enf=cartpole: the config has no key enf (did you mean env=cartpole?)"), line
    assert "optimizer" not in line  # train's groups are not evaluate's
    with pytest.raises(CompactHydraException) as info, initialize_config_dir(str(config_dir()), version_base="1.3"):
        compose("evaluate", overrides=["env.max_steps=3"])
    line = describe(info.value, "evaluate", ["env.max_steps=3"])
    assert line == (
        "env.max_steps=3: no env is chosen: choose one first (env=<option>; env takes acrobot, cartpole, gym, "
        "lunarlander, mountaincar)"
    )


@pytest.mark.parametrize("case", sorted(CHECKED_CASES))
def test_bad_input_is_refused_in_one_line_before_anything_starts(case: str, compose_cfg, tmp_path: Path) -> None:
    overrides, message = CHECKED_CASES[case]
    with pytest.raises(Exception) as info:
        run(compose_cfg(*overrides, "trainer.max_epochs=1"))
    reported = user_facing(info.value)
    assert reported is not None, info.value  # None: a bug, printed with its traceback
    code, line = reported
    assert code != 0 and message in line and "\n" not in line
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing started


def test_a_grid_whose_jobs_never_validate_runs_every_job(tmp_path: Path) -> None:
    # A grid sweeper does not read optimized_metric: a job that never logs it must not stop the grid.
    grid = ["-m", "trainer.max_steps=3", "data.train_size=4096", "test=false", "seed=1,2"]
    result = run_cli(*grid, f"hydra.sweep.dir={tmp_path / 'grid'}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:]
    assert sorted(p.name for p in (tmp_path / "grid").iterdir() if p.is_dir()) == ["0", "1"]
    assert all((tmp_path / "grid" / job / "summary.json").is_file() for job in ("0", "1"))
    # Run again into the same directory, its jobs would replace these runs: refused before any starts.
    from hydra_plugins.agent_lightning_sweepers.grid_sweeper import GridSweeper

    again = GridSweeper(max_batch_size=None)
    again.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "grid"), "subdir": "${hydra.job.num}"}}})
    with pytest.raises(SystemExit) as refused:
        again._check_sweep_dir(2)
    assert refused.value.code == 2
    again._check_sweep_dir(0)  # a grid that adds no job numbered as these runs
    again.config.hydra.sweep.subdir = "lr${optimizer.lr}"  # jobs in other directories: checked as each starts
    again._check_sweep_dir(2)


def test_a_short_run_without_validation_succeeds(tmp_path: Path) -> None:
    # No sweeper reads optimized_metric (val/acc_best) of a single run: never logging it is not an error.
    result = run_cli(
        "trainer.max_steps=5", "data.train_size=4096", "test=false", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "was never logged" not in result.stdout + result.stderr  # nothing reads optimized_metric: no word of it
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_a_label_shard_altered_in_place_exits_2_naming_the_shard_and_the_label(tmp_path: Path) -> None:
    x, y = ClusterTask(num_features=8, num_classes=4, seed=1).samples(0, 1200)
    prepare((x.numpy(), y.numpy()), tmp_path / "data", progress_bar=False)
    labels = np.load(tmp_path / "data" / "train-00000.y.npy", mmap_mode="r+")
    labels[17] = 99  # same size: only data.verify=true's checksums would see it when the dataset opens
    labels.flush()
    result = run_cli(
        "data=dataset", f"data.path={tmp_path / 'data'}", "trainer.max_epochs=1", "print_config=false",
        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert "train-00000.y.npy holds label 99, outside 0..3 (num_classes=4 in its manifest)" in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("module", "header", "listed", "not_listed"),
    [
        (
            "evaluate",
            "Evaluate a checkpoint",
            "env: (none) | acrobot, cartpole, gym, lunarlander, mountaincar",
            "optimizer",
        ),
        ("train", "Train an agent's policy network", "optimizer: adam | adamw, lamb, sgd", "env:"),
        ("prepare", "Prepare a dataset once", "input: ???", "== Groups"),
    ],
)
def test_each_commands_help_lists_its_own_groups(module, header, listed, not_listed, monkeypatch, capsys) -> None:
    # Hydra's default help lists every group under conf/: evaluate's would offer train's optimizers.
    command = importlib.import_module(f"agent_lightning.{module}")
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as stop:
        command.main()
    assert stop.value.code == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith(header) and listed in help_text and not_listed not in help_text, help_text


def test_a_run_directory_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("not a directory")
    result = run_cli(f"hydra.run.dir={tmp_path / 'a_file' / 'run'}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == (
        f"error: cannot write the run directory {tmp_path / 'a_file' / 'run'} (Not a directory): choose another "
        "hydra.run.dir (hydra.sweep.dir for -m, paths.output_root for the default place)"
    )
