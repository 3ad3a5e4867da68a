"""`prepare`: every input format, sound splits, manifest contents, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import pickle
import re
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from agent_lightning.data import PreparedDataset
from agent_lightning.errors import ConfigError
from agent_lightning.prepare import prepare

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")


def _table(rows: int = 3000, features: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 5.0, size=(rows, features)).astype(np.float32)
    y = (x[:, 0] > 3).astype(np.int64) + (x[:, 1] > 3)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(features)])
    frame["label"] = y
    frame["episode"] = np.arange(rows) // 30
    return frame


def _all_rows(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    view = PreparedDataset(path).splits[split]
    return view.rows_of(0, view.rows)


def test_csv_parquet_npz_pt_and_arrays_give_the_same_dataset(tmp_path: Path) -> None:
    frame = _table()
    x = frame.drop(columns=["label", "episode"]).to_numpy(np.float32)
    y = frame["label"].to_numpy()
    frame.drop(columns=["episode"]).to_csv(tmp_path / "in.csv", index=False)
    frame.drop(columns=["episode"]).to_parquet(tmp_path / "in.parquet")
    np.savez(tmp_path / "in.npz", x=x, y=y)
    torch.save({"obs": torch.from_numpy(x), "actions": torch.from_numpy(y)}, tmp_path / "in.pt")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    inputs = {
        "csv": ("in.csv", {}),
        "parquet": ("in.parquet", {}),
        "npz": ("in.npz", {}),
        "pt": ("in.pt", {}),
        "npy": ("x.npy", {"label": str(tmp_path / "y.npy")}),
    }
    results = {}
    for name, (file, extra) in inputs.items():
        results[name] = prepare(tmp_path / file, tmp_path / name, progress_bar=False, **extra)
    results["arrays"] = prepare({"features": x, "labels": y}, tmp_path / "arrays", progress_bar=False)
    reference = _all_rows(tmp_path / "arrays", "train")
    for name, manifest in results.items():
        assert manifest["num_features"] == 6 and manifest["num_classes"] == 3, name
        assert sum(manifest["splits"][s]["rows"] for s in ("train", "val", "test")) == 3000
        got = _all_rows(tmp_path / name, "train")
        assert np.array_equal(got[0], reference[0]) and np.array_equal(got[1], reference[1]), name
    manifest = json.loads((tmp_path / "csv" / "manifest.json").read_text())
    assert manifest["feature_names"] == [f"f{i}" for i in range(6)]
    train_x, _ = reference
    stats = manifest["statistics"]
    assert np.allclose(stats["mean"], train_x.mean(0), atol=1e-4) and np.allclose(
        stats["std"], train_x.std(0), rtol=1e-4
    )
    assert np.allclose(stats["min"], train_x.min(0)) and np.allclose(stats["max"], train_x.max(0))
    assert sum(manifest["splits"]["train"]["class_counts"]) == manifest["splits"]["train"]["rows"]
    assert manifest["source"]["split"] == "random" and manifest["source"]["seed"] == 0


def test_rows_are_shuffled_and_sharded_at_fixed_size(tmp_path: Path) -> None:
    x = np.arange(10_000, dtype=np.float32).reshape(-1, 1)
    y = np.repeat(np.arange(10), 1000)  # class-sorted
    abandoned = tmp_path / f".out.prepare-{socket.gethostname()}-999999999"  # a killed prepare's (no such process)
    abandoned.mkdir()
    elsewhere = tmp_path / ".out.prepare-another-host-1"  # on a shared file system: whether it runs is unknown
    elsewhere.mkdir()
    manifest = prepare(  # numpy numbers (as a script computes them) are plain numbers in the manifest
        (x, y), tmp_path / "out", shard_rows=np.int64(1000), val_fraction=0.0, test_fraction=np.float32(0.0),
        seed=np.int64(0), progress_bar=False,
    )  # fmt: skip
    assert [s["rows"] for s in manifest["splits"]["train"]["shards"]] == [1000] * 10
    rows, labels = _all_rows(tmp_path / "out", "train")
    assert sorted(rows[:, 0].tolist()) == list(range(10_000))  # every row once
    assert len(np.unique(labels[:1000])) == 10  # the first shard holds every class: shuffled
    assert manifest["splits"]["val"]["rows"] == manifest["splits"]["test"]["rows"] == 0
    assert not abandoned.exists() and sorted(p.name for p in tmp_path.iterdir()) == [elsewhere.name, "out"]


def test_group_split_never_shares_a_group(tmp_path: Path) -> None:
    frame = _table(rows=6000)
    frame.to_parquet(tmp_path / "demos.parquet")
    prepare(tmp_path / "demos.parquet", tmp_path / "out", group="episode", split="group", progress_bar=False)
    dataset = PreparedDataset(tmp_path / "out")
    groups = {}
    for split, view in dataset.splits.items():
        groups[split] = set(np.concatenate([view.groups(i) for i in range(len(view.shards))]).tolist())
    assert all(groups.values())
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"])
    assert not (groups["val"] & groups["test"])
    assert len(groups["train"] | groups["val"] | groups["test"]) == 200
    assert dataset.num_features == 6  # the group column is not a feature


def test_a_split_smaller_than_its_buckets_keeps_its_group_ids(tmp_path: Path) -> None:
    # Input over bucket_mb spills into several buckets per split; a 2-row split leaves most of its buckets empty.
    rows = 50_000
    x = np.random.default_rng(0).normal(size=(rows, 16)).astype(np.float32)  # 3.2 MB: 4 buckets of 1 MiB
    split = np.where(np.arange(rows) < rows - 2, "train", "val")
    arrays = {"features": x, "labels": np.arange(rows) % 3, "groups": np.arange(rows), "split": split}
    prepare(arrays, tmp_path / "out", group="groups", split="column", bucket_mb=1, progress_bar=False)
    dataset = PreparedDataset(tmp_path / "out")
    for name, expected in (("train", range(rows - 2)), ("val", range(rows - 2, rows))):
        view = dataset.splits[name]
        groups = np.concatenate([view.groups(i) for i in range(len(view.shards))])
        assert view.rows == len(expected) and sorted(groups.tolist()) == list(expected)


def test_stratified_split_keeps_class_proportions(tmp_path: Path) -> None:
    y = np.array([0] * 900 + [1] * 100)
    x = np.random.default_rng(0).normal(size=(1000, 2))
    manifest = prepare((x, y), tmp_path / "out", split="stratified", progress_bar=False, chunk_rows=97)
    counts = {s: manifest["splits"][s]["class_counts"] for s in ("train", "val", "test")}
    assert counts == {"train": [720, 80], "val": [90, 10], "test": [90, 10]}


def test_split_column_and_one_input_per_split(tmp_path: Path, caplog) -> None:
    frame = _table(rows=100)
    frame["split"] = ["train"] * 70 + ["val"] * 10 + ["test"] * 20
    frame.to_csv(tmp_path / "in.csv", index=False)
    by_column = prepare(tmp_path / "in.csv", tmp_path / "a", split="column", progress_bar=False)
    assert [by_column["splits"][s]["rows"] for s in ("train", "val", "test")] == [70, 10, 20]
    assert by_column["num_features"] == 7  # f0..f5 and episode; not the split column
    frame.iloc[:70].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[70:].to_csv(tmp_path / "test.csv", index=False)
    by_file = prepare(
        {"train": str(tmp_path / "train.csv"), "test": str(tmp_path / "test.csv")},
        tmp_path / "b",
        features=[f"f{i}" for i in range(6)],
        progress_bar=False,
    )
    assert [by_file["splits"][s]["rows"] for s in ("train", "val", "test")] == [70, 0, 30]
    assert by_file["source"]["split"] == "files"
    with caplog.at_level("WARNING", logger="agent_lightning.prepare"):
        prepare({"train": tmp_path / "train.csv"}, tmp_path / "c", val_fraction=0.2, features="f0", progress_bar=False)
    assert "one input per split: each file's rows go to its split, so split=random val_fraction=0.2" in caplog.text


def test_class_names_come_from_string_labels(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": [0.0, 1.0, 0.0, 1.0], "move": ["up", "left", "up", "down"]})
    frame.to_csv(tmp_path / "in.csv", index=False)
    manifest = prepare(tmp_path / "in.csv", tmp_path / "out", label="move", val_fraction=0, test_fraction=0)
    assert manifest["class_names"] == ["down", "left", "up"] and manifest["splits"]["train"]["class_counts"] == [
        1,
        1,
        2,
    ]
    _, labels = _all_rows(tmp_path / "out", "train")
    assert sorted(labels.tolist()) == [0, 1, 2, 2]


def test_numbers_written_as_text_are_classes_in_number_order_and_a_stray_word_is_named(tmp_path: Path) -> None:
    # Sorted as text, "10" would come before "2": class 2 would be output 4 of the model, silently.
    frame = pd.DataFrame({"a": np.arange(12.0), "action": [str(c) for c in (11, 2, 10, 0, 1, 3, 4, 5, 6, 7, 8, 9)]})
    frame.to_parquet(tmp_path / "text.parquet")
    manifest = prepare(tmp_path / "text.parquet", tmp_path / "text", val_fraction=0, test_fraction=0)
    assert manifest["class_names"] == [str(c) for c in range(12)]
    features, labels = _all_rows(tmp_path / "text", "train")
    assert labels.tolist() == [int(frame["action"][int(row)]) for row in features[:, 0]]  # each its own number
    superscript = frame.assign(action=frame["action"].where(frame.index != 3, "²"))  # a digit, but no number
    superscript.to_parquet(tmp_path / "superscript.parquet")
    with pytest.raises(ConfigError, match=r"row 3: label '²' is not a number but others are"):
        prepare(tmp_path / "superscript.parquet", tmp_path / "superscript", progress_bar=False)
    frame.loc[5, "action"] = "x"
    frame.to_csv(tmp_path / "stray.csv", index=False)
    with pytest.raises(ConfigError, match=r"stray.csv, row 5: label 'x' is not a number but others are \(e.g. '0'\)"):
        prepare(tmp_path / "stray.csv", tmp_path / "stray", progress_bar=False)
    named = prepare(
        tmp_path / "stray.csv", tmp_path / "named", class_names=[*map(str, range(12)), "x"], progress_bar=False
    )
    assert named["num_classes"] == 13  # the escape the message names: every class named, in the given order
    # Codes are names too: as many classes as codes, in number order (a sign is part of the number).
    codes = pd.DataFrame({"a": np.arange(8.0), "action": ["400", "100", "300", "200", "-1", "100", "0", "300"]})
    codes.to_parquet(tmp_path / "codes.parquet")
    coded = prepare(tmp_path / "codes.parquet", tmp_path / "codes", progress_bar=False)
    assert coded["class_names"] == ["-1", "0", "100", "200", "300", "400"] and coded["num_classes"] == 6


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, dict, str]]:
    frame = _table(rows=50)
    cases: dict[str, tuple[Path, dict, str]] = {}
    nan = frame.copy()
    nan.loc[17, "f2"] = np.nan
    nan.to_csv(tmp / "nan.csv", index=False)
    cases["nan"] = (tmp / "nan.csv", {}, r"nan.csv, row 17: feature f2 is nan")
    (tmp / "binary.csv").write_bytes(bytes(range(256)) * 8)  # e.g. a Parquet file named .csv
    cases["binary"] = (
        tmp / "binary.csv",
        {},
        r"^input file .*binary.csv is not a text CSV \(binary bytes in its first 2,048\): give CSV/TSV text, Parquet",
    )
    frame.to_csv(tmp / "latin.csv", index=False, encoding="latin-1")
    with open(tmp / "latin.csv", "a", encoding="latin-1") as file:
        file.write("1,2,3,4,5,6,0,café\n")  # one word in an episode column
    cases["latin-1"] = (tmp / "latin.csv", {}, r"latin.csv is not utf-8 text: if it is text in another encoding")
    frame.to_csv(tmp / "wide.csv", index=False, encoding="utf-16")
    cases["utf-16"] = (tmp / "wide.csv", {}, r"wide.csv is not utf-8 text: it starts as UTF-16 does: encoding=utf-16$")
    frame.to_csv(tmp / "semicolons.csv", index=False, sep=";", decimal=",")
    cases["semicolons"] = (
        tmp / "semicolons.csv",
        {},
        r"semicolons.csv, line 2: \d+ fields where the header has 1 \(ragged row\); its header reads as one column: if "
        r"semicolons separate its fields, add delimiter=semicolon$",
    )
    cases["decimal comma"] = (
        tmp / "semicolons.csv",
        {"delimiter": "semicolon"},
        r"semicolons.csv, row 0: feature f0 is '[-\d]+,\d+', not a number: if ',' is its decimal point, add "
        r"decimal=comma$",
    )
    cases["decimal is delimiter"] = (
        tmp / "semicolons.csv",
        {"delimiter": ";", "decimal": ";"},
        r"decimal and the field delimiter of .*semicolons.csv are both ';': they must differ",
    )
    inf = frame.copy()
    inf.loc[3, "f0"] = np.inf
    inf.to_parquet(tmp / "inf.parquet")
    cases["inf"] = (tmp / "inf.parquet", {}, r"inf.parquet, row 3: feature f0 is inf")
    frac = frame.copy().astype({"label": float})
    frac.loc[5, "label"] = 1.5
    frac.to_csv(tmp / "frac.csv", index=False)
    cases["fraction"] = (tmp / "frac.csv", {}, r"frac.csv, row 5: label 1.5 is not a whole number")
    frame.to_csv(tmp / "ok.csv", index=False)
    cases["range"] = (tmp / "ok.csv", {"num_classes": 2}, r"ok.csv, row \d+: label 2 is out of range: use 0..1")
    negative = frame.copy()
    negative.loc[9, "label"] = -1
    negative.to_csv(tmp / "neg.csv", index=False)
    cases["negative"] = (tmp / "neg.csv", {}, r"neg.csv, row 9: label -1 is out of range")
    cases["missing label"] = (tmp / "ok.csv", {"label": "action"}, r"ok.csv has no label 'action'")
    text = (tmp / "ok.csv").read_text().splitlines()
    text[8] = ",".join(text[8].split(",")[:-2])
    (tmp / "ragged.csv").write_text("\n".join(text) + "\n")
    cases["ragged"] = (tmp / "ragged.csv", {}, r"ragged.csv, line 9: 6 fields where the header has 8")
    (tmp / "empty.csv").write_text(",".join(frame.columns) + "\n")
    cases["empty"] = (tmp / "empty.csv", {}, r"empty.csv has no rows")
    np.save(tmp / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    cases["object npy"] = (tmp / "objects.npy", {"label": str(tmp / "objects.npy")}, "refused, it holds Python objects")
    x, y = frame[["f0", "f1"]].to_numpy(np.float32), frame["label"].to_numpy()
    np.save(tmp / "x.npy", x)
    np.save(tmp / "y.npy", y)
    whole = (tmp / "x.npy").read_bytes()
    (tmp / "cut.npy").write_bytes(whole[: len(whole) // 2])
    cases["truncated npy"] = (
        tmp / "cut.npy",
        {"label": str(tmp / "y.npy")},
        r"cut.npy is truncated: its header promises 528 bytes \(\(50, 2\) float32\), the file has 264",
    )
    np.savez(tmp / "full.npz", x=x, y=y)
    whole = (tmp / "full.npz").read_bytes()
    (tmp / "cut.npz").write_bytes(whole[: len(whole) // 2])
    cases["truncated npz"] = (tmp / "cut.npz", {}, r"cut.npz cannot be read as .npz \(truncated or not an archive\)")
    names = frame.assign(label=np.array(["left", "right", "up"])[frame["label"]])
    names.loc[7, "label"] = ""
    names.to_csv(tmp / "blank.csv", index=False)
    cases["empty name label"] = (tmp / "blank.csv", {}, r"blank.csv, row 7: label 'label' is empty")
    cases["label as feature"] = (
        tmp / "ok.csv",
        {"features": ["label", "f0"]},
        r"features lists 'label', the label column of .*ok.csv: list only feature columns",
    )
    huge = frame.copy().astype({"label": float})
    huge.loc[4, "label"] = 1e20
    huge.to_csv(tmp / "huge.csv", index=False)
    cases["huge label"] = (tmp / "huge.csv", {}, r"huge.csv, row 4: label 1e\+20 is out of range")
    frame.rename(columns={"f1": "y"}).to_csv(tmp / "grid.csv", index=False)  # `y`, a position, beside `label`
    cases["two label columns"] = (
        tmp / "grid.csv",
        {},
        r"grid.csv has several columns that could be the label \('label', 'y'\): name it, label=label or label=y$",
    )
    gaps = frame.astype({"episode": "Int64"})
    gaps.loc[23, "episode"] = pd.NA
    gaps.to_parquet(tmp / "gaps.parquet")
    blanks = frame.assign(episode=frame["episode"].map("ep{}".format))
    blanks.loc[11, "episode"] = " "
    blanks.to_csv(tmp / "blank_group.csv", index=False)
    cases["blank group"] = (
        tmp / "blank_group.csv",
        {"group": "episode", "split": "group"},
        r"blank_group.csv, row 11: group 'episode' is empty",
    )
    cases["empty group"] = (
        tmp / "gaps.parquet",
        {"group": "episode", "split": "group"},
        r"gaps.parquet, row 23: group 'episode' is empty",
    )
    (tmp / "twice.csv").write_text("f0,f1,f0,label\n1,2,3,0\n4,5,6,1\n")
    cases["repeated column"] = (tmp / "twice.csv", {}, r"twice.csv: column 'f0' appears more than once")
    np.savez(tmp / "onehot.npz", x=x, y=np.eye(3)[y])
    cases["one-hot labels"] = (tmp / "onehot.npz", {}, r"labels have shape \(50, 3\), one row of scores per sample")
    spelt = frame.assign(label=np.array(["left", "right", "up"])[frame["label"]])
    spelt.loc[6, "label"] = "NA"
    spelt.to_csv(tmp / "na.csv", index=False)
    cases["missing name"] = (tmp / "na.csv", {}, r"na.csv, row 6: label is missing \('NA'\): correct that row")
    spelt.loc[6, "label"] = "left"
    spelt.to_csv(tmp / "names.csv", index=False)
    cases["num_classes for names"] = (tmp / "names.csv", {"num_classes": 2}, r"num_classes=2 but the labels name 3")
    (tmp / "days").mkdir()
    frame.assign(label=frame["label"].astype(str)).to_parquet(tmp / "days" / "1.parquet")
    spelt.to_parquet(tmp / "days" / "2.parquet")
    cases["codes then words"] = (
        tmp / "days",
        {},
        r"2.parquet, row \d+: label 'left' is not a number but others are \(e.g. '0'\)",
    )
    spelt.assign(label="à " + spelt["label"]).to_csv(tmp / "utf8.csv", index=False)
    late = "f0,label\n" + "1.5,left\n" * 8000 + "2.5,droite à\n"  # past the 64 KiB sampled for the encoding
    (tmp / "late.csv").write_bytes(late.encode("cp1252"))
    cases["late accent"] = (tmp / "late.csv", {}, r"late.csv: column 'label' holds text that is not utf-8: name its")
    cases["UTF-8 read as cp1252"] = (
        tmp / "utf8.csv",
        {"encoding": "cp1252"},
        r"utf8.csv is UTF-8 text, not cp1252 \(its accents would read as two characters each\)",
    )
    text = (tmp / "ok.csv").read_text().splitlines()
    text[5] = text[5].replace(text[5].split(",")[1], "#DIV/0!", 1)  # a spreadsheet's error cell, row 4
    (tmp / "div.csv").write_text("\n".join(text) + "\n")
    cases["text cell"] = (tmp / "div.csv", {}, r"div.csv, row 4: feature f1 is '#DIV/0!', not a number$")
    frame.assign(f3=np.nan).to_csv(tmp / "blank_column.csv", index=False)  # read as a column of nulls
    cases["empty column"] = (tmp / "blank_column.csv", {}, r"blank_column.csv, row 0: feature f3 is nan")
    cases["a file twice"] = ([tmp / "ok.csv", tmp / "o*.csv"], {}, r"input names .*ok.csv twice: give each file once")
    cases["a file for two splits"] = (
        {"train": str(tmp / "ok.csv"), "test": str(tmp / "ok.csv")},
        {},
        r"input names .*ok.csv twice \(for train and test\)",
    )
    torch.save({"features": x.tolist(), "labels": y.tolist()}, tmp / "lists.pt")
    cases["lists pt"] = (tmp / "lists.pt", {}, r"lists.pt: 'features' is a list, not an array of numbers: save tensors")
    return cases


class _Plain:
    """Any class of the writer's: building it would import and run the writer's code."""


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_each_bad_input_is_refused_naming_the_file(tmp_path: Path) -> None:
    for name, (path, extra, message) in _bad_inputs(tmp_path).items():
        with pytest.raises(ConfigError, match=message) as caught, warnings.catch_warnings():
            warnings.simplefilter("error")  # no RuntimeWarning from a cast on the way
            prepare(path, tmp_path / f"out-{name.replace(' ', '-')}", progress_bar=False, **extra)
        assert "\n" not in str(caught.value), name
        assert not (tmp_path / f"out-{name.replace(' ', '-')}").exists(), name  # nothing half-written left


def test_data_frames_index_columns_numeric_class_names_and_odd_arrays_are_read_as_meant(tmp_path: Path) -> None:
    frame = _table(rows=200).drop(columns=["episode"])
    frame.to_csv(tmp_path / "indexed.csv")  # pandas' default: the index as a first, unnamed column
    frame.sample(frac=1, random_state=0).to_parquet(tmp_path / "indexed.parquet")  # as __index_level_0__
    frame.rename_axis("row_id").sample(frac=1, random_state=1).to_parquet(tmp_path / "named-index.parquet")
    manifest_names = [f"f{i}" for i in range(6)]
    for name in ("indexed.csv", "indexed.parquet", "named-index.parquet"):
        manifest = prepare(tmp_path / name, tmp_path / name.replace(".", "-"), progress_bar=False)
        assert manifest["feature_names"] == manifest_names, name
    # In Parquet (which has nulls of its own) a class spelt like a missing value is a class.
    regions = frame.assign(label=np.array(["EU", "NA", "SA"])[frame["label"]])
    regions.to_parquet(tmp_path / "regions.parquet")
    assert prepare(tmp_path / "regions.parquet", tmp_path / "regions", progress_bar=False)["class_names"] == [
        "EU",
        "NA",
        "SA",
    ]
    # Codes 1..3 named by the training data's class_names: matched by value, not used as indices.
    coded = frame.assign(label=frame["label"] + 1)
    coded.to_csv(tmp_path / "codes.csv", index=False)
    manifest = prepare(tmp_path / "codes.csv", tmp_path / "codes", class_names=["1", "2", "3"], progress_bar=False)
    got = _all_rows(tmp_path / "codes", "train")[1]
    plain = prepare(tmp_path / "indexed.csv", tmp_path / "plain", progress_bar=False)
    assert manifest["class_names"] == ["1", "2", "3"] and plain["class_names"] == ["0", "1", "2"]
    assert np.array_equal(got, _all_rows(tmp_path / "plain", "train")[1])  # label k+1 is class k
    with pytest.raises(ConfigError, match=r"row \d+: label 3 is not one of class_names=\['1', '2'\]"):
        prepare(tmp_path / "codes.csv", tmp_path / "two", class_names=["1", "2"], progress_bar=False)
    # Decimal columns (databases, Spark) are numbers.
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    cents = pa.array([decimal.Decimal(f"{v:.2f}") for v in frame["f0"]], type=pa.decimal128(12, 2))
    pq.write_table(pa.table({"price": cents, "label": frame["label"]}), tmp_path / "money.parquet")
    money = prepare(tmp_path / "money.parquet", tmp_path / "money", split="random", progress_bar=False)
    read = np.concatenate([_all_rows(tmp_path / "money", split)[0][:, 0] for split in ("train", "val", "test")])
    assert money["feature_names"] == ["price"]
    assert np.allclose(np.sort(read), np.sort(np.round(frame["f0"].to_numpy(np.float64), 2)), atol=1e-5)
    # A DataFrame is read as a table (its columns by name, the label detected); a dict of its columns keeps names.
    from_frame = prepare(frame, tmp_path / "frame", progress_bar=False)
    assert from_frame["feature_names"] == manifest_names and from_frame["source"]["input"] == ["<DataFrame>"]
    assert np.array_equal(_all_rows(tmp_path / "frame", "train")[1], _all_rows(tmp_path / "plain", "train")[1])
    columns = {"x": frame[manifest_names], "y": frame["label"].to_numpy()}
    assert prepare(columns, tmp_path / "columns", progress_bar=False)["feature_names"] == manifest_names
    holed = frame.copy()
    holed.loc[4, "f1"] = np.nan
    with pytest.raises(ConfigError, match=r"^input DataFrame, row 4: feature f1 is nan"):
        prepare(holed, tmp_path / "holed", progress_bar=False)
    with pytest.raises(ConfigError, match=r"^input arrays, row 4: feature #1 is nan"):
        prepare((holed[manifest_names].to_numpy(), holed["label"].to_numpy()), tmp_path / "holed", progress_bar=False)
    with pytest.raises(ConfigError, match=r"^input DataFrame: column 'f0' appears more than once"):
        prepare(frame.rename(columns={"f1": "f0"}), tmp_path / "twice", progress_bar=False)
    mixed = frame.assign(note=[1, "x"] * 100)  # objects pyarrow cannot convert: refused, or never read
    with pytest.raises(ConfigError, match=r"^input DataFrame: Could not convert 'x'.*column note"):
        prepare(mixed, tmp_path / "mixed", progress_bar=False)
    assert prepare(mixed, tmp_path / "mixed", features=["f0"], label="label", progress_bar=False)["num_features"] == 1
    with pytest.raises(ConfigError, match=r"^input DataFrame has no rows$"):
        prepare(frame.iloc[:0], tmp_path / "empty", progress_bar=False)
    per_split = prepare({"train": frame.iloc[:150], "test": frame.iloc[150:]}, tmp_path / "split", progress_bar=False)
    assert [per_split["splits"][s]["rows"] for s in ("train", "val", "test")] == [150, 0, 50]
    # Half-precision tensors and a tuple of lists are numbers too.
    x = frame.drop(columns=["label"]).to_numpy(np.float32)
    torch.save(
        {"x": torch.from_numpy(x).bfloat16(), "y": torch.from_numpy(frame["label"].to_numpy())}, tmp_path / "h.pt"
    )
    assert prepare(tmp_path / "h.pt", tmp_path / "half", progress_bar=False)["num_features"] == 6
    assert prepare((x.tolist(), frame["label"].tolist()), tmp_path / "lists", progress_bar=False)["num_classes"] == 3


def test_csv_in_another_dialect_gives_the_dataset_of_a_plain_csv(tmp_path: Path) -> None:
    frame = _table(rows=400).drop(columns=["episode"]).rename(columns={"label": "étiquette"})
    frame["étiquette"] = np.array(["à gauche", "tout droit", "à droite"])[frame["étiquette"]]
    frame.to_csv(tmp_path / "plain.csv", index=False)
    reference = prepare(tmp_path / "plain.csv", tmp_path / "plain", label="étiquette", progress_bar=False)
    dialects = {
        "cp1252": ({"sep": ";", "decimal": ",", "encoding": "cp1252"}, {"delimiter": "semicolon", "decimal": "comma"}),
        "utf-16": ({"sep": "|", "encoding": "utf-16"}, {"delimiter": "|"}),
        "tabs": ({"sep": "\t"}, {"delimiter": "tab", "encoding": "UTF8"}),
    }
    for name, (written, read) in dialects.items():
        frame.to_csv(tmp_path / f"{name}.csv", index=False, **written)
        encoding = {"encoding": written["encoding"]} if "encoding" in written else {}
        manifest = prepare(
            tmp_path / f"{name}.csv", tmp_path / name, label="étiquette", progress_bar=False, **read, **encoding
        )
        assert manifest["class_names"] == reference["class_names"] == ["tout droit", "à droite", "à gauche"], name
        assert manifest["feature_names"] == reference["feature_names"], name
        for split in ("train", "test"):
            got, expected = _all_rows(tmp_path / name, split), _all_rows(tmp_path / "plain", split)
            assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]), (name, split)


def test_compressed_csv_excels_separator_line_utf16_without_a_mark_and_number_headers_are_read(tmp_path: Path) -> None:
    frame = _table(rows=300).drop(columns=["episode"])
    frame.to_csv(tmp_path / "plain.csv", index=False)
    prepare(tmp_path / "plain.csv", tmp_path / "plain-out", progress_bar=False)
    reference = _all_rows(tmp_path / "plain-out", "train")
    frame.to_csv(tmp_path / "packed.csv.gz", index=False)
    (tmp_path / "excel.csv").write_text("sep=;\n" + frame.to_csv(index=False, sep=";"))
    (tmp_path / "wide.csv").write_bytes(frame.to_csv(index=False).encode("utf-16-le"))
    with pytest.raises(ConfigError, match=r"wide.csv has no byte-order mark for encoding=utf-16: name the byte order"):
        prepare(tmp_path / "wide.csv", tmp_path / "wide", encoding="utf-16", progress_bar=False)
    frame.to_csv(tmp_path / "LOUD.CSV.GZ", index=False)
    with pytest.raises(ConfigError, match=r"wide.csv is not utf-8 text: it reads as UTF-16 does: encoding=utf-16-le$"):
        prepare(tmp_path / "wide.csv", tmp_path / "wide", progress_bar=False)
    read_as_plain = (
        ("packed.csv.gz", {}),
        ("LOUD.CSV.GZ", {}),
        ("excel.csv", {}),
        ("wide.csv", {"encoding": "utf-16-le"}),
    )
    for name, extra in read_as_plain:
        prepare(tmp_path / name, tmp_path / f"out-{name}", progress_bar=False, **extra)
        got = _all_rows(tmp_path / f"out-{name}", "train")
        assert np.array_equal(got[0], reference[0]) and np.array_equal(got[1], reference[1]), name
    numbered = frame.set_axis([str(i) for i in range(7)], axis=1)  # pd.DataFrame(X) headers: 0..6, the label last
    numbered.to_csv(tmp_path / "numbered.csv", index=False)
    manifest = prepare(tmp_path / "numbered.csv", tmp_path / "numbered", label=6, features=[0, 1], progress_bar=False)
    assert manifest["feature_names"] == ["0", "1"] and manifest["num_classes"] == 3


def test_a_malicious_pickle_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = _Payload()
    payload.marker = marker
    torch.save({"features": torch.zeros(4, 2), "labels": payload}, tmp_path / "evil.pt")
    np.save(tmp_path / "evil.npy", np.array([payload], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "evil.npz", features=np.zeros((1, 2)), labels=np.array([payload], dtype=object))
    (tmp_path / "plain.pt").write_bytes(pickle.dumps({"features": payload}, protocol=4))  # not even a torch file
    torch.save({"features": torch.zeros(4, 2), "labels": _Plain()}, tmp_path / "object.pt")  # a class, no payload
    cases = [("evil.pt", {}), ("plain.pt", {}), ("object.pt", {}), ("evil.npz", {})]
    cases.append(("evil.npy", {"label": str(tmp_path / "evil.npy")}))
    for file, extra in cases:
        with pytest.raises(ConfigError, match="refused") as refused, warnings.catch_warnings():
            warnings.simplefilter("error")  # nor torch's warning about the pickle's protocol
            prepare(tmp_path / file, tmp_path / "out", progress_bar=False, **extra)
        # No advice to load it the unsafe way, or to allow its classes.
        assert "weights_only" not in str(refused.value) and "safe_globals" not in str(refused.value)
    assert not marker.exists()


@pytest.mark.timeout(120)
def test_command_line_prepares_and_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    _table(rows=500).to_csv(tmp_path / "good.csv", index=False)
    cases = _bad_inputs(tmp_path)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "agent_lightning.prepare", "progress_bar=false"]
    good = subprocess.run(
        [*command, f"input={tmp_path}/good.*", f"output={tmp_path / 'ds'}", "group=episode", "split=group"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert good.returncode == 0, good.stderr[-2000:]
    assert "train with: python -m agent_lightning.train data=dataset data.path=" in good.stdout + good.stderr
    assert (tmp_path / "ds" / "manifest.json").is_file() and not list(tmp_path.glob("*.log"))
    bad = subprocess.run(
        [*command, f"input={cases['nan'][0]}", f"output={tmp_path / 'bad'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    output = (bad.stdout + bad.stderr).strip()
    assert bad.returncode == 2 and "Traceback" not in output
    assert len(output.splitlines()) == 1 and "nan.csv, row 17: feature f2 is nan" in output


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_overwrite_replaces_only_a_prepared_dataset_and_never_the_input(tmp_path: Path, monkeypatch) -> None:
    inputs = tmp_path / "raw"
    inputs.mkdir()
    _table(rows=60).to_csv(inputs / "good.csv", index=False)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "notes.txt").write_text("keep me")
    monkeypatch.chdir(tmp_path / "work")
    before = _snapshot(tmp_path)
    refusals = {
        "cwd": (dict(output="."), r"output=\. is the working directory or one above it"),
        "parent": (dict(output=".."), r"output=\.\. is the working directory or one above it"),
        "holds input": (dict(output=str(inputs)), rf"output={inputs} holds the input {inputs}/good.csv"),
        "empty": (dict(output=""), r"output='' is invalid: use the directory to write the dataset to"),
        "null": (dict(output=None), r"output=None is invalid"),
    }
    for name, (extra, message) in refusals.items():
        with pytest.raises(ConfigError, match=message):
            prepare(inputs / "good.csv", overwrite=True, progress_bar=False, **extra)
        assert _snapshot(tmp_path) == before, name
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match=r"holds files but no manifest.json: overwrite=true replaces only a prepared"):
        prepare(inputs / "good.csv", other, overwrite=True, progress_bar=False)
    assert (other / "thesis.tex").read_text() == "years of work"
    labels = tmp_path / "labels"
    labels.mkdir()
    np.save(inputs / "x.npy", np.zeros((4, 2), dtype=np.float32))
    np.save(labels / "y.npy", np.zeros(4, dtype=np.int64))
    with pytest.raises(ConfigError, match=r"holds the input .*y\.npy"):  # the labels' file is an input too
        prepare(inputs / "x.npy", labels, label=str(labels / "y.npy"), overwrite=True, progress_bar=False)
    assert (labels / "y.npy").is_file()
    # A prepared dataset and an empty directory are replaced.
    for target in (tmp_path / "ds", tmp_path / "empty"):
        target.mkdir()
        if target.name == "ds":
            prepare(inputs / "good.csv", target, progress_bar=False, seed=1)
        manifest = prepare(inputs / "good.csv", target, overwrite=True, progress_bar=False, seed=2)
        assert json.loads((target / "manifest.json").read_text())["source"]["seed"] == manifest["source"]["seed"] == 2
    assert (inputs / "good.csv").is_file() and (tmp_path / "work" / "notes.txt").read_text() == "keep me"


def test_a_stop_while_preparing_or_replacing_keeps_the_old_dataset_whole(tmp_path: Path, monkeypatch) -> None:
    import signal

    import agent_lightning.prepare as preparing
    from agent_lightning.errors import StoppedBySignalError, signals_stop

    table = _table(rows=60)
    arrays = (table.filter(like="f").to_numpy(np.float32), table["label"].to_numpy())
    out = tmp_path / "data" / "out"
    prepare(arrays, out, seed=1, progress_bar=False)
    before = _snapshot(tmp_path)
    again = dict(output=out, overwrite=True, seed=2, progress_bar=False)
    # SIGTERM while the new dataset is being written: the work directory goes, the old dataset stays.
    monkeypatch.setattr(preparing, "_verify", lambda *args: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(StoppedBySignalError, match=r"^stopped by SIGTERM$"), signals_stop(lambda n: f"stopped by {n}"):
        prepare(arrays, **again)
    assert _snapshot(tmp_path) == before
    monkeypatch.undo()
    # A stop between the old dataset's move aside and the new one's move in: the old one is put back at once.
    real_replace, moves = os.replace, []

    def stopped_at_the_second_move(source: Path, target: Path) -> None:
        if Path(target).parent == out.parent:  # not the manifest's own atomic write
            moves.append(Path(target))
        if len(moves) == 2:
            raise StoppedBySignalError(signal.SIGTERM, "stopped")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", stopped_at_the_second_move)
    with pytest.raises(StoppedBySignalError):
        prepare(arrays, **again)
    monkeypatch.undo()
    aside = out.parent / f".out.replaced-{socket.gethostname()}-{os.getpid()}"
    assert moves[:2] == [aside, out] and _snapshot(tmp_path) == before
    # Killed there (no stop to put it back): the next prepare of that output restores it before anything else.
    os.replace(out, out.parent / f".out.replaced-{socket.gethostname()}-999999999")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        prepare(arrays, out, progress_bar=False)
    assert _snapshot(tmp_path) == before and [p.name for p in out.parent.iterdir()] == ["out"]
    assert json.loads((out / "manifest.json").read_text())["source"]["seed"] == 1


def test_each_bad_value_is_refused_naming_its_key(tmp_path: Path) -> None:
    _table(rows=60).to_csv(tmp_path / "good.csv", index=False)
    cases = {
        "val_fraction": ("abc", "a number in [0, 1)"),
        "test_fraction": (1.5, "a number in [0, 1)"),
        "seed": (-1, "a whole number in [0, 4294967295]"),
        "shard_rows": ("abc", "a whole number of rows >= 1"),
        "bucket_mb": (0, "a whole number of MiB >= 1"),
        "num_classes": ("abc", "a whole number in [1, 1048576]"),
        "split": ("diagonal", "random, stratified, group, column, files"),
        "input": (123, "a file, a glob, a directory"),
        "encoding": ("base64", "a text encoding, e.g. utf-8, latin-1"),
        "delimiter": ("semi", "one character or comma, semicolon, tab, pipe, space"),
        "decimal": ("..", "one character, or comma"),
    }
    for key, (value, valid) in cases.items():
        arguments = {"input": tmp_path / "good.csv", "output": tmp_path / "out", key: value}
        with pytest.raises(ConfigError, match=rf"^{key}={value!r} is invalid: use .*{re.escape(valid)}"):
            prepare(progress_bar=False, **arguments)
    with pytest.raises(ConfigError, match=r"^overwrite='yes' must be true or false$"):
        prepare(tmp_path / "good.csv", tmp_path / "out", overwrite="yes", progress_bar=False)
    with pytest.raises(ConfigError, match="output=/proc/x cannot be written"):
        prepare(tmp_path / "good.csv", "/proc/x", progress_bar=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.csv"]


@pytest.mark.timeout(120)
def test_command_line_refuses_unsafe_outputs_and_bad_values_in_one_line(tmp_path: Path) -> None:
    _table(rows=60).to_csv(tmp_path / "good.csv", index=False)
    before = _snapshot(tmp_path)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = f"output={tmp_path / 'out'}"
    cases = {
        ("output=.", "overwrite=true"): "output=. is the working directory or one above it",
        (out, "overwrite=no"): "overwrite='no' must be true or false",
        ("output=",): "output='' is invalid: use the directory to write the dataset to",
        (out, "bucket_mb=0"): "bucket_mb=0 is invalid: use a whole number of MiB >= 1",
        (): "output is required: the directory to write the dataset to",
    }
    for extra, message in cases.items():
        done = subprocess.run(
            [sys.executable, "-m", "agent_lightning.prepare", "progress_bar=false", "input=good.csv", *extra],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100,
        )  # fmt: skip
        output = (done.stdout + done.stderr).strip()
        assert done.returncode == 2 and len(output.splitlines()) == 1 and message in output, (extra, output)
        assert _snapshot(tmp_path) == before and not (tmp_path / "out").exists(), extra


def test_a_single_feature_column_may_be_named_without_a_list(tmp_path: Path) -> None:
    _table(rows=40).to_csv(tmp_path / "in.csv", index=False)
    manifest = prepare(tmp_path / "in.csv", tmp_path / "out", features="f3", progress_bar=False)
    assert manifest["num_features"] == 1 and manifest["feature_names"] == ["f3"]


def test_class_names_number_data_prepared_apart_as_the_training_data(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    moves = np.array(["up", "left", "up", "right", "left", "up"])  # no "down"
    order = ["down", "left", "right", "up"]
    manifest = prepare(
        (x, moves), tmp_path / "named", class_names=order, val_fraction=0, test_fraction=0, progress_bar=False
    )
    assert manifest["class_names"] == order and manifest["num_classes"] == 4
    labels = np.load(tmp_path / "named" / manifest["splits"]["train"]["shards"][0]["files"]["y"]["file"])
    assert sorted(labels.tolist()) == sorted(order.index(m) for m in moves)
    with pytest.raises(ConfigError, match=r"row 3: label 'right' is not one of class_names=\['down', 'left'\]"):
        prepare((x, moves), tmp_path / "short", class_names=["down", "left"], progress_bar=False)
    with pytest.raises(ConfigError, match=r"num_classes=3 but class_names names 4"):
        prepare((x, moves), tmp_path / "both", class_names=order, num_classes=3, progress_bar=False)


def test_files_are_matched_by_column_name_and_other_columns_are_refused(tmp_path: Path) -> None:
    frame = _table(rows=200).drop(columns="episode")
    frame.iloc[:100].to_csv(tmp_path / "a.csv", index=False)
    shuffled = frame.iloc[100:][["f3", "label", "f0", "f5", "f1", "f4", "f2"]]  # another export's column order
    shuffled.to_csv(tmp_path / "b.csv", index=False)
    manifest = prepare([tmp_path / "a.csv", tmp_path / "b.csv"], tmp_path / "out", val_fraction=0, test_fraction=0)
    assert manifest["feature_names"] == [f"f{i}" for i in range(6)]
    x, _ = _all_rows(tmp_path / "out", "train")
    expected = frame[[f"f{i}" for i in range(6)]].to_numpy(np.float32)
    assert sorted(map(tuple, x.tolist())) == sorted(map(tuple, expected.tolist()))  # every row whole, by name
    shuffled.rename(columns={"f3": "speed"}).to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(
        ConfigError, match=r"c.csv: its feature columns differ from the first input's \(missing \['f3'\]"
    ):
        prepare([tmp_path / "a.csv", tmp_path / "c.csv"], tmp_path / "bad", progress_bar=False)


def test_a_label_that_would_make_a_million_classes_is_refused_naming_its_row(tmp_path: Path) -> None:
    frame = _table(rows=50)
    frame.loc[7, "label"] = 10**9  # an id in the label column, or a typo
    frame.to_csv(tmp_path / "big.csv", index=False)
    with pytest.raises(ConfigError, match=r"big.csv, row 7: label 1000000000 would make 1,000,000,001 classes"):
        prepare(tmp_path / "big.csv", tmp_path / "out", progress_bar=False)
    with pytest.raises(ConfigError, match=r"num_classes=2000000 is invalid"):
        prepare(tmp_path / "big.csv", tmp_path / "out", num_classes=2_000_000, progress_bar=False)


def test_a_misspelt_split_and_a_file_as_output_are_named(tmp_path: Path) -> None:
    _table(rows=50).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(ConfigError, match=r"^input.tset is not a split: one input per split takes train, val and"):
        prepare({"train": str(tmp_path / "a.csv"), "tset": str(tmp_path / "a.csv")}, tmp_path / "o", progress_bar=False)
    (tmp_path / "a_file").write_text("not a dataset")
    with pytest.raises(ConfigError, match=r"^output=.*a_file is a file: name a directory for the dataset"):
        prepare(tmp_path / "a.csv", tmp_path / "a_file", overwrite=True, progress_bar=False)
    assert (tmp_path / "a_file").read_text() == "not a dataset"


def test_a_feature_float32_would_round_and_a_class_without_training_rows_are_named(tmp_path: Path, caplog) -> None:
    frame = _table(rows=100).drop(columns=["episode"]).assign(ts_ms=1_732_000_000_000 + np.arange(100) * 100)
    frame.to_csv(tmp_path / "times.csv", index=False)
    with caplog.at_level("WARNING", logger="agent_lightning.prepare"):
        prepare(tmp_path / "times.csv", tmp_path / "times", progress_bar=False)
        prepare(tmp_path / "times.csv", tmp_path / "kept", features=[f"f{i}" for i in range(6)], progress_bar=False)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "feature column 'ts_ms' holds whole numbers up to 1,732,000,009,900" in warned[0]
    caplog.clear()
    rare = frame.assign(label="common")
    rare.loc[7, "label"] = "rare"  # one row: with split=column it lands in test only
    rare.assign(split=np.where(np.arange(100) == 7, "test", "train")).to_csv(tmp_path / "rare.csv", index=False)
    with caplog.at_level("WARNING", logger="agent_lightning.prepare"):
        prepare(tmp_path / "rare.csv", tmp_path / "rare", split="column", features=["f0"], progress_bar=False)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "class(es) ['rare'] have val/test rows but no training rows" in warned[0]


def test_a_streams_later_part_lacking_a_class_numbers_its_names_as_the_stream(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(90, 3)).astype(np.float32)
    names = np.array(["left", "right", "up"])[np.arange(90) % 3]
    prepare({"x": x, "y": names}, tmp_path / "live", append=True, progress_bar=False)
    later = prepare({"x": x[:60], "y": np.where(names[:60] == "left", "up", names[:60])}, tmp_path / "live",
                    append=True, progress_bar=False)  # fmt: skip
    assert later["class_names"] == ["left", "right", "up"]  # not ["right", "up"]: 'up' stays class 2
    labels = np.concatenate([_all_rows(tmp_path / "live" / later["part"], s)[1] for s in ("train", "val", "test")])
    assert sorted(set(labels.tolist())) == [1, 2]
