"""Environments and evaluation: CartPole behaviour cloning reaches 500, each seed is evaluated once, bad names fail."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium")

from agent_lightning.agents.environments import env_config, make_env
from agent_lightning.agents.experts import resolve_expert
from agent_lightning.agents.policy import Policy
from agent_lightning.collect import collect
from agent_lightning.errors import ConfigError
from agent_lightning.export import export
from agent_lightning.model import AgentMLP
from agent_lightning.train import train

ROOT = Path(__file__).resolve().parents[1]


def run_module(module: str, *args: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_cartpole_behaviour_cloning_reaches_500(tmp_path, compose_cfg):
    collect("cartpole", tmp_path / "demos", steps=5000, random_episodes=5)
    cfg = compose_cfg(
        "experiment=bc_cartpole",
        f"data.path={tmp_path / 'demos'}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.num_sanity_val_steps=0",
        fast=False,
    )
    metrics = train(cfg)
    assert metrics["env/return_mean"] == 500.0
    assert metrics["env/return_std"] == 0.0
    assert metrics["env/success_rate"] == 1.0
    # Logged where a user looks: summary.json, the CSV logger, and the per-episode file.
    summary = json.loads((Path(metrics["run_dir"]) / "summary.json").read_text())
    assert summary["metrics"]["env/return_mean"] == 500.0
    csv_text = next(Path(metrics["run_dir"]).glob("csv/**/metrics.csv")).read_text()
    assert "env/return_mean" in csv_text.splitlines()[0]
    rows = list(csv.DictReader((Path(metrics["run_dir"]) / "env_eval" / "episodes.csv").read_text().splitlines()))
    assert [int(r["seed"]) for r in rows] == list(range(20))
    # The checkpoint, and an export of it, remember the env the demonstrations came from: evaluate needs no env=.
    last = Path(metrics["run_dir"]) / "checkpoints" / "last.ckpt"
    exported = export(last, tmp_path / "agent.pt")
    assert Policy.load(last).env["id"] == Policy.load(exported).env["id"] == "CartPole-v1"
    done = run_module("agent_lightning.evaluate", f"ckpt_path={exported}", "episodes=2", cwd=tmp_path)
    assert done.returncode == 0 and "return mean=500.00" in done.stdout, done.stderr[-2000:]
    assert "env: CartPole-v1, where the checkpoint's demonstrations were collected" in done.stderr + done.stdout
    variant = ["env=gym", "env.id=CartPole-v0", "episodes=1"]  # same shapes, another id: said, then played
    elsewhere = run_module("agent_lightning.evaluate", f"ckpt_path={exported}", *variant, cwd=tmp_path)
    said = elsewhere.stdout + elsewhere.stderr
    assert elsewhere.returncode == 0 and "demonstrations of CartPole-v1, evaluated here in CartPole-v0" in said


def _random_policy_file(tmp_path: Path) -> Path:
    torch.manual_seed(3)
    model = AgentMLP(input_dim=4, hidden_dim=16, num_layers=1, output_dim=2)
    path = tmp_path / "random_policy.pt"
    config = {"input_dim": 4, "hidden_dim": 16, "num_layers": 1, "output_dim": 2}
    torch.save({"model_config": config, "state_dict": model.state_dict()}, path)
    return path


def test_evaluate_counts_each_seed_once_and_csv_matches_printed_line(tmp_path):
    policy_file = _random_policy_file(tmp_path)
    # 10 episodes on 4 copies: short, uneven episodes; autoreset must never add an episode or steal its steps.
    done = run_module(
        "agent_lightning.evaluate",
        f"ckpt_path={policy_file}",
        "env=cartpole",
        "episodes=10",
        "num_envs=4",
        f"hydra.run.dir={tmp_path / 'eval'}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("return mean="))
    printed = dict(re.findall(r"(\w+)=(-?[\d.]+)", line))
    rows = list(csv.DictReader((tmp_path / "eval" / "episodes.csv").read_text().splitlines()))
    assert [int(r["seed"]) for r in rows] == list(range(10))
    returns = np.array([float(r["return"]) for r in rows])
    assert float(printed["mean"]) == pytest.approx(returns.mean(), abs=0.005)
    assert float(printed["min"]) == pytest.approx(returns.min(), abs=0.005)
    assert float(printed["length"]) == pytest.approx(np.mean([int(r["length"]) for r in rows]), abs=0.05)
    assert (tmp_path / "eval" / "returns.png").stat().st_size > 1000
    # Each row is exactly the episode a single environment plays from reset(seed=s).
    policy = Policy.load(policy_file)
    env = make_env("cartpole")
    for row in rows:
        obs, _ = env.reset(seed=int(row["seed"]))
        total, steps, over = 0.0, 0, False
        while not over:
            obs, reward, terminated, truncated, _ = env.step(policy.act(obs))
            total, steps, over = total + reward, steps + 1, terminated or truncated
        assert (total, steps) == (float(row["return"]), int(row["length"]))
    assert len(set(returns)) > 1  # the episodes differ: a mix-up of seeds would show


def test_evaluate_refuses_a_policy_for_another_env(tmp_path):
    done = run_module(
        "agent_lightning.evaluate", f"ckpt_path={_random_policy_file(tmp_path)}", "env=lunarlander", cwd=tmp_path
    )
    assert done.returncode == 2
    errors = [ln for ln in done.stderr.splitlines() + done.stdout.splitlines() if "ERROR" in ln]
    assert len(errors) == 1 and "4 observations to 2 actions" in errors[0] and "Traceback" not in done.stderr


def test_unknown_names_give_one_line_with_the_valid_ones(compose_cfg):
    with pytest.raises(ConfigError, match=r"env='pong' is unknown: choose one of acrobot, cartpole, gym, lunarlander"):
        env_config("pong")
    with pytest.raises(ConfigError, match=r"expert='oracle' is unknown: use one of acrobot, cartpole, heuristic"):
        resolve_expert("oracle")
    with pytest.raises(ConfigError, match=r"has no function 'nope'"):
        resolve_expert("agent_lightning.agents.experts:nope")
    from agent_lightning.agents.environments import check_env_eval

    with pytest.raises(ConfigError, match=r"env_eval.env=cartpole has 4 observations but model.input_dim=128"):
        check_env_eval(compose_cfg("env_eval={env: cartpole, episodes: 5}"))
    with pytest.raises(ConfigError, match=r"env_eval.episode is not a setting of env_eval: use env, episodes"):
        check_env_eval(compose_cfg("env_eval={env: cartpole, episode: 3}"))
    # Observations that are not a vector (Taxi's are one integer of 500 states) are named, not an IndexError.
    with pytest.raises(ConfigError, match=r"env.id=Taxi-v4 has Discrete\(500\) observations: .*\(a 1-d Box\)"):
        make_env({"id": "Taxi-v4"})


def test_builtin_experts_score_as_documented():
    from agent_lightning.agents.rollout import evaluate_policy, summarize

    def batched(name: str, env_name: str):
        expert, env = resolve_expert(name), make_env(env_name)
        return lambda obs: np.array([expert(env.unwrapped, o) for o in obs])

    cartpole = summarize(evaluate_policy(batched("cartpole", "cartpole"), "cartpole", 5))
    mountaincar = summarize(evaluate_policy(batched("mountaincar", "mountaincar"), "mountaincar", 20))
    assert cartpole["return_mean"] == 500.0
    assert mountaincar["return_mean"] >= -115 and mountaincar["success_rate"] >= 0.5


def test_missing_gymnasium_names_the_env_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"environments need gymnasium: pip install 'lightning-agent-trainer\[env\]'"):
        make_env("cartpole")


def test_evaluate_refuses_bad_values_and_a_missing_env_in_one_line(tmp_path):
    from omegaconf import OmegaConf

    from agent_lightning.evaluate import check_request

    good = {"ckpt_path": "x.ckpt", "env": "cartpole", "episodes": 3, "first_seed": 0, "num_envs": 2, "split": "test"}
    check_request(OmegaConf.create(good))
    cases = {
        "episodes": ("abc", "a whole number of episodes >= 1"),
        "first_seed": (-1, "a whole number in [0, 4294967295]"),
        "num_envs": (0, "a whole number of environments >= 1"),
        "vectorization": ("threads", "sync or async"),
        "record": (-2, "a whole number of episodes to record as GIFs >= 0"),
    }
    for key, (value, valid) in cases.items():
        with pytest.raises(ConfigError, match=re.escape(f"{key}={value!r} is invalid: use {valid}")):
            check_request(OmegaConf.create({**good, key: value}))
    synthetic = {"_target_": "agent_lightning.data.AgentDataModule", "train_size": 100}  # data=synthetic: no path
    with pytest.raises(ConfigError, match=r"evaluate reads a prepared dataset: data=dataset data.path=DIR"):
        check_request(OmegaConf.create({**good, "env": None, "data": synthetic}))
    prepared = {"_target_": "agent_lightning.data.PreparedDataModule", "path": "data/demo"}
    with pytest.raises(ConfigError, match=r"give env=<name> or data=dataset data.path=DIR, not both"):
        check_request(OmegaConf.create({**good, "data": prepared}))
    # Without env=, the env its demonstrations were collected in; a file that records none is one line.
    done = run_module("agent_lightning.evaluate", f"ckpt_path={_random_policy_file(tmp_path)}", cwd=tmp_path)
    lines = [ln for ln in done.stderr.splitlines() + done.stdout.splitlines() if ln.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr
    assert "nothing to evaluate on: ckpt_path=random_policy.pt records no env it was collected in; give env=<name>" in (
        lines[0].replace(str(tmp_path) + "/", "")
    )
    assert "(one of acrobot, cartpole" in lines[0] and "or data=dataset data.path=DIR" in lines[0]
