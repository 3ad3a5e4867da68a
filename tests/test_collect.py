"""collect: expert demonstrations as a prepared dataset split by episode, with n_actions from the environment."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gymnasium")

from agent_lightning.collect import collect, summary
from agent_lightning.data.manifest import SPLITS

ROOT = Path(__file__).resolve().parents[1]


def _split_arrays(path: Path, manifest: dict, split: str, key: str) -> np.ndarray:
    shards = manifest["splits"][split]["shards"]
    if not shards:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.load(path / s["files"][key]["file"], allow_pickle=False) for s in shards])


def test_collect_splits_by_episode_and_takes_action_count_from_the_env(tmp_path):
    out = tmp_path / "mc_demos"
    manifest = collect("mountaincar", out, steps=3000, random_episodes=3)
    assert manifest == json.loads((out / "manifest.json").read_text())
    episodes = {split: _split_arrays(out, manifest, split, "g") for split in SPLITS}
    sets = {split: set(ids.tolist()) for split, ids in episodes.items()}
    assert all(sets.values()), "every split holds episodes"
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert sum(len(ids) for ids in episodes.values()) == 3000
    # The momentum expert never coasts (action 1): the dataset still has MountainCar's 3 classes.
    assert manifest["num_classes"] == 3
    labels = np.concatenate([_split_arrays(out, manifest, s, "y") for s in SPLITS])
    assert set(labels.tolist()) == {0, 2}
    provenance = manifest["provenance"]
    assert provenance["env"] == "MountainCar-v0" and provenance["expert"] == "mountaincar"
    assert provenance["expert_return_mean"] > -130 > -190 > provenance["random_return_mean"]
    assert manifest["group"] == "episode"


def test_the_summary_says_when_whole_episodes_left_an_asked_for_split_empty() -> None:
    manifest = {
        "provenance": {"steps": 5000, "episodes": 10, "expert": "cartpole", "finished_episodes": 10},
        "splits": {"train": {"rows": 4500}, "val": {"rows": 0}, "test": {"rows": 500}},
        "source": {"val_fraction": 0.1, "test_fraction": 0.1},
    }
    manifest["provenance"] |= {"expert_return_mean": 500.0, "random_return_mean": 22.95}
    line = summary(manifest, "data/cp")
    assert "(train 4,500, val 0, test 500; no val episode among 10: a run on it trains without validation" in line
    manifest["source"]["val_fraction"] = 0.0  # not asked for: nothing to say
    assert "(train 4,500, val 0, test 500); expert cartpole" in summary(manifest, "data/cp")


def test_collect_with_a_user_expert_from_the_command_line(tmp_path):
    (tmp_path / "my_expert.py").write_text("def always_left(env, obs):\n    return 0\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "PYTHONWARNINGS": "ignore"}
    args = ["env=cartpole", "steps=300", "random_episodes=2", f"output={tmp_path / 'left'}"]
    done = subprocess.run(
        [sys.executable, "-m", "agent_lightning.collect", "expert=my_expert:always_left", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "expert my_expert:always_left return mean=" in done.stdout and "random policy mean=" in done.stdout
    manifest = json.loads((tmp_path / "left" / "manifest.json").read_text())
    assert manifest["num_classes"] == 2
    assert [manifest["splits"][s]["class_counts"][1] for s in SPLITS] == [0, 0, 0]

    bad = subprocess.run(
        [sys.executable, "-m", "agent_lightning.collect", "expert=oracle", *args[:-1], f"output={tmp_path / 'x'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2
    lines = [ln for ln in (bad.stdout + bad.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and "expert='oracle' is unknown: use one of acrobot, cartpole, heuristic" in lines[0]
    assert not (tmp_path / "x").exists()


def test_bad_values_and_an_expert_for_another_env_are_refused_before_rolling_out(tmp_path, monkeypatch):
    from agent_lightning.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    cases = {
        "steps": ({"steps": "abc"}, "steps='abc' is invalid: use a whole number of steps >= 1"),
        "seed": ({"seed": "abc"}, "seed='abc' is invalid: use a whole number in [0, 4294967295]"),
        "overwrite": ({"overwrite": "no"}, "overwrite='no' must be true or false"),
        "expert": (
            {"expert": "heuristic"},
            "expert=heuristic suits LunarLander (env=lunarlander) only, not CartPole-v1: use expert=cartpole",
        ),
        "cwd": ({"output": "."}, "output=. is the working directory or one above it"),
    }
    for name, (extra, message) in cases.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            collect("cartpole", **{"output": tmp_path / "out", "steps": 50, "random_episodes": 0, **extra})
        assert sorted(p.name for p in tmp_path.iterdir()) == [], name


def test_command_line_overwrite_no_keeps_the_existing_dataset(tmp_path):
    existing = tmp_path / "demos"
    existing.mkdir()
    (existing / "manifest.json").write_text('{"kept": true}')
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    args = ["env=cartpole", "steps=400", f"output={existing}", "overwrite=no"]
    done = subprocess.run(
        [sys.executable, "-m", "agent_lightning.collect", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    assert done.returncode == 2 and lines == ["overwrite='no' must be true or false"], lines
    assert json.loads((existing / "manifest.json").read_text()) == {"kept": True}


def test_an_expert_that_fails_or_returns_no_action_is_one_line(tmp_path, monkeypatch):
    from agent_lightning.errors import ConfigError

    (tmp_path / "flawed.py").write_text(
        "def seven(env, obs):\n    return 7\n\ndef no_obs(env):\n    return 0\n\ndef half(env, obs):\n    return 0.5\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for expert, message in (
        ("flawed:seven", r"^seven returned 7 for an observation: an action of CartPole-v1 is 0..1$"),
        ("flawed:half", r"^half returned 0.5 for an observation"),
        ("flawed:no_obs", r"^no_obs raised TypeError: .* \(an expert is a function \(env, obs\) -> action\)$"),
    ):
        with pytest.raises(ConfigError, match=message):
            collect("cartpole", tmp_path / expert.replace(":", "_"), steps=20, expert=expert, random_episodes=0)
    # In DAgger the policy acting is the learner: its failure is not described as an expert's.
    from agent_lightning.agents.rollout import rollout

    def learner(env, obs):
        raise ValueError("observation of shape [4] does not fit this policy")

    with pytest.raises(ConfigError, match=r"^the learner raised ValueError: observation of shape \[4\] does not fit"):
        rollout("cartpole", 20, act=learner, label=lambda env, obs: 0)


def test_episodes_that_all_fall_outside_train_ask_for_more_steps(tmp_path) -> None:
    import numpy as np

    from agent_lightning.agents.demonstrations import write_demonstrations
    from agent_lightning.agents.rollout import Rollout
    from agent_lightning.errors import ConfigError

    one_episode = Rollout(np.zeros((30, 4), np.float32), np.zeros(30, np.int64), np.zeros(30, np.int64), [30.0])
    with pytest.raises(
        ConfigError, match=r"^none of the 1 episode\(s\) collected went to the train split .* more steps"
    ):
        write_demonstrations(one_episode, tmp_path / "d", 2, {"env": "x"}, val_fraction=0.5, test_fraction=0.49, seed=1)
