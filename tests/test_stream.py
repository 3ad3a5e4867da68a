"""Online learning from a stream directory: producers, atomic parts, the end marker, ranks that agree."""

from __future__ import annotations

import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from agent_lightning.config import compose_config
from agent_lightning.data import ClusterTask, PreparedDataset, StreamDataModule, StreamWriter
from agent_lightning.data.stream_dir import look, part_names, wait_for_first_part
from agent_lightning.errors import ConfigError
from agent_lightning.prepare import prepare
from agent_lightning.train import run

ROWS, BATCH, WINDOW = 1000, 64, 900
TRAIN = [
    "data=stream",
    f"data.batch_size={BATCH}",
    f"data.window_rows={WINDOW}",
    "data.val_every_steps=20",
    "data.poll_seconds=0.1",
    "trainer.log_every_n_steps=5",
    "trainer.max_steps=500",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "print_config=false",
    "seed=0",
]
# A producer that writes part k once the trainer has logged its k-th wait (for a first part, then for
# the next one): every part arrives while the run is running. Part 1 is added by `prepare(append=True)`
# (what `python -m agent_lightning.prepare ... append=true` calls).
PRODUCER = """
import sys, time
from pathlib import Path
import numpy as np
from agent_lightning.data import ClusterTask, StreamWriter
from agent_lightning.prepare import prepare
stream, log, rows = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
x, y = ClusterTask(num_features=16, num_classes=4, cluster_std=1.0, seed=1).samples(0, 3 * rows)
x, y = x.numpy(), y.numpy()
def wait_for(waits):
    deadline = time.time() + 200
    while time.time() < deadline:
        if log.is_file() and log.read_text().count("waiting for") >= waits:
            return
        time.sleep(0.05)
    sys.exit("the trainer never waited")
writer = StreamWriter(stream, num_classes=4)
for k in range(3):
    wait_for(k + 1)
    part = (x[k * rows : (k + 1) * rows], y[k * rows : (k + 1) * rows])
    if k == 1:
        np.savez(stream.parent / "part1.npz", x=part[0], y=part[1])
        prepare(str(stream.parent / "part1.npz"), stream, append=True, progress_bar=False)
    else:
        writer.write(*part)
writer.close()
"""


def _steps_per_part(parts: int, rows: list[int], passes: float = 1.0) -> int:
    """Steps a run takes: per head part, passes x window rows drawn, one global batch at a time."""
    total, seen = 0, 0
    for k in range(parts):
        seen += rows[k]
        total += math.ceil(passes * min(WINDOW, seen) / BATCH)
    return total


def _train_rows(stream: Path) -> list[int]:
    return [PreparedDataset(stream / name).rows("train") for name in part_names(stream)]


@pytest.mark.timeout(240)
def test_online_run_follows_a_producer_to_its_end_marker(tmp_path):
    stream, run_dir = tmp_path / "stream", tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    trainer = subprocess.Popen(
        [sys.executable, "-m", "agent_lightning.train", *TRAIN, f"data.path={stream}", f"hydra.run.dir={run_dir}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    producer = subprocess.run(
        [sys.executable, "-c", PRODUCER, str(stream), str(run_dir / "train.log"), str(ROWS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
    )
    output, _ = trainer.communicate(timeout=120)
    assert producer.returncode == 0, producer.stderr[-2000:]
    assert trainer.returncode == 0, output[-3000:]
    assert "no data yet, waiting for a first part" in output
    assert output.count("waiting for the next part") == 2  # parts 1 and 2 arrived while it ran
    assert "training on part-00001" in output and "training on part-00002" in output
    assert f"stream {stream} ended: 3 parts" in output

    rows = _train_rows(stream)
    metrics = pd.read_csv(run_dir / "csv" / "metrics.csv")
    steps = metrics["stream/head_part"].dropna()
    assert sorted(set(steps)) == [1.0, 2.0, 3.0]  # every part became the window's head
    assert metrics["step"].max() + 1 == _steps_per_part(3, rows) < 500  # stopped at the end marker
    assert metrics["val/acc"].dropna().iloc[-1] > 0.6
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["StreamDataModule"]
    drawn = state["train_position"]["drawn_per_part"]
    assert set(drawn) == {"part-00000", "part-00001", "part-00002"} and min(drawn.values()) >= BATCH


def test_writer_parts_are_whole_when_listed(tmp_path):
    stream = tmp_path / "stream"
    abandoned = stream / f".part.prepare-{socket.gethostname()}-999999999"  # what a killed producer leaves
    abandoned.mkdir(parents=True)
    (abandoned / "train-00000.x.npy").write_bytes(b"\x93NUMPY half")
    x, y = ClusterTask(num_features=32, num_classes=4, seed=2).samples(0, 40_000)
    checked: set[str] = set()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with StreamWriter(stream, num_classes=4) as writer:
                for k in range(4):
                    writer.write(x[k * 10_000 : (k + 1) * 10_000].numpy(), y[k * 10_000 : (k + 1) * 10_000].numpy())
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    producer = threading.Thread(target=write)
    producer.start()
    while True:
        writing = producer.is_alive()
        for name in look(stream).parts:
            if name not in checked:  # listed: complete, and every shard matches its checksum
                PreparedDataset(stream / name, verify=True)
                checked.add(name)
        if not writing:
            break
    producer.join()
    assert not errors
    assert checked == {f"part-{k:05d}" for k in range(4)}
    assert look(stream).ended
    assert not abandoned.exists()  # the next append removed the dead producer's leftovers
    assert sorted(p.name for p in stream.iterdir()) == ["END.json", *sorted(checked)]


def test_a_part_of_another_width_is_refused(tmp_path):
    stream = tmp_path / "stream"
    writer = StreamWriter(stream)
    writer.write(np.zeros((100, 8), np.float32), np.arange(100) % 3)
    with pytest.raises(ConfigError, match=r"the new part has 6 features but the stream .* has 8"):
        writer.write(np.zeros((100, 6), np.float32), np.arange(100) % 3)
    with pytest.raises(ConfigError, match=r"num_classes=5 but the stream .* has 3 classes"):
        StreamWriter(stream, num_classes=5).write(np.zeros((100, 8), np.float32), np.arange(100) % 3)
    assert part_names(stream) == ["part-00000"]
    with pytest.raises(ConfigError, match=r"data.window_rows=0 must be a whole number >= 1"):
        compose_config(["data=stream", f"data.path={stream}", "data.window_rows=0"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"data.path=.* is a prepared dataset, not a stream directory"):
        compose_config(["data=stream", f"data.path={stream / 'part-00000'}"], tmp_path / "run")


def test_an_ended_stream_takes_no_more_parts_and_append_must_be_a_bool(tmp_path):
    stream = tmp_path / "stream"
    rows = (np.zeros((100, 8), np.float32), np.arange(100) % 3)
    with StreamWriter(stream) as writer:
        writer.write(*rows)
    with pytest.raises(ConfigError, match=r"output=.*stream has ended \(END.json is there\)"):
        StreamWriter(stream).write(*rows)
    with pytest.raises(ConfigError, match=r"output=.*stream has ended"):
        prepare(rows, stream, append=True, progress_bar=False)
    assert part_names(stream) == ["part-00000"] and look(stream).ended
    with pytest.raises(ConfigError, match=r"^append='maybe' must be true or false$"):
        prepare(rows, tmp_path / "other", append="maybe", progress_bar=False)


def test_waiting_on_a_directory_that_does_not_exist_says_so(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="agent_lightning")
    with pytest.raises(ConfigError, match=r"no part arrived within 0.05s"):
        wait_for_first_part(tmp_path / "lvie", poll_seconds=0.01, timeout_s=0.05)
    assert "the directory does not exist yet (is data.path right?)" in caplog.text


def test_a_damaged_end_marker_is_one_error_naming_the_file(tmp_path):
    stream = tmp_path / "stream"
    StreamWriter(stream).write(np.zeros((100, 8), np.float32), np.arange(100) % 3)
    (stream / "END.json").write_text("garbage")
    with pytest.raises(ConfigError, match=r"END.json is not valid JSON .*StreamWriter.close\(\)"):
        look(stream)
    (stream / "END.json").write_text('{"parts": "two"}')
    with pytest.raises(ConfigError, match=r"END.json holds .*not an end marker"):
        look(stream)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_ranks_take_the_same_steps_on_a_growing_stream(tmp_path):
    stream, seen = tmp_path / "stream", tmp_path / "seen"
    x, y = ClusterTask(num_features=16, num_classes=4, cluster_std=1.0, seed=1).samples(0, 3 * ROWS)
    writer = StreamWriter(stream, num_classes=4)
    writer.write(x[:ROWS].numpy(), y[:ROWS].numpy())

    def produce() -> None:  # parts land while the ranks run: each after a new last.ckpt (every 10 steps)
        last, written = tmp_path / "run" / "checkpoints" / "last.ckpt", None
        for k in (1, 2):
            deadline = time.time() + 250
            while time.time() < deadline and (not last.exists() or last.stat().st_mtime_ns == written):
                time.sleep(0.02)
            written = last.stat().st_mtime_ns if last.exists() else None
            writer.write(x[k * ROWS : (k + 1) * ROWS].numpy(), y[k * ROWS : (k + 1) * ROWS].numpy())
        writer.close()

    producer = threading.Thread(target=produce)
    producer.start()
    cfg = compose_config(
        [
            *TRAIN,
            f"data.path={stream}",
            "data.val_every_steps=10",  # the producer below writes after the checkpoints at steps 10 and 20
            "strategy=ddp",
            "devices=2",
            "trainer.accelerator=cpu",
            "logger=none",
            "+callbacks.recorder._target_=tests.helpers.SampleRecorder",
            f"+callbacks.recorder.out_dir={seen}",
        ],
        tmp_path / "run",
    )
    run(cfg)
    producer.join()
    ranks = [torch.load(seen / f"rank{r}.pt") for r in range(2)]
    steps = _steps_per_part(3, _train_rows(stream))
    assert len(ranks[0]) == len(ranks[1]) == steps * BATCH // 2  # same steps, each its half of every batch
    for step in range(steps):
        rows = [r[step * BATCH // 2 : (step + 1) * BATCH // 2] for r in ranks]
        assert not {a.numpy().tobytes() for a in rows[0]} & {b.numpy().tobytes() for b in rows[1]}


def test_stream_position_resumes_and_replay_draws_older_rows(tmp_path):
    stream = tmp_path / "stream"
    x, y = ClusterTask(num_features=16, num_classes=4, seed=3).samples(0, 3 * ROWS)
    with StreamWriter(stream, num_classes=4) as writer:
        for k in range(3):
            writer.write(x[k * ROWS : (k + 1) * ROWS].numpy(), y[k * ROWS : (k + 1) * ROWS].numpy())

    def module() -> StreamDataModule:
        data = StreamDataModule(str(stream), batch_size=BATCH, window_rows=500, replay={"fraction": 0.25})
        data.setup("fit")
        return data

    data = module()
    batches = iter(data.train_dataloader())
    everything = [next(batches) for _ in range(20)]  # past the first part: the head has moved on
    state = data.state_dict()
    expected = next(batches)
    resumed = module()
    resumed.load_state_dict(state)
    got = next(iter(resumed.train_dataloader()))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert state["train_position"]["head"] == 2
    # With older rows than the window, a quarter of each batch (16 rows) comes from outside the window.
    space = data.train_space
    window = {r.tobytes() for r in space.gather(np.arange(space.rows - 500, space.rows))[0]}
    features = everything[-1][0].numpy()
    assert sum(r.tobytes() not in window for r in features) == 16
