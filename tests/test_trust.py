"""Runs you can trust, in one process: safe loading, up-front checks, a current last.ckpt, clean stops."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import hydra
import lightning.pytorch as pl
import pytest
import torch
from hydra.errors import InstantiationException

from agent_lightning import export
from agent_lightning.callbacks import NonFiniteLossError
from agent_lightning.checkpoint_io import AtomicCheckpointIO, clean_stale_writes
from agent_lightning.errors import ConfigError, StoppedBySignalError, user_facing
from agent_lightning.replacing import replace_directory
from agent_lightning.runs import matmul
from agent_lightning.runs.lock import LOCK_FILE
from agent_lightning.runs.nothing_left import summary_metrics
from agent_lightning.safe_load import check_distributed_metadata
from agent_lightning.tracking import SUMMARY_FILE
from agent_lightning.train import train
from agent_lightning.validation import validate

from .conftest import run_cli
from .helpers import CrashAtStep, CrashError, CrashInValidation, SignalAtStep, ThreadProbe

pytestmark = pytest.mark.timeout(240)


class _Payload:
    """Unpickling this runs a command: what an attacker's checkpoint would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def test_a_malicious_pickle_never_runs(compose_cfg, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": _Payload(marker), "loops": {}}, evil)
    sharded = tmp_path / "evil_dir"
    sharded.mkdir()
    (sharded / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))

    with pytest.raises(ConfigError, match=r"ckpt_path=.*evil.ckpt was refused without running it"):
        validate(compose_cfg(f"ckpt_path={evil}"))
    with pytest.raises(ConfigError, match=r"evil_dir: .*\.metadata is not a distributed-checkpoint metadata file"):
        validate(compose_cfg(f"ckpt_path={sharded}", "strategy=fsdp"))
    for path in (evil, sharded):
        with pytest.raises(ConfigError):
            export.load_agent(path)
        assert export.main([str(path), str(tmp_path / "out.pt")]) == 2
        with pytest.raises(ConfigError):
            check_distributed_metadata(sharded)
    assert not marker.exists()


BAD_VALUES = {
    "optimizer.weight_decay=-1": "optimizer.weight_decay=-1 is invalid",
    "optimizer.betas=[2,0.9]": r"optimizer.betas=\[2, 0.9\] is invalid",
    "loss.label_smoothing=2": "loss.label_smoothing=2 is invalid",
    "seed=abc": "seed='abc' is invalid",
    "model.hidden_dim=0": "model.hidden_dim=0 is invalid",
    "trainer.log_every_n_steps=0": "trainer.log_every_n_steps=0 is invalid",
    "callbacks.divergence.factor=0.5": "callbacks.divergence.factor=0.5 is invalid",
    "trainer.threads=0": "trainer.threads=0 is invalid",
    "trainer.float32_matmul_precision=low": "float32_matmul_precision='low' is invalid: use highest, high or medium",
    "trainer.val_check_interval=0": "trainer.val_check_interval=0 is invalid",
}
BAD_GROUP_VALUES = {
    ("scheduler=step", "scheduler.step_size=0"): "scheduler.step_size=0 is invalid",
    ("scheduler=exponential", "scheduler.gamma=-1"): "scheduler.gamma=-1 is invalid",
    ("strategy=fsdp", "strategy.param_dtype=bogus"): "strategy.param_dtype='bogus' is invalid",
    ("optimizer=sgd", "optimizer.momentum=1.5"): "optimizer.momentum=1.5 is invalid",
}


@pytest.mark.parametrize("overrides", [(k,) for k in BAD_VALUES] + list(BAD_GROUP_VALUES))
def test_every_bad_value_is_refused_up_front_naming_the_key(compose_cfg, overrides: tuple[str, ...]) -> None:
    message = BAD_VALUES.get(overrides[0]) or BAD_GROUP_VALUES[overrides]
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg(*overrides))


def test_bad_checkpoints_and_directories_are_refused_with_one_line(compose_cfg, tmp_path: Path) -> None:
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "random.ckpt").write_bytes(os.urandom(4096))
    real = train(compose_cfg("trainer.max_steps=3", "test=false", output_dir=tmp_path / "real"))
    last = Path(real["run_dir"]) / "checkpoints" / "last.ckpt"
    (tmp_path / "truncated.ckpt").write_bytes(last.read_bytes()[:5000])
    cases = {
        "empty.ckpt": "is empty",
        # Depends on the bytes: rarely they start as a pickle or a zip archive does.
        "random.ckpt": "(is not a torch checkpoint file|was refused without running it|is not a readable checkpoint)",
        "truncated.ckpt": "is not a readable checkpoint",
    }
    for name, message in cases.items():
        with pytest.raises(ConfigError, match=f"ckpt_path=.*{name} {message}"):
            validate(compose_cfg(f"ckpt_path={tmp_path / name}"))
    with pytest.raises(ConfigError, match=r"layer hidden.0.0.weight is \[256, 128\] in the checkpoint but \[64, 128\]"):
        validate(compose_cfg(f"ckpt_path={last}", "model.hidden_dim=64"))
    with pytest.raises(ConfigError, match=r"single-file checkpoint .* strategy=fsdp"):
        validate(compose_cfg(f"ckpt_path={last}", "strategy=fsdp"))
    (tmp_path / "readonly").mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes anywhere
        with pytest.raises(ConfigError, match=r"paths.output_dir=.* cannot be written"):
            validate(compose_cfg(output_dir=tmp_path / "readonly" / "run"))
    with pytest.raises(ConfigError, match=r"paths.output_dir=/proc/.* cannot be written"):
        validate(compose_cfg(output_dir="/proc/agent_lightning_run"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.shuffle=no", "data.shuffle='no' is invalid: use true or false"),  # a string: truthy
        ("data.on_device=2", "data.on_device=2 is invalid: use true or false"),
        ("test=maybe", "test='maybe' is invalid: use true or false"),
        ("strategy=ddp strategy.static_graph=1", "strategy.static_graph=1 is invalid: use true or false"),
        ("trainer.deterministic=sometimes", "trainer.deterministic='sometimes' is invalid: use true, false or warn"),
        ("trainer.fast_dev_run=0", "trainer.fast_dev_run=0 is invalid: use true, false or n >= 1"),
        ("trainer.accelerator=tpu", "trainer.accelerator='tpu' is invalid: use auto, cpu, gpu (cuda) or mps"),
        ("+optimizer.foo=1", "optimizer.foo is not an argument of torch.optim.Adam: use one of lr, betas"),
        (
            "scheduler=warmup_cosine +scheduler.bar=2",
            "scheduler.bar is not an argument of agent_lightning.optim.warmup_cosine: use one of warmup_steps",
        ),
        (
            "strategy=fsdp devices=2 trainer.precision=16-mixed",
            "trainer.precision=16-mixed does not work with strategy=fsdp: use bf16-mixed",
        ),
    ],
)
def test_a_value_that_cannot_work_is_refused_with_its_key(compose_cfg, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose_cfg(*override.split()))


def test_a_constructor_value_error_is_one_line_naming_the_key(compose_cfg) -> None:
    cfg = compose_cfg("model.dropout=0.5")
    cfg.model.dropout = 1.5  # past validation: the constructor's own check speaks
    with pytest.raises(InstantiationException) as caught:
        hydra.utils.instantiate(cfg.model)
    code, line = user_facing(caught.value)
    assert code == 2 and "\n" not in line and "model.dropout must be in [0, 1), got 1.5" in line


def test_a_bad_value_on_the_command_line_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run_cli("optimizer.betas=[2,0.9]", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "ERROR" in line]
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    assert len(errors) == 1 and "optimizer.betas=[2, 0.9] is invalid: use two numbers in [0, 1)" in errors[0]


def test_sigterm_saves_a_current_last_ckpt_that_resumes_to_the_same_result(compose_cfg, tmp_path: Path) -> None:
    # 16 steps per epoch; training ends mid-epoch 3, so no validation or epoch end comes after the last step.
    common = ["data.train_size=4096", "data.val_size=512", "trainer.max_epochs=3", "trainer.max_steps=40", "test=false"]
    whole = train(compose_cfg(*common, "trainer.deterministic=true", output_dir=tmp_path / "whole"))
    assert _step(tmp_path / "whole" / "checkpoints" / "last.ckpt") == 40

    common.append("trainer.deterministic=true")
    with pytest.raises(StoppedBySignalError) as stopped:
        train(compose_cfg(*common, output_dir=tmp_path / "cut"), extra_callbacks=[SignalAtStep(25, signal.SIGTERM)])
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert stopped.value.exit_code == 143 and user_facing(stopped.value)[0] == 143
    assert f"stopped by SIGTERM at step 26; saved {last}: to resume" in str(stopped.value)
    assert _step(last) == 26
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the caller's handler is back

    resumed = train(compose_cfg(*common, f"ckpt_path={last}", output_dir=tmp_path / "cut"))
    assert resumed["val/loss"] == pytest.approx(whole["val/loss"], abs=1e-6)
    assert _step(last) == 40
    final = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    again = torch.load(last, weights_only=True)["state_dict"]
    assert all(torch.allclose(final[k], again[k], atol=1e-6) for k in final if k.startswith("model."))


def test_last_ckpt_written_at_an_epoch_s_last_step_is_rewritten_after_its_validation(compose_cfg, tmp_path) -> None:
    # 16 steps per epoch and last.ckpt every 16: written at each epoch's last step, before its validation.
    every = ["data.train_size=4096", "data.val_size=512", "trainer.max_epochs=2", "test=false"]
    train(compose_cfg(*every, "callbacks.last_checkpoint.every_n_train_steps=16", output_dir=tmp_path / "run"))
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    (best,) = (tmp_path / "run" / "checkpoints").glob("best-*.ckpt")
    best_score = float(best.stem.rsplit("acc", 1)[1])
    # The best-so-far a resumed run continues is the one after the last validation, not before it.
    assert last["global_step"] == 32
    assert float(last["state_dict"]["val_acc_best.max_value"]) == pytest.approx(best_score, abs=1e-4)
    best_tracking = "ModelCheckpoint{'monitor': 'val/acc'"
    checkpointing = next(state for name, state in last["callbacks"].items() if name.startswith(best_tracking))
    assert Path(checkpointing["best_model_path"]) == best


def test_a_stop_on_an_epoch_s_last_step_waits_for_its_validation_and_end(compose_cfg, tmp_path: Path) -> None:
    # 16 steps per epoch; the signal arrives before step 16, the epoch's last: its validation and end run first.
    common = ["data.train_size=4096", "data.val_size=512", "trainer.max_epochs=2", "test=false"]
    common += ["trainer.deterministic=true", "logger=csv"]
    whole = train(compose_cfg(*common, output_dir=tmp_path / "whole"))
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    steps_saved_at_validation: list[int] = []

    class SavedWhileWaiting(pl.Callback):  # a kill during that validation would find this step saved
        def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            steps_saved_at_validation.append(_step(last) if last.exists() else -1)

    waiting = [SignalAtStep(15, signal.SIGTERM), SavedWhileWaiting()]
    with pytest.raises(StoppedBySignalError, match="stopped by SIGTERM at step 16"):
        train(compose_cfg(*common, output_dir=tmp_path / "cut"), extra_callbacks=waiting)
    assert steps_saved_at_validation == [16]
    validated = [r for r in _metrics_rows(tmp_path / "cut") if r.get("val/acc")]
    assert [r["epoch"] for r in validated] == ["0"]
    resumed = train(compose_cfg(*common, f"ckpt_path={last}", output_dir=tmp_path / "cut"))
    for key in ("val/loss", "val/acc_best", "train/acc", "train/loss_epoch"):
        assert resumed[key] == pytest.approx(whole[key], abs=1e-6), key
    assert [r["epoch"] for r in _metrics_rows(tmp_path / "cut") if r.get("val/acc")] == ["0", "1"]


def _metrics_rows(run: Path) -> list[dict[str, str]]:
    import csv

    with open(run / "csv" / "metrics.csv", newline="") as rows:
        return list(csv.DictReader(rows))


def test_a_crash_in_an_epoch_s_validation_resumes_to_the_uninterrupted_run(compose_cfg, tmp_path: Path) -> None:
    # 16 steps per epoch and last.ckpt every 16; the plateau schedule halves the LR after every validation
    # but the first, so a resumed run that skipped an epoch's validation or end would end with another LR.
    common = ["data.train_size=4096", "data.val_size=512", "trainer.max_epochs=3", "test=false"]
    common += ["callbacks.last_checkpoint.every_n_train_steps=16", "trainer.deterministic=true"]
    common += ["scheduler=plateau", "scheduler.mode=max", "scheduler.patience=0", "+scheduler.threshold=0"]
    whole = train(compose_cfg(*common, output_dir=tmp_path / "whole"))
    with pytest.raises(CrashError):
        train(compose_cfg(*common, output_dir=tmp_path / "cut"), extra_callbacks=[CrashInValidation(epoch=1)])
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert _step(last) == 16  # epoch 0's end: the write due at step 32 waits for the validation and epoch end
    resumed = train(compose_cfg(*common, f"ckpt_path={last}", output_dir=tmp_path / "cut"))
    for key in ("val/loss", "val/acc_best", "train/acc", "train/loss_epoch"):
        assert resumed[key] == pytest.approx(whole[key], abs=1e-6), key
    # last.ckpt comes after the last epoch's end, which halved the LR a second time.
    assert _schedule(tmp_path / "cut") == _schedule(tmp_path / "whole")
    assert _lr(tmp_path / "cut") == pytest.approx(2.5e-4)


def test_a_resume_after_a_validation_owes_the_epoch_end_its_val_loss(compose_cfg, tmp_path: Path) -> None:
    # Validation every 24 steps, across 16-step epochs: the one at step 24 is the one epoch 1's end (step 32)
    # steps the plateau schedule on. Resumed from the write after it, the run still owes it that val/loss.
    common = ["data.train_size=4096", "data.val_size=512", "trainer.max_epochs=3", "test=false"]
    common += ["trainer.check_val_every_n_epoch=null", "trainer.val_check_interval=24", "trainer.deterministic=true"]
    common += ["scheduler=plateau", "scheduler.mode=max", "scheduler.patience=0", "+scheduler.threshold=0"]
    train(compose_cfg(*common, output_dir=tmp_path / "whole"))
    with pytest.raises(CrashError):
        train(compose_cfg(*common, output_dir=tmp_path / "cut"), extra_callbacks=[CrashAtStep(28)])
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert _step(last) == 24
    train(compose_cfg(*common, f"ckpt_path={last}", output_dir=tmp_path / "cut"))
    # Stepped at steps 32 (the best so far) and 48 (no better: halved), as in the run never stopped.
    assert _schedule(tmp_path / "cut") == _schedule(tmp_path / "whole")
    assert _lr(tmp_path / "cut") == pytest.approx(5e-4)


def _schedule(run: Path) -> list:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["lr_schedulers"]


def _lr(run: Path) -> float:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"][0]["param_groups"][0][
        "lr"
    ]


@pytest.mark.parametrize("checks", [[], ["callbacks.divergence.check_every_n_steps=5"]], ids=["grouped", "every-5"])
def test_an_exploding_finite_loss_stops_with_the_divergence_message(compose_cfg, checks: list[str]) -> None:
    # Default: 32 batches per Lightning step, checked at step 50 against the first step's loss (the baseline).
    cfg = compose_cfg("optimizer.lr=1e8", *checks)
    with pytest.raises(NonFiniteLossError, match=r"diverged by step \d+: loss .* is above 10 x its running median"):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").exists()  # nothing bad was written


def test_a_spike_no_worse_than_a_uniform_guess_is_not_divergence() -> None:
    from types import SimpleNamespace

    from agent_lightning.callbacks import DivergenceGuard

    guard = DivergenceGuard()  # factor 10
    guard.on_train_start(SimpleNamespace(global_step=0), SimpleNamespace(hparams={"num_classes": 2}))
    guard.history = [0.0106] * 20  # a run from trained weights: DAgger's iteration 5 on CartPole stopped here
    assert guard._reason(0.182) is None  # 17 x the median, yet better than guessing (ln 2 = 0.69)
    assert "above 10 x its running median" in guard._reason(0.9)  # worse than guessing as well: exploded


def test_threads_and_matmul_precision_honour_the_user_and_are_given_back_with_lamb(
    compose_cfg, monkeypatch, tmp_path: Path
) -> None:
    before, precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    probe = ThreadProbe()
    cfg = compose_cfg(
        "trainer.threads=1", "trainer.float32_matmul_precision=medium", "optimizer=lamb", "trainer.max_epochs=1"
    )
    metrics = train(cfg, extra_callbacks=[probe])
    assert probe.threads == 1 and torch.get_num_threads() == before
    assert probe.matmul_precision == "medium" and torch.get_float32_matmul_precision() == precision == "highest"
    assert metrics["val/acc"] > 0.3  # one epoch of bfloat16 matrix multiplies learns (10 classes: chance is 0.1)
    # lamb's betas reach the checkpoint as plain lists: the best checkpoint loads safely and was tested.
    assert "test/acc" in metrics and torch.load(metrics["best_model_path"], weights_only=True)

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(2)
    probe = ThreadProbe()
    with pytest.raises(ConfigError, match=r"scheduler.warmup_steps=1000 is invalid"):  # a short run, one line
        warmup = compose_cfg("scheduler=warmup_cosine", "scheduler.warmup_steps=1000", output_dir=tmp_path / "warmup")
        train(warmup, extra_callbacks=[probe])
    assert torch.get_num_threads() == 2
    torch.set_num_threads(before)


def test_a_float32_cpu_run_on_amx_units_hears_of_matmul_medium_once(compose_cfg, monkeypatch, caplog) -> None:
    monkeypatch.setattr(matmul, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(matmul, "_hinted", False)
    assert matmul.matmul_hint(None, "32-true", on_cpu=True) is not None
    for not_asked in ((None, "32-true", False), ("highest", "32-true", True), (None, "bf16-mixed", True)):
        assert matmul.matmul_hint(*not_asked) is None  # a GPU, a chosen precision, or bfloat16 already
    with matmul.float32_matmul_precision("medium"):  # chosen by the caller (a notebook) before the run
        assert matmul.matmul_hint(None, "32-true", on_cpu=True) is None
    short = ("trainer.max_steps=2", "test=false", "trainer.limit_val_batches=0")
    with caplog.at_level(logging.INFO, logger="agent_lightning"):
        for run in ("first", "second"):  # a search's trials: said once
            train(compose_cfg(*short, output_dir=compose_cfg().paths.output_dir + run))
    assert [r.message for r in caplog.records if "float32_matmul_precision=medium" in r.message] == [
        matmul.matmul_hint(None, "32-true", on_cpu=True)
    ]
    monkeypatch.setattr(matmul, "cpu_has_amx", lambda: False)
    assert matmul.matmul_hint(None, "32-true", on_cpu=True) is None


def test_a_callers_own_matmul_settings_survive_a_run_that_sets_and_one_that_leaves_them() -> None:
    cuda, cpu = torch.backends.cuda.matmul, torch.backends.mkldnn.matmul
    before = (cuda.fp32_precision, cpu.fp32_precision, torch.get_float32_matmul_precision())
    try:
        cuda.allow_tf32 = True  # the older switch: the one-name getter then reports "high" for every backend
        with matmul.float32_matmul_precision("medium"):
            assert cpu.fp32_precision == "bf16"
        assert (cuda.fp32_precision, cpu.fp32_precision, torch.get_float32_matmul_precision()) == (
            "tf32",
            "none",
            "high",
        )
        cuda.fp32_precision = "tf32"  # the per-backend settings: the one-name getter now raises
        for configured in (None, "medium"):
            with matmul.float32_matmul_precision(configured):
                pass
            assert (cuda.fp32_precision, cpu.fp32_precision) == ("tf32", "none")
    finally:
        cuda.fp32_precision, cpu.fp32_precision = before[:2]
        torch.set_float32_matmul_precision(before[2])


def test_a_second_run_on_the_same_directory_is_refused(compose_cfg, tmp_path: Path) -> None:
    run_dir, ready = tmp_path / "run", tmp_path / "ready"
    run_dir.mkdir()
    # Another process holding the run directory's lock as a run does (flock; no heavy imports, so it starts fast).
    hold = (
        "import fcntl, os, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
        "f.write(f'pid {os.getpid()}'); f.flush(); open(sys.argv[2], 'w').close(); time.sleep(600)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run_dir / LOCK_FILE), str(ready)])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        with pytest.raises(ConfigError, match=f"run directory {run_dir} is in use by another run \\(pid {holder.pid}"):
            train(compose_cfg(output_dir=run_dir))
        # From the command line: refused before Hydra writes its config and log into the run's directory.
        refused = run_cli(f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert refused.returncode == 2 and f"is in use by another run (pid {holder.pid}" in refused.stderr
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]
    finally:
        holder.kill()
        holder.wait()
    assert train(compose_cfg("trainer.max_steps=2", "test=false", output_dir=run_dir))["run_dir"]  # free again
    # Now it holds a run: a new one from the command line would replace its checkpoints; refused, nothing written.
    before = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    refused = run_cli(f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr[-2000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert f"hydra.run.dir={run_dir} holds a run ({last}): continue it with ckpt_path={last}" in refused.stderr
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == before
    # From Python (a notebook cell run again) or with paths.output_dir=: the same refusal, the run untouched.
    written = last.read_bytes()
    with pytest.raises(ConfigError, match=rf"^paths.output_dir={run_dir} holds a run \({last}\): continue it with"):
        train(compose_cfg("trainer.max_steps=2", "test=false", output_dir=run_dir))
    assert last.read_bytes() == written
    # A checkpoint of another run does not make it a resume of this one; this run's own, copied elsewhere (as
    # Ray Tune hands a trial back its checkpoint), does.
    from agent_lightning.runs.lock import continues_run_in

    other = train(compose_cfg("trainer.max_steps=2", "test=false", output_dir=tmp_path / "other"))["run_dir"]
    with pytest.raises(ConfigError, match=rf"^paths.output_dir={run_dir} holds a run"):
        train(compose_cfg("trainer.max_steps=4", f"ckpt_path={other}/checkpoints/last.ckpt", output_dir=run_dir))
    (tmp_path / "tune").mkdir()
    copied = Path(shutil.copy(last, tmp_path / "tune" / "tune.ckpt"))
    assert continues_run_in(run_dir, copied) and not continues_run_in(run_dir, f"{other}/checkpoints/last.ckpt")
    assert last.read_bytes() == written
    # A job its scheduler requeued comes back to its own directory (SLURM keys it on the job id): not refused.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SLURM_RESTART_COUNT", "1")
        assert train(compose_cfg("trainer.max_steps=2", "test=false", output_dir=run_dir))["run_dir"]
    # Composed without a directory, each config gets a new one (as each command line run does).
    from agent_lightning.config import compose_config

    assert compose_config([]).paths.output_dir != compose_config([]).paths.output_dir


def test_a_lock_won_on_a_lock_file_its_holder_just_removed_is_taken_again(tmp_path: Path, monkeypatch) -> None:
    from agent_lightning.runs import lock

    real_open, opened = Path.open, []

    def open_as_the_holder_leaves(self: Path, *args, **kwargs):
        handle = real_open(self, *args, **kwargs)
        if not opened:  # the holder removes its file (and then unlocks it) between this open and the flock
            self.unlink()
        opened.append(handle)
        return handle

    monkeypatch.setattr(Path, "open", open_as_the_holder_leaves)
    handle = lock._lock(tmp_path / LOCK_FILE, tmp_path)
    assert len(opened) == 2 and os.fstat(handle.fileno()).st_ino == os.stat(tmp_path / LOCK_FILE).st_ino
    handle.close()


def test_stale_writes_are_cleaned_and_a_directory_swap_keeps_the_old_one_until_the_new_is_there(tmp_path: Path) -> None:
    (tmp_path / "last.ckpt.tmp").write_bytes(b"half")
    (tmp_path / "best.ckpt.tmp").mkdir()
    (tmp_path / "dir.ckpt.old").mkdir()  # killed between the two renames: dir.ckpt is missing
    (tmp_path / "dir.ckpt.old" / ".metadata").write_bytes(b"old")
    clean_stale_writes(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.ckpt"]
    assert (tmp_path / "dir.ckpt" / ".metadata").read_bytes() == b"old"

    staged = tmp_path / "dir.ckpt.tmp"
    staged.mkdir()
    (staged / ".metadata").write_bytes(b"new")
    replace_directory(staged, tmp_path / "dir.ckpt", tmp_path / "dir.ckpt.old")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.ckpt"]
    assert (tmp_path / "dir.ckpt" / ".metadata").read_bytes() == b"new"


def test_a_checkpoint_is_on_disk_before_its_name_points_at_it(tmp_path: Path, monkeypatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor: int) -> None:
        events.append(f"fsync {Path(os.readlink(f'/proc/self/fd/{descriptor}')).name}")
        real_fsync(descriptor)

    def replace(source, target) -> None:
        events.append(f"rename {Path(source).name} {Path(target).name}")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    (tmp_path / "last.ckpt").write_bytes(b"previous")
    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(7)}, tmp_path / "last.ckpt")
    assert events == ["fsync last.ckpt.tmp", "rename last.ckpt.tmp last.ckpt", f"fsync {tmp_path.name}"]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["step"] == 7


class TestCounter(pl.Callback):
    """Counts the test loops a run starts."""

    __test__ = False  # not a test class, despite its name

    def __init__(self) -> None:
        self.started = 0

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Count one."""
        self.started += 1


def test_a_resume_with_another_optimizer_is_refused_and_one_with_nothing_left_keeps_its_checkpoint_and_summary(
    compose_cfg, tmp_path: Path, caplog
) -> None:
    first = ["trainer.max_epochs=3", "data.train_size=4096"]
    trained = train(compose_cfg(*first, output_dir=tmp_path / "run"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    written = last.read_bytes()
    # Its optimizer state is Adam's: SGD cannot take it (Lightning would crash at the first step, after a save).
    with pytest.raises(ConfigError, match=r"holds the state of optimizer Adam but this run's optimizer is SGD"):
        validate(compose_cfg(*first, "optimizer=sgd", f"ckpt_path={last}", output_dir=tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"holds the state of scheduler none but this run's scheduler is"):
        validate(compose_cfg(*first, "scheduler=cosine", f"ckpt_path={last}", output_dir=tmp_path / "run"))
    # Its state restores the optimizer's lr: another one would be recorded and never used.
    restored = r"restores optimizer.lr=0.001 with the optimizer's state, so optimizer.lr=1e-05 would not be used"
    with pytest.raises(ConfigError, match=restored):
        validate(compose_cfg(*first, "optimizer.lr=1e-5", f"ckpt_path={last}", output_dir=tmp_path / "run"))
    # The same shapes computing another function: what the weights were learnt with must stay.
    with pytest.raises(ConfigError, match=r"trained with model.activation=relu but this run has model.activation=gelu"):
        validate(compose_cfg(*first, "model.activation=gelu", f"ckpt_path={last}", output_dir=tmp_path / "run"))
    with pytest.raises(
        ConfigError, match=r"its model has 10 outputs \(classes\) but this run's has 4 \(model.output_dim"
    ):
        validate(compose_cfg(*first, "data.source.num_classes=4", f"ckpt_path={last}", output_dir=tmp_path / "run"))
    for junk in (b'{"not": "a checkpoint"}', b"\x00\x01 random bytes"):
        (tmp_path / "junk.ckpt").write_bytes(junk)
        with pytest.raises(ConfigError, match=r"junk.ckpt is not a torch checkpoint file \(neither a zip archive nor"):
            validate(compose_cfg(*first, f"ckpt_path={tmp_path / 'junk.ckpt'}", output_dir=tmp_path / "junk"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ConfigError, match=r"empty_dir is a directory without a checkpoint \(no .metadata\)"):
        validate(compose_cfg(*first, f"ckpt_path={tmp_path / 'empty_dir'}", output_dir=tmp_path / "junk"))
    for fewer in (1, 2):  # it ran 3 epochs
        with pytest.raises(ConfigError, match=rf"has run 3 epochs but trainer.max_epochs={fewer}: .* more than 3"):
            validate(compose_cfg(f"trainer.max_epochs={fewer}", f"ckpt_path={last}", output_dir=tmp_path / "run"))
    # A resume that has nothing left to train says so, leaves the checkpoint it resumed from as it was,
    # and keeps the metrics summary.json holds for those weights (Lightning validates nothing then).
    summary = json.loads((tmp_path / "run" / SUMMARY_FILE).read_text())
    assert summary["metrics"]["val/acc"] == pytest.approx(trained["val/acc"]) and summary["global_step"] == 48
    with caplog.at_level(logging.INFO, logger="agent_lightning"), warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        tests = TestCounter()
        again = train(compose_cfg(*first, f"ckpt_path={last}", output_dir=tmp_path / "run"), [tests])
    assert last.read_bytes() == written
    assert tests.started == 0 and again["test/acc"] == pytest.approx(trained["test/acc"])  # the same weights
    assert not [w for w in warned if "training batches, fewer than" in str(w.message)]  # it trains none
    kept = json.loads((tmp_path / "run" / SUMMARY_FILE).read_text())
    assert kept["metrics"] == summary["metrics"] and again["val/acc"] == pytest.approx(trained["val/acc"])
    assert re.search(r"Nothing left to train: .* had reached trainer.max_epochs=3 at step 48 ", caplog.text)
    # A summary written at another step describes other weights: not kept.
    assert summary_metrics(tmp_path / "run", 48) == summary["metrics"] and summary_metrics(tmp_path / "run", 32) == {}


def test_a_resume_at_max_steps_trains_nothing_and_keeps_the_summary(compose_cfg, tmp_path: Path, caplog) -> None:
    # Lightning skips the fit loop of a run restored at max_steps: no training start to notice it by.
    first = ["trainer.max_epochs=3", "trainer.max_steps=16", "data.train_size=4096"]
    trained = train(compose_cfg(*first, output_dir=tmp_path / "run"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    written, summary = last.read_bytes(), json.loads((tmp_path / "run" / SUMMARY_FILE).read_text())
    with caplog.at_level(logging.INFO, logger="agent_lightning"):
        again = train(compose_cfg(*first, f"ckpt_path={last}", output_dir=tmp_path / "run"))
    assert last.read_bytes() == written
    assert json.loads((tmp_path / "run" / SUMMARY_FILE).read_text())["metrics"] == summary["metrics"]
    assert again["val/acc"] == pytest.approx(trained["val/acc"]) and again["train/acc"] == trained["train/acc"]
    assert re.search(r"Nothing left to train: .* had reached trainer.max_steps=16 at step 16 ", caplog.text)


def test_one_ctrl_c_delivered_twice_is_one_stop_and_a_later_second_one_interrupts(monkeypatch) -> None:
    from agent_lightning.runs import stops

    clock = [100.0]
    monkeypatch.setattr(stops.time, "monotonic", lambda: clock[0])
    stop = stops.StopOnSignal()
    stop._handle(signal.SIGINT, None)  # from the terminal's process group
    stop._handle(signal.SIGINT, None)  # the same press, forwarded by the launcher: still a clean stop
    assert stop._received == signal.SIGINT
    clock[0] += 5  # a second press, seconds later: the user does not want to wait for the save
    with pytest.raises(StoppedBySignalError, match="second Ctrl\\+C: stopped without saving") as second:
        stop._handle(signal.SIGINT, None)
    assert second.value.exit_code == 130


def test_ctrl_c_while_the_command_starts_exits_130_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent_lightning.train", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal
    )
    time.sleep(1.5)  # the libraries are loading (or, on a fast machine, the config is being composed)
    proc.send_signal(signal.SIGINT)
    err, _ = proc.communicate(timeout=60)  # stdout and stderr together
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last == "interrupted (SIGINT): stopped without saving" or "stopped by SIGINT at step" in last, last
