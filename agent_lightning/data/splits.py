"""Which split each row goes to, decided one chunk at a time (the input is never held whole).

- `random`: seeded fractions, row by row.
- `stratified`: the same fractions within every class (a seeded, shuffled pattern per class).
- `group`: a seeded hash of the group id, so all rows of a group (say an `episode`) share a split.
- `column`: the input's own split column (`train` / `val` / `test`).
- `files`: separate inputs per split (the caller gives each chunk its split).
"""

from __future__ import annotations

import hashlib
from fractions import Fraction
from typing import Any

import numpy as np

from agent_lightning.data.manifest import SPLITS
from agent_lightning.data.readers import Chunk
from agent_lightning.errors import ConfigError

RULES = ("random", "stratified", "group", "column", "files")
SPLIT_NAMES = {"train": 0, "val": 1, "valid": 1, "validation": 1, "test": 2}


def group_codes(values: np.ndarray) -> np.ndarray:
    """Group ids as int64: whole numbers kept, anything else by a stable 63-bit hash of its text."""
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.all(values == np.round(values)):
        return values.astype(np.int64)
    uniques, inverse = np.unique(values.astype(str), return_inverse=True)
    hashed = [int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8).digest(), "little") >> 1 for u in uniques]
    return np.asarray(hashed, dtype=np.int64)[inverse]


class SplitAssigner:
    """Assigns split codes (0 train, 1 val, 2 test) to the rows of each chunk, reproducibly from `seed`."""

    def __init__(self, rule: str, val_fraction: float, test_fraction: float, seed: int) -> None:
        if rule not in RULES:
            raise ConfigError(f"split={rule!r} is not one of {', '.join(RULES)}")
        for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{key}={value} must be in [0, 1)")
        if val_fraction + test_fraction >= 1.0:
            raise ConfigError(f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves no training rows")
        self.rule = rule
        self.fractions = (1.0 - val_fraction - test_fraction, val_fraction, test_fraction)
        self.seed = seed
        self._chunks = 0
        self._patterns: dict[Any, tuple[np.ndarray, int]] = {}
        self._pattern_rng = np.random.default_rng([seed, 1])
        exact = [Fraction(f).limit_denominator(1000) for f in (val_fraction, test_fraction)]
        self._cycle = int(np.lcm.reduce([f.denominator for f in exact]))
        self._cycle_counts = [int(f * self._cycle) for f in exact]

    def assign(self, chunk: Chunk, file_split: str | None = None) -> np.ndarray:
        """int8 split code per row of `chunk`."""
        n = len(chunk)
        self._chunks += 1
        if file_split is not None:
            return np.full(n, SPLITS.index(file_split), dtype=np.int8)
        if self.rule == "random":
            uniform = np.random.default_rng([self.seed, 0, self._chunks]).random(n)
            return self._by_fraction(uniform)
        if self.rule == "group":
            if chunk.groups is None:
                raise ConfigError("split=group needs group=<column or array name> (e.g. group=episode)")
            return self._by_fraction(_seeded_uniform(group_codes(chunk.groups), self.seed))
        if self.rule == "column":
            return self._from_column(chunk)
        if self.rule == "stratified":
            return self._stratified(chunk.labels)
        raise ConfigError("split=files needs input.train=... (and input.val / input.test) instead of one input")

    def _by_fraction(self, uniform: np.ndarray) -> np.ndarray:
        train, val, _ = self.fractions
        return np.where(uniform < train, 0, np.where(uniform < train + val, 1, 2)).astype(np.int8)

    def _from_column(self, chunk: Chunk) -> np.ndarray:
        if chunk.splits is None:
            raise ConfigError("split=column needs split_column=<the column naming each row's split>")
        names = np.char.lower(chunk.splits.astype(str))
        codes = np.full(len(names), -1, dtype=np.int8)
        for name, code in SPLIT_NAMES.items():
            codes[names == name] = code
        if (codes < 0).any():
            row = int(np.flatnonzero(codes < 0)[0])
            raise ConfigError(
                f"{chunk.where}, row {chunk.first_row + row}: split {chunk.splits[row]!r} is not one of "
                "train, val, test"
            )
        return codes

    def _stratified(self, labels: np.ndarray) -> np.ndarray:
        # Each class walks its own shuffled cycle holding exactly the fractions: any prefix of a
        # class's rows is split within one cycle of the exact proportions.
        codes = np.empty(len(labels), dtype=np.int8)
        uniques, inverse = np.unique(labels, return_inverse=True)
        for index, value in enumerate(uniques):
            rows = np.flatnonzero(inverse == index)
            key = value.item() if hasattr(value, "item") else value
            pattern, position = self._patterns.get(key, (self._new_pattern(), 0))
            taken, needed = [], len(rows)
            while needed:
                if position >= len(pattern):
                    pattern, position = self._new_pattern(), 0
                take = min(len(pattern) - position, needed)
                taken.append(pattern[position : position + take])
                position, needed = position + take, needed - take
            codes[rows] = np.concatenate(taken)
            self._patterns[key] = (pattern, position)
        return codes

    def _new_pattern(self) -> np.ndarray:
        val, test = self._cycle_counts
        pattern = np.array([1] * val + [2] * test + [0] * (self._cycle - val - test), dtype=np.int8)
        return self._pattern_rng.permutation(pattern)


def _seeded_uniform(codes: np.ndarray, seed: int) -> np.ndarray:
    # splitmix64 of (group id + seed): the same group always lands in the same split for a seed.
    with np.errstate(over="ignore"):
        z = codes.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
