"""`predict`: a checkpoint's actions for every row of a table, columns found by name, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent_lightning.agents.policy import Policy
from agent_lightning.config import compose_config
from agent_lightning.errors import ConfigError
from agent_lightning.predict import predict
from agent_lightning.prepare import prepare
from agent_lightning.train import train

from .policy_setup import OBS_DIM, QUICK, scaled_task, trained_run

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

FEATURES = [f"sensor_{i}" for i in range(OBS_DIM)]
ACTIONS = np.array(["brake", "left", "right", "throttle"])


@pytest.fixture(scope="module")
def named_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint trained on a table with named feature columns and named actions."""
    root = tmp_path_factory.mktemp("named_run")
    x, y = scaled_task(2_000)
    frame = pd.DataFrame(x, columns=FEATURES).assign(action=ACTIONS[y])
    frame.to_parquet(root / "train.parquet")
    prepare(root / "train.parquet", root / "data", progress_bar=False)
    train(compose_config([*QUICK, f"data.path={root / 'data'}", "trainer.max_epochs=3"], output_dir=root / "run"))
    return root / "run" / "checkpoints" / "last.ckpt"


def _new_rows(rows: int, start: int) -> pd.DataFrame:
    x, y = scaled_task(rows, start=start)  # rows of the training task it never saw
    frame = pd.DataFrame(x, columns=FEATURES).assign(episode=np.arange(rows) // 10, logged=ACTIONS[y])
    return frame[["episode", *reversed(FEATURES), "logged"]]  # another column order than in training


def test_actions_follow_the_columns_by_name_and_keep_the_rows_and_other_columns(named_run: Path, tmp_path) -> None:
    first, second = _new_rows(300, start=10_000), _new_rows(200, start=20_000)
    first.to_csv(tmp_path / "a.csv", index=False)
    second.to_csv(tmp_path / "b.csv", index=False)
    done = predict(named_run, tmp_path / "*.csv", tmp_path / "out.parquet", probabilities=True, progress_bar=False)
    out = pd.read_parquet(tmp_path / "out.parquet")
    both = pd.concat([first, second], ignore_index=True)
    policy = Policy.load(named_run)
    expected = ACTIONS[policy.act(both[FEATURES].to_numpy(np.float32))]  # in the training order of columns
    assert done.rows == len(out) == 500 and done.files == 2
    assert list(out.columns) == ["episode", "logged", "predicted_action", *(f"prob_{a}" for a in ACTIONS)]
    assert (out["predicted_action"].to_numpy() == expected).all()
    assert (out["episode"] == both["episode"]).all() and (out["logged"] == both["logged"]).all()
    assert np.allclose(out[[f"prob_{a}" for a in ACTIONS]].sum(axis=1), 1.0, atol=1e-5)
    assert (out["predicted_action"] == out["logged"]).mean() > 0.5  # it learnt the task (chance: 0.25), names line up
    assert done.actions == dict(zip(*np.unique(expected, return_counts=True), strict=True))
    # Policy.act on the table itself takes its columns by name too; a missing one is named.
    assert (ACTIONS[policy.act(both)] == expected).all()
    with pytest.raises(ValueError, match="lack the feature column 'sensor_0'"):
        policy.act(both.drop(columns=["sensor_0"]))
    assert [ACTIONS[policy.act(both.iloc[i])] for i in range(5)] == list(expected[:5])  # one row, a Series
    assert (ACTIONS[policy.act(both.astype({name: "Float64" for name in FEATURES}))] == expected).all()
    with pytest.raises(ValueError, match="feature 'sensor_2' holds values that are not numbers"):
        policy.act(both.assign(sensor_2="n/a"))


def test_a_model_without_column_names_takes_the_numeric_columns_in_order(tmp_path_factory, tmp_path) -> None:
    ckpt = trained_run(tmp_path_factory)["ckpt"]  # trained on arrays: no names
    x, _ = scaled_task(100, seed=5)
    pd.DataFrame(x, columns=FEATURES).assign(note="a word").to_csv(tmp_path / "in.csv", index=False)
    predict(ckpt, tmp_path / "in.csv", tmp_path / "out.csv", keep=[], progress_bar=False)
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["predicted_action"]
    assert (out["predicted_action"].to_numpy() == Policy.load(ckpt).act(x)).all()
    pd.DataFrame(x, columns=FEATURES).assign(speed=1.0).to_csv(tmp_path / "wide.csv", index=False)
    with pytest.raises(ConfigError, match=r"does not name its 8 feature columns and this file has 9 numeric"):
        predict(ckpt, tmp_path / "wide.csv", tmp_path / "wide-out.csv", progress_bar=False)


def test_bad_inputs_are_refused_in_one_line_and_leave_no_output(named_run: Path, tmp_path: Path) -> None:
    rows = _new_rows(50, start=30_000)
    rows.drop(columns=["sensor_3"]).to_csv(tmp_path / "missing.csv", index=False)
    nan = rows.copy()
    nan.loc[17, "sensor_5"] = np.nan
    nan.to_csv(tmp_path / "nan.csv", index=False)
    rows.to_csv(tmp_path / "ok.csv", index=False)
    (tmp_path / "taken.csv").write_text("keep me\n")
    np.save(tmp_path / "x.npy", rows[FEATURES].to_numpy(np.float32))
    cases = {
        ("missing.csv", "out.csv"): r"missing.csv lacks the feature column 'sensor_3' the model was trained on",
        ("nan.csv", "out.csv"): r"nan.csv, row 17: feature sensor_5 is nan \(an empty or NA cell reads as nan",
        ("ok.csv", "taken.csv"): r"output=.*taken.csv exists: choose another or set overwrite=true",
        ("ok.csv", "ok.csv"): r"output=.*ok.csv is one of the inputs",
        ("ok.csv", "out.json"): r"output=.*out.json: write .csv or .parquet",
        ("x.npy", "out.csv"): r"x.npy: predict reads tables",
    }
    for (source, output), message in cases.items():
        with pytest.raises(ConfigError, match=message) as refused:
            predict(named_run, tmp_path / source, tmp_path / output, progress_bar=False)
        assert "\n" not in str(refused.value)
    with pytest.raises(ConfigError, match=r"keep names 'step', which input file .*ok.csv lacks"):
        predict(named_run, tmp_path / "ok.csv", tmp_path / "out.csv", keep=["step"], progress_bar=False)
    assert not (tmp_path / "out.csv").exists() and (tmp_path / "taken.csv").read_text() == "keep me\n"
    assert not list(tmp_path.glob(".*.tmp*"))  # no staged file left behind


def test_kept_columns_keep_their_values_and_types_mix_across_files(named_run: Path, tmp_path: Path) -> None:
    first, second = _new_rows(30, start=50_000), _new_rows(20, start=60_000)
    first.assign(uid=np.arange(30) + 2**60 + 1, score=1, note=np.nan).to_csv(tmp_path / "1.csv", index=False)
    second.assign(uid=np.arange(20) + 2**60, score=0.5, note="checked").to_csv(tmp_path / "2.csv", index=False)
    (tmp_path / "3.csv").write_bytes(b"")  # an empty export: no rows, like a header-only file
    predict(named_run, [tmp_path / "1.csv", tmp_path / "2.csv", tmp_path / "3.csv"], tmp_path / "o.parquet",
            progress_bar=False)  # fmt: skip
    out = pd.read_parquet(tmp_path / "o.parquet")
    assert len(out) == 50 and out["note"].iloc[30:].eq("checked").all() and out["note"].iloc[:30].isna().all()
    assert out["score"].tolist() == [1.0] * 30 + [0.5] * 20 and out["uid"].iloc[0] == 2**60 + 1
    predict(named_run, tmp_path / "1.csv", tmp_path / "ids.csv", progress_bar=False)
    ids = pd.read_csv(tmp_path / "ids.csv", dtype={"uid": "int64"})["uid"]
    assert (ids.to_numpy() == np.arange(30) + 2**60 + 1).all()  # an id beyond float64's exact range stays exact
    first.rename(columns={"logged": "episode"}).to_csv(tmp_path / "twice.csv", index=False)
    with pytest.raises(ConfigError, match=r"twice.csv: column 'episode' appears more than once"):
        predict(named_run, tmp_path / "twice.csv", tmp_path / "t.csv", progress_bar=False)
    with pytest.raises(ConfigError, match=r"features lists the model's columns in another order"):
        predict(named_run, tmp_path / "1.csv", tmp_path / "p.csv", features=FEATURES[::-1], progress_bar=False)


@pytest.mark.timeout(120)
def test_command_line_writes_the_actions_and_a_wrong_column_count_is_refused(named_run: Path, tmp_path: Path) -> None:
    _new_rows(40, start=40_000).to_csv(tmp_path / "new.tsv", index=False, sep="\t")
    command = [sys.executable, "-m", "agent_lightning.predict", f"ckpt_path={named_run}", "progress_bar=false"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [*command, "input=new.tsv", "output=actions.csv", "keep=episode"],  # one name: a list of one
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and "wrote actions.csv: 40 rows from 1 file(s); predicted_action: " in output, output
    assert list(pd.read_csv(tmp_path / "actions.csv").columns) == ["episode", "predicted_action"]
    with pytest.raises(ConfigError, match="features names 2 columns but the model takes 8"):
        predict(named_run, tmp_path / "new.tsv", tmp_path / "again.csv", features=["sensor_0", "speed"])
    assert not (tmp_path / "again.csv").exists()
