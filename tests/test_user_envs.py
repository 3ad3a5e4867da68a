"""A user's own environment: its action numbering, its limits, its wrappers, and the ways it can fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gymnasium")

from agent_lightning.agents.environments import env_config, env_facts, make_env, make_vector_env
from agent_lightning.agents.rollout import evaluate_policy, rollout, summarize, summary_line
from agent_lightning.errors import ConfigError

from .user_envs import Reach, reach_expert

REACH = {"id": "tests.user_envs:Reach-v0"}


def toward_target(observations: np.ndarray) -> np.ndarray:
    """The expert as a policy answers: a class 0..2, for the env's actions -1..1."""
    return np.sign(observations[:, 1] - observations[:, 0]).astype(np.int64) + 1


def test_an_evaluation_makes_its_env_once_before_the_copies_it_plays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Reach, "made", 0)
    facts = env_facts(REACH)  # what evaluate and env_eval read first (sizes, threshold)
    episodes = evaluate_policy(toward_target, REACH, episodes=4, num_envs=2, facts=facts)
    assert Reach.made == 1 + 2 and [e.seed for e in episodes] == [0, 1, 2, 3]
    # Called alone it reads the facts itself, from one copy, then makes its copies.
    monkeypatch.setattr(Reach, "made", 0)
    assert [e.ret for e in evaluate_policy(toward_target, REACH, episodes=4, num_envs=2)] == [e.ret for e in episodes]
    assert Reach.made == 1 + 2


def test_discrete_actions_that_start_below_zero_are_classes_for_the_policy_and_actions_for_the_env() -> None:
    facts = env_facts(REACH)
    assert (facts.action_start, facts.action_count, facts.max_episode_steps, facts.success_threshold) == (
        -1,
        3,
        40,
        -10,
    )
    # The expert answers -1..1; the dataset records classes 0..2; the states are the expert's own path.
    data = rollout(REACH, 200, reach_expert, seed=3)
    assert set(np.unique(data.actions)) == {0, 1, 2}
    expected = np.sign(data.observations[:, 1] - data.observations[:, 0]) + 1
    assert np.array_equal(data.actions, expected)
    # A policy that chooses the expert's classes plays the expert's episodes: the shortest path on each seed.
    episodes = evaluate_policy(toward_target, REACH, episodes=6, num_envs=4)
    for episode in episodes:
        obs, _ = (made := make_env(REACH)).reset(seed=episode.seed)
        made.close()
        assert episode.length == max(1, abs(int(obs[1] - obs[0]))) or obs[1] == obs[0]
    assert all(e.ret == -e.length and e.success == (e.ret >= -10) for e in episodes)
    # The learner (a policy) drives with classes while the expert labels: the same path again.
    learned = rollout(REACH, 200, lambda env, obs: int(toward_target(obs[None])[0]), label=reach_expert, seed=3)
    assert np.array_equal(learned.actions, data.actions) and learned.returns == data.returns


def test_an_id_without_a_preset_takes_its_registered_limits_and_a_builtin_preset_does_not_impose_its_own() -> None:
    by_itself = env_facts(env_config({"id": "tests.user_envs:Reach-v0"}))
    cartpole_preset = {**env_config("cartpole"), "id": "tests.user_envs:Reach-v0", "expert": None}
    assert env_facts(cartpole_preset) == by_itself  # not CartPole's 500 steps or 475 threshold
    capped = env_facts({**REACH, "max_episode_steps": 7, "success_threshold": -3})
    assert (capped.max_episode_steps, capped.success_threshold) == (7, -3)
    # A registered threshold is for the registered length: a MountainCar cut at 100 steps returns -100 >= -110.
    assert env_facts({"id": "MountainCar-v0", "max_episode_steps": 100}).success_threshold is None
    assert env_facts({"id": "MountainCar-v0", "max_episode_steps": 200}).success_threshold == -110
    episodes = evaluate_policy(lambda obs: np.ones(len(obs), dtype=np.int64), {**REACH, "max_episode_steps": 7}, 3)
    assert {e.length for e in episodes} <= {7} | set(range(0, 7))
    # No threshold registered or set: no success rate is made up.
    stats = summarize(evaluate_policy(toward_target, {"id": "tests.user_envs:DictReach-v0", "wrappers": FLAT}, 2))
    assert "success_rate" not in stats and "success=" not in summary_line(stats)


FLAT = [{"_target_": "gymnasium.wrappers.FlattenObservation"}]


def test_wrappers_from_the_config_apply_to_single_and_vector_envs() -> None:
    dict_reach = {"id": "tests.user_envs:DictReach-v0"}
    with pytest.raises(ConfigError, match=r"has Dict\(.*observations: .* flatten them with env.wrappers="):
        make_env(dict_reach)
    flat = {**dict_reach, "wrappers": FLAT}
    assert make_env(flat).observation_space.shape == (2,)
    for mode in ("sync", "async"):
        vector = make_vector_env(flat, 2, mode)
        try:
            assert vector.single_observation_space.shape == (2,)
        finally:
            vector.close()
    # FlattenObservation orders a Dict's keys by name: position, target, as Reach's own observation.
    assert [e.ret for e in evaluate_policy(toward_target, flat, 4)] == [
        e.ret for e in evaluate_policy(toward_target, REACH, 4)
    ]
    unknown = r"^env.wrappers\[0\] \(gymnasium.wrappers.NoSuchWrapper\): Error loading .* 'NoSuchWrapper' is importable"
    with pytest.raises(ConfigError, match=unknown):
        make_env({**dict_reach, "wrappers": [{"_target_": "gymnasium.wrappers.NoSuchWrapper"}]})
    with pytest.raises(ConfigError, match=r"^env.wrappers\[0\]=FlattenObservation must name its class as _target_"):
        make_env({**dict_reach, "wrappers": ["FlattenObservation"]})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"id": "tests.user_envs:EndlessReach-v0"}, r"registers no episode limit .* set env.max_episode_steps=N"),
        ({**REACH, "max_episode_steps": 0}, r"env.max_episode_steps=0 must be a whole number of steps >= 1, or null"),
        ({**REACH, "success_threshold": "high"}, r"env.success_threshold='high' must be a finite number"),
        ({**REACH, "success_threshold": float("nan")}, r"env.success_threshold=nan must be a finite number"),
        ({**REACH, "kwargs": {"fail_to_start": True}}, r"could not be made: ValueError: no licence for the simulator"),
        ({**REACH, "max_steps": 9}, r"env.max_steps is not an env setting: use id, kwargs, max_episode_steps"),
        ({"id": "no_such_module:Reach-v0"}, r"env.id=no_such_module:Reach-v0: .*no_such_module"),
    ],
)
def test_env_settings_that_cannot_work_are_one_line_naming_the_key(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_env(settings)


def test_an_endless_env_with_a_configured_cap_ends_its_episodes() -> None:
    endless = {"id": "tests.user_envs:EndlessReach-v0", "max_episode_steps": 12}
    assert {e.length for e in evaluate_policy(toward_target, endless, 3)} == {12}


def test_an_env_that_returns_nan_or_raises_is_one_line_naming_the_episode() -> None:
    nan_at = {**REACH, "kwargs": {"nan_at": 3, "endless": True}}  # endless: no episode ends first
    where = r"\(episode seed 5, step 3\)"
    with pytest.raises(ConfigError, match=rf"^env.id=.*Reach-v0 returned an observation holding NaN or inf {where}"):
        rollout(nan_at, 100, reach_expert, seed=5)
    with pytest.raises(ConfigError, match=r"returned an observation holding NaN or inf \(episode seed 0, step 3\)"):
        evaluate_policy(toward_target, nan_at, 1)
    raises = {**REACH, "kwargs": {"raise_at": 2, "endless": True}}
    broken = r"raised RuntimeError in step \(episode seed 5, step 1\): the simulator lost its state"
    with pytest.raises(ConfigError, match=rf"^env.id=.*Reach-v0 {broken}"):
        rollout(raises, 100, reach_expert, seed=5)
    with pytest.raises(ConfigError, match=r"raised RuntimeError in step \(episode seeds 0..1, step 1\)"):
        evaluate_policy(toward_target, raises, 2)
    nan_reward = {**REACH, "kwargs": {"nan_reward_at": 2, "endless": True}}
    with pytest.raises(ConfigError, match=r"returned a reward of nan \(episode seed 5, step 1\)"):
        rollout(nan_reward, 100, reach_expert, seed=5)
    with pytest.raises(ConfigError, match=r"returned a reward of nan \(episode seed 0, step 1\)"):
        evaluate_policy(toward_target, nan_reward, 1)


def _collect(tmp_path: Path) -> Path:
    from agent_lightning.collect import collect

    data = tmp_path / "reach"
    collect(REACH, data, steps=1500, expert="tests.user_envs:reach_expert", seed=1000, random_episodes=0)
    return data


def test_env_eval_that_fails_keeps_the_tested_run_and_its_summary(compose_cfg, tmp_path: Path) -> None:
    from agent_lightning.train import train

    data = _collect(tmp_path)
    broken = "{id: 'tests.user_envs:Reach-v0', kwargs: {raise_at: 3, endless: true}}"
    quiet = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
    overrides = ["experiment=bc", f"data.path={data}", "trainer.max_epochs=1", f"+env_eval={{env: {broken}}}"]
    cfg = compose_cfg(*overrides, *quiet, fast=False)
    with pytest.raises(ConfigError, match=r"^env_eval: env.id=.*raised RuntimeError in step .* are kept in"):
        train(cfg)
    summary = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    assert summary["status"] == "env_eval failed"
    assert summary["metrics"]["test/acc"] > 0.5 and (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").exists()


@pytest.mark.timeout(180)
def test_a_users_env_config_dir_serves_collect_and_train_env_eval(tmp_path: Path) -> None:
    """`-cd DIR` with DIR/env/reach.yaml: the env is a name for collect and for train's env_eval.

    env_eval's name is replaced by its settings before any rank starts: ranks know nothing of `-cd`.
    """
    conf = tmp_path / "conf" / "env"
    conf.mkdir(parents=True)
    (conf / "reach.yaml").write_text(
        "defaults: [gym, _self_]\nid: tests.user_envs:Reach-v0\nexpert: tests.user_envs:reach_expert\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    env = {"PYTHONPATH": root, "PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "ignore"}
    quiet = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]

    def command(module: str, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", f"agent_lightning.{module}", "-cd", str(tmp_path / "conf"), *args],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150,
        )  # fmt: skip
        assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
        return done.stdout + done.stderr

    command("collect", "env=reach", "steps=1500", f"output={tmp_path / 'data'}", "random_episodes=0")
    run = tmp_path / "run"
    command(
        "train", "experiment=bc", f"data.path={tmp_path / 'data'}", "trainer.max_epochs=2", *quiet,
        "+env_eval={env: reach, episodes: 4}", f"hydra.run.dir={run}",
    )  # fmt: skip
    metrics = json.loads((run / "summary.json").read_text())["metrics"]
    # Played with the env's own actions (-1..1, else Reach refuses them); standing still would return -40.
    assert metrics["env/success_rate"] >= 0.5 and metrics["env/return_mean"] > -20
    assert "id: tests.user_envs:Reach-v0" in next(run.glob("csv/**/hparams.yaml")).read_text()  # what ranks got


def test_recorded_episodes_are_the_evaluated_ones_frame_by_frame(tmp_path: Path) -> None:
    from PIL import Image

    from agent_lightning.agents.recording import record_episodes

    def push_left(observations: np.ndarray) -> np.ndarray:  # CartPole falls in about 10 steps
        return np.zeros(len(observations), dtype=np.int64)

    played = evaluate_policy(push_left, "cartpole", episodes=2, first_seed=7)
    paths = record_episodes(push_left, "cartpole", [7, 8], tmp_path)
    assert [p.name for p in paths] == ["episode_7.gif", "episode_8.gif"]
    for episode, path in zip(played, paths, strict=True):
        with Image.open(path) as gif:
            assert gif.width == 320
            first = np.asarray(gif.convert("RGB"))
            shown = 0  # Pillow merges a frame identical to the one before into it, adding up their durations
            for index in range(gif.n_frames):
                gif.seek(index)
                shown += gif.info["duration"]
            assert shown == 20 * (episode.length + 1)  # the reset frame, then one per step, at CartPole's 50 fps
            assert not np.array_equal(first, np.asarray(gif.convert("RGB")))  # the pole fell


def test_env_names_come_from_hydras_search_path_with_defaults_lists(tmp_path: Path, compose_cfg) -> None:
    """As in a sweep's process, where Hydra is set up but no job runs: names resolve as `env=` would compose them."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from agent_lightning.agents.environments import check_env_eval, env_names
    from agent_lightning.config import config_dir

    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "short.yaml").write_text("defaults: [cartpole, _self_]\nmax_episode_steps: 50\n")
    (tmp_path / "env" / "listed.yaml").write_text("- not\n- a mapping\n")
    cfg = compose_cfg("+env_eval={env: {id: CartPole-v1, max_steps: 9}}")
    with pytest.raises(ConfigError, match=r"^env_eval.env.max_steps is not an env setting"):
        check_env_eval(cfg)
    named = compose_cfg("+env_eval={env: short}")  # composing sets Hydra up its own way: first
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        # The package's tree plus the user's directory, as `-cd DIR` adds it (Hydra's own search path class).
        from hydra._internal.config_search_path_impl import ConfigSearchPathImpl

        search = ConfigSearchPathImpl()
        search.append("hydra", "pkg://hydra.conf")
        search.append("main", f"file://{config_dir()}")
        search.append("command-line", f"file://{tmp_path}")
        search.append("schema", "structured://")
        GlobalHydra.instance().config_loader().repository.initialize_sources(search)
        assert {"short", "listed", "cartpole", "gym"} <= set(env_names())
        short = env_config("short")
        assert (short.id, short.max_episode_steps, short.expert) == ("CartPole-v1", 50, "cartpole")
        with pytest.raises(ConfigError, match=r"^env=listed is not a mapping of env settings"):
            env_config("listed")
        with pytest.raises(ConfigError, match=r"^env_eval.env=short has 4 observations but model.input_dim=128"):
            check_env_eval(named)  # the synthetic data's 128 features: refused, after the name was resolved
        assert OmegaConf.to_container(named.env_eval.env)["max_episode_steps"] == 50  # what the ranks are given
    with pytest.raises(ConfigError, match=r"^env=\[1, 2\] is not a mapping of env settings"):
        env_config(OmegaConf.create([1, 2]))


def test_hydras_flags_and_their_values_are_not_overrides() -> None:
    from agent_lightning.runs.overrides import command_overrides

    args = ["-cd", "myconf", "--info", "config", "ckpt_path=latest", "-m", "seed=1,2", "--cfg", "job", "-p", "env"]
    assert command_overrides(args) == ["ckpt_path=latest", "seed=1,2", "job"]  # --cfg's value is an override's place


@pytest.mark.timeout(60)
def test_a_dagger_run_dir_is_refused_before_hydra_writes_into_it(tmp_path: Path) -> None:
    run = tmp_path / "dagger"
    (run / "iter_00").mkdir(parents=True)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("the first run's\n")
    done = subprocess.run(
        [sys.executable, "-m", "agent_lightning.dagger", "env=cartpole", f"hydra.run.dir={run}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=50,
    )  # fmt: skip
    assert done.returncode == 2 and f"hydra.run.dir={run} holds a DAgger run already" in done.stderr, done.stderr
    assert (run / ".hydra" / "config.yaml").read_text() == "the first run's\n" and not (run / "dagger.log").exists()
    # A training setting added with + would be ignored by every training round: refused, pointing at train=.
    command = ["env=cartpole", "+trainer.max_epochs=3", f"hydra.run.dir={tmp_path / 'new'}"]
    ignored = subprocess.run(
        [sys.executable, "-m", "agent_lightning.dagger", *command],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=50,
    )
    expected = "+trainer.max_epochs=3: dagger has no setting trainer; a training run's settings go in train=, e.g. "
    said = ignored.stdout + ignored.stderr  # the job's log line: Hydra's console handler
    assert ignored.returncode == 2 and expected + "'train=[\"trainer.max_epochs=3\"]'" in said, said


def test_a_preset_is_found_where_another_app_set_hydra_up(tmp_path: Path) -> None:
    """A notebook that initialised Hydra on its own config dir still gets the package's env presets by name."""
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        assert env_config("cartpole").id == "CartPole-v1"
        with pytest.raises(ConfigError, match=r"env='pong' is unknown: choose one of acrobot, cartpole, gym"):
            env_config("pong")
