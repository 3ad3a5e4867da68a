"""Writing a prepared dataset: checks per chunk, shuffle buckets, fixed-size `.npy` shards, statistics.

Pass 1 streams the input chunk by chunk, checks it, and appends every row to a random bucket file
of its split; pass 2 loads one bucket at a time, shuffles it and cuts it into shards. Buckets are
assigned uniformly at random, so the shards hold one uniform shuffle of each split while memory
holds at most one bucket.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from agent_lightning.data.manifest import SPLITS
from agent_lightning.data.readers import Chunk
from agent_lightning.errors import ConfigError


def check_features(chunk: Chunk, width: int | None) -> int:
    """The chunk's feature width; ConfigError naming file and row for a wrong width or a NaN/inf value."""
    features = chunk.features
    if width is not None and features.shape[1] != width:
        raise ConfigError(f"{chunk.where}: {features.shape[1]} features per row, but earlier input had {width}")
    finite = np.isfinite(features)
    if not finite.all():
        row, column = np.argwhere(~finite)[0]
        name = chunk.feature_names[column] if chunk.feature_names else f"#{column}"
        raise ConfigError(
            f"{chunk.where}, row {chunk.first_row + int(row)}: feature {name} is {features[row, column]} "
            "(features must be finite numbers)"
        )
    return features.shape[1]


# A label this large is a typo or an id, not a class: the head and the class names would not fit in memory.
MAX_CLASSES = 1 << 20


def aligned_features(chunk: Chunk, names: list[str] | None) -> np.ndarray:
    """The chunk's features in the column order `names` (the first input's); ConfigError if its columns differ.

    Files with the same columns in another order (another export's column order) are matched by name, never
    by position: a column taken by position would silently become another feature.
    """
    if not names or not chunk.feature_names or chunk.feature_names == names:
        return chunk.features
    if sorted(chunk.feature_names) != sorted(names):
        missing = [n for n in names if n not in chunk.feature_names][:5]
        extra = [n for n in chunk.feature_names if n not in names][:5]
        raise ConfigError(
            f"{chunk.where}: its feature columns differ from the first input's (missing {missing}, "
            f"extra {extra}): give inputs with the same columns, or choose them with features=[...]"
        )
    return chunk.features[:, [chunk.feature_names.index(name) for name in names]]


_INTEGER = re.compile(r"^[+-]?[0-9]+$")


def _check_no_stray_word(names: np.ndarray, chunk: Chunk, earlier: list[str]) -> None:
    """ConfigError naming the row of a word among labels that are whole numbers written as text, or the reverse.

    Such labels are codes named by their numbers (a Parquet string column); one word among them is
    most likely a stray cell, which would silently become a class of its own. `earlier`: the names of the
    chunks (and files) before, so that codes in one file and words in another are refused too.
    """
    uniques = [str(u) for u in np.unique(names)]
    seen = earlier + uniques
    if len({bool(_INTEGER.match(u)) for u in seen}) < 2:
        return
    # The kind that came first is the rule (codes sort before words within a chunk); the odd one is in this chunk.
    codes_first = bool(_INTEGER.match(seen[0]))
    odd = next(u for u in uniques if bool(_INTEGER.match(u)) != codes_first)
    example = next(u for u in seen if bool(_INTEGER.match(u)) == codes_first)
    row = int(np.flatnonzero(names == odd)[0])
    kind = "not a number but others are" if codes_first else "a number but others are words"
    raise ConfigError(
        f"{chunk.where}, row {chunk.first_row + row}: label {odd!r} is {kind} (e.g. {example!r}): "
        "correct that row, or give class_names=[...] to name every class"
    )


# CSV cells that spell a missing value (pyarrow's and pandas' own spellings), unless class_names names them.
_MISSING = {"", "NA", "N/A", "n/a", "NaN", "nan", "null", "NULL", "#N/A", "<NA>"}


def _check_no_absent_name(labels: np.ndarray, chunk: Chunk) -> None:
    """ConfigError naming the row of an in-memory name label that is None or NaN."""
    if labels.dtype.kind != "O":
        return
    absent = np.array([v is None or (isinstance(v, float) and v != v) for v in labels], dtype=bool)
    if absent.any():
        row = int(np.flatnonzero(absent)[0])
        raise ConfigError(f"{chunk.where}, row {chunk.first_row + row}: label is missing ({labels[row]!r})")


def _check_no_spelt_missing(names: np.ndarray, chunk: Chunk, class_names: list[str]) -> None:
    """ConfigError naming the row of a CSV label that spells a missing value (`NA`, `null`, ...)."""
    spelt = np.isin(names, sorted(_MISSING - set(class_names)))
    if spelt.any():
        row = int(np.flatnonzero(spelt)[0])
        raise ConfigError(
            f"{chunk.where}, row {chunk.first_row + row}: label is missing ({str(names[row])!r}): correct that row, "
            "or name it in class_names=[...] if it is a class"
        )


def _name_order(names: list[str]) -> list[str]:
    """Names in class order: by value when every one is a whole number written as text ("2" before "10")."""
    if names and all(_INTEGER.match(name) for name in names):
        return sorted(names, key=int)
    return sorted(names)


class LabelEncoder:
    """Labels to class indices: whole numbers >= 0 kept; names (strings) numbered in sorted order at the end.

    Names that are all whole numbers written as text are sorted by value ("2" before "10").

    `class_names` fixes the classes and their order instead: names are numbered by that list (so data
    prepared apart, e.g. a held-out file that lacks a class, numbers them as the training data does), and
    whole-number labels get those names.
    """

    def __init__(self, num_classes: int | None = None, class_names: list[str] | None = None) -> None:
        self.fixed = list(class_names) if class_names else None
        self.asked_classes = num_classes
        self.num_classes = len(self.fixed) if self.fixed else num_classes
        # Class names that are all whole numbers name codes: number labels are matched to them by value
        # (class_names=[1,2,3] for labels 1..3), not taken as indices into the list.
        codes = self.fixed is not None and all(_INTEGER.match(name) for name in self.fixed)
        self.code_index = {int(name): i for i, name in enumerate(self.fixed)} if codes and self.fixed else None
        self.names: dict[str, int] = {}  # name -> order of first appearance
        self.numeric: bool | None = None
        self.max_label = -1

    def encode(self, chunk: Chunk) -> np.ndarray:
        """int64 codes of the chunk's labels (names: by first appearance, remapped by `finish`)."""
        labels = chunk.labels
        numeric = labels.dtype.kind in "iufb"
        if self.numeric is None:
            self.numeric = numeric
        elif self.numeric != numeric:
            kind, before = ("a class number", "names") if numeric else ("a name", "class numbers")
            raise ConfigError(
                f"{chunk.where}, row {chunk.first_row}: label {str(labels[0])!r} is {kind} but the "
                f"labels before it are {before}: give one kind of label (or class_names=[...] to name them all)"
            )
        if not numeric:
            if chunk.in_memory:  # a table refuses a null label as it reads it; arrays may hold None or NaN
                _check_no_absent_name(labels, chunk)
            names = np.char.strip(labels.astype(str))
            if chunk.from_text:  # CSV has no null for text: `NA` and its kin are how it says "missing"
                _check_no_spelt_missing(names, chunk, self.fixed or [])
            if self.fixed is None:
                _check_no_stray_word(names, chunk, list(self.names))
            return self._encode_names(names, chunk)
        bad = ~np.isfinite(labels) if labels.dtype.kind == "f" else np.zeros(len(labels), dtype=bool)
        if labels.dtype.kind == "f":
            bad |= np.where(bad, False, labels != np.round(np.nan_to_num(labels)))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ConfigError(f"{chunk.where}, row {chunk.first_row + row}: label {labels[row]} is not a whole number")
        codes = labels.astype(np.int64)
        if self.code_index is not None:
            return self._encode_codes(codes, chunk)
        if len(codes) and codes.max() >= MAX_CLASSES and not self.num_classes:
            row = int(codes.argmax())
            raise ConfigError(
                f"{chunk.where}, row {chunk.first_row + row}: label {codes[row]} would make "
                f"{codes[row] + 1:,} classes (at most {MAX_CLASSES:,}): is it the label column? (label=<column>)"
            )
        limit = self.num_classes
        outside = (codes < 0) | (codes >= limit) if limit else codes < 0
        if outside.any():
            row = int(np.flatnonzero(outside)[0])
            valid = f"0..{limit - 1} (num_classes={limit})" if limit else ">= 0"
            raise ConfigError(
                f"{chunk.where}, row {chunk.first_row + row}: label {codes[row]} is out of range: use {valid}"
            )
        if len(codes):
            self.max_label = max(self.max_label, int(codes.max()))
        return codes

    def _encode_codes(self, codes: np.ndarray, chunk: Chunk) -> np.ndarray:
        assert self.code_index is not None
        uniques, inverse = np.unique(codes, return_inverse=True)
        unknown = [int(u) for u in uniques if int(u) not in self.code_index]
        if unknown:
            row = int(np.flatnonzero(codes == unknown[0])[0])
            raise ConfigError(
                f"{chunk.where}, row {chunk.first_row + row}: label {unknown[0]} is not one of class_names={self.fixed}"
            )
        return np.asarray([self.code_index[int(u)] for u in uniques], dtype=np.int64)[inverse]

    def _encode_names(self, names: np.ndarray, chunk: Chunk) -> np.ndarray:
        uniques, inverse = np.unique(names, return_inverse=True)
        if self.fixed is not None:
            unknown = [str(u) for u in uniques if u not in self.fixed]
            if unknown:
                row = int(np.flatnonzero(names == unknown[0])[0])
                raise ConfigError(
                    f"{chunk.where}, row {chunk.first_row + row}: label {unknown[0]!r} is not one of "
                    f"class_names={self.fixed}"
                )
            return np.asarray([self.fixed.index(str(u)) for u in uniques], dtype=np.int64)[inverse]
        for name in uniques:
            self.names.setdefault(str(name), len(self.names))
        return np.asarray([self.names[str(u)] for u in uniques], dtype=np.int64)[inverse]

    def finish(self) -> tuple[np.ndarray | None, list[str]]:
        """(remap from first-appearance codes to final indices or None, class names)."""
        if self.fixed is not None:
            return None, self.fixed  # names were numbered by the list itself
        if self.numeric is False:
            ordered = _name_order(list(self.names))
            if self.asked_classes is not None and self.asked_classes != len(ordered):
                raise ConfigError(
                    f"num_classes={self.asked_classes} but the labels name {len(ordered)} classes {ordered[:8]}: "
                    "for named labels give class_names=[...] (every class, in order) instead"
                )
            remap = np.empty(len(ordered), dtype=np.int64)
            for index, name in enumerate(ordered):
                remap[self.names[name]] = index
            return remap, ordered
        count = self.num_classes or self.max_label + 1
        return None, [str(i) for i in range(count)]


class RunningStats:
    """Per-feature mean, std, min and max in float64, merged chunk by chunk (Chan et al.)."""

    def __init__(self, width: int) -> None:
        self.count = 0
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)
        self.min = np.full(width, np.inf)
        self.max = np.full(width, -np.inf)

    def update(self, features: np.ndarray, rows_at_once: int = 65_536) -> None:
        """Fold in rows, a slice at a time (the float64 copy of a whole bucket would double its memory)."""
        for lo in range(0, len(features), rows_at_once):
            self._update(features[lo : lo + rows_at_once])

    def _update(self, features: np.ndarray) -> None:
        x = features.astype(np.float64)
        n, mean = len(x), x.mean(axis=0)
        m2 = ((x - mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta**2 * self.count * n / total
        self.count = total
        self.min = np.minimum(self.min, x.min(axis=0))
        self.max = np.maximum(self.max, x.max(axis=0))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready statistics (population std)."""
        std = np.sqrt(self.m2 / self.count) if self.count else np.zeros_like(self.m2)
        finite = self.count > 0
        return {
            "split": "train",
            "rows": self.count,
            "mean": self.mean.tolist(),
            "std": std.tolist(),
            "min": self.min.tolist() if finite else [],
            "max": self.max.tolist() if finite else [],
        }


class _HashingFile:
    """A write-only file that hashes and counts what goes through it."""

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.digest, self.size = file, hashlib.sha256(), 0

    def write(self, data: bytes | memoryview) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.file.write(data)


def write_npy(path: Path, array: np.ndarray) -> dict[str, Any]:
    """Save one `.npy` array; return its manifest entry (file name, bytes, SHA-256)."""
    with open(path, "wb") as raw:
        out = _HashingFile(raw)
        np.lib.format.write_array(out, np.ascontiguousarray(array), allow_pickle=False)  # type: ignore[arg-type]
    return {"file": path.name, "bytes": out.size, "sha256": out.digest.hexdigest()}


class ShardWriter:
    """Cuts a stream of rows of one split into `.npy` shards of exactly `shard_rows` rows (the last may be short)."""

    def __init__(self, directory: Path, split: str, shard_rows: int, width: int, first_index: int = 0) -> None:
        self.directory, self.split, self.shard_rows, self.width = directory, split, shard_rows, width
        self.index = first_index
        self.shards: list[dict[str, Any]] = []
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        self._pending_rows = 0

    def add(self, features: np.ndarray, labels: np.ndarray, groups: np.ndarray | None) -> None:
        """Queue rows; full shards are written as soon as they fill."""
        self._pending.append((features, labels, groups))
        self._pending_rows += len(labels)
        while self._pending_rows >= self.shard_rows:
            self._flush(self.shard_rows)

    def close(self) -> list[dict[str, Any]]:
        """Write the remainder; return the manifest entries of every shard written."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        return self.shards

    def _flush(self, rows: int) -> None:
        x = np.concatenate([p[0] for p in self._pending])
        y = np.concatenate([p[1] for p in self._pending])
        g = np.concatenate([p[2] for p in self._pending]) if self._pending[0][2] is not None else None
        stem = f"{self.split}-{self.index:05d}"
        files = {"x": write_npy(self.directory / f"{stem}.x.npy", x[:rows])}
        files["y"] = write_npy(self.directory / f"{stem}.y.npy", y[:rows])
        if g is not None:
            files["g"] = write_npy(self.directory / f"{stem}.g.npy", g[:rows])
        self.shards.append({"rows": rows, "files": files})
        self.index += 1
        rest = (x[rows:], y[rows:], g[rows:] if g is not None else None)
        self._pending = [rest] if len(rest[1]) else []
        self._pending_rows = len(rest[1])


class BucketSpill:
    """Pass 1: rows appended to per-split random bucket files (raw float32 / int64), one open file each."""

    def __init__(self, directory: Path, buckets: int, width: int, has_groups: bool, seed: int) -> None:
        self.directory, self.buckets, self.width, self.has_groups = directory, buckets, width, has_groups
        self.rng = np.random.default_rng([seed, 2])
        self._files: dict[tuple[int, int, str], BinaryIO] = {}
        self.rows = np.zeros((len(SPLITS), buckets), dtype=np.int64)

    def add(self, splits: np.ndarray, features: np.ndarray, labels: np.ndarray, groups: np.ndarray | None) -> None:
        """Append each row to a uniformly random bucket of its split."""
        key = splits.astype(np.int64) * self.buckets + self.rng.integers(0, self.buckets, len(splits))
        order = np.argsort(key, kind="stable")
        counts = np.bincount(key, minlength=len(SPLITS) * self.buckets)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        x, y = features[order], labels[order]
        g = groups[order] if groups is not None else None
        for k in np.flatnonzero(counts):
            split, bucket = divmod(int(k), self.buckets)
            lo, hi = bounds[k], bounds[k + 1]
            self._file(split, bucket, "x").write(x[lo:hi].tobytes())
            self._file(split, bucket, "y").write(y[lo:hi].tobytes())
            if g is not None:
                self._file(split, bucket, "g").write(g[lo:hi].tobytes())
            self.rows[split, bucket] += hi - lo

    def _file(self, split: int, bucket: int, kind: str) -> BinaryIO:
        key = (split, bucket, kind)
        if key not in self._files:
            self._files[key] = open(self.directory / f"bucket-{split}-{bucket}.{kind}", "wb")  # noqa: SIM115
        return self._files[key]

    def close(self) -> None:
        """Flush and close every bucket file (again: nothing)."""
        for file in self._files.values():
            file.close()
        self._files.clear()

    def read(self, split: int, bucket: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """One bucket's rows, then its files are deleted."""
        if not self.rows[split, bucket]:  # a small split leaves buckets empty: still with (no) group ids
            groups = np.empty(0, np.int64) if self.has_groups else None
            return np.empty((0, self.width), np.float32), np.empty(0, np.int64), groups
        stem = self.directory / f"bucket-{split}-{bucket}"
        x = np.fromfile(f"{stem}.x", dtype=np.float32).reshape(-1, self.width)
        y = np.fromfile(f"{stem}.y", dtype=np.int64)
        g = np.fromfile(f"{stem}.g", dtype=np.int64) if self.has_groups else None
        for kind in ("x", "y", "g"):
            Path(f"{stem}.{kind}").unlink(missing_ok=True)
        return x, y, g
