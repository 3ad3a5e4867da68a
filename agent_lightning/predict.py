"""Act on a file of observations: `python -m agent_lightning.predict ckpt_path=... input=new.csv output=actions.csv`.

Reads CSV/TSV or Parquet in chunks (any size) and picks the model's feature columns by the names its
training data had, in any order (a checkpoint or export keeps them; `features=` names them for one
that does not). Writes one row per input row, in input order: the input's other columns (`keep=`
chooses), `predicted_action` (the class name where the training data named its classes, else the
class index) and, with `probabilities=true`, one `prob_<class>` column per action. The output is
written under a temporary name and renamed into place when complete. From Python:
`predict("last.ckpt", "new.parquet", "actions.parquet")`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from agent_lightning.arguments import Rule, boolean, check_arguments, column_name, path, whole
from agent_lightning.config import hydra_command
from agent_lightning.data.csv_dialect import CSV_RULES, csv_dialect
from agent_lightning.data.readers import (
    INSTALL_HINT,
    TABLE_SUFFIXES,
    ReadOptions,
    check_feature_columns,
    check_unique_columns,
    expand_inputs,
    feature_matrix,
    is_number_type,
    kind_of,
    table_batches,
)
from agent_lightning.errors import ConfigError, signals_stop
from agent_lightning.replacing import replace_file

log = logging.getLogger("agent_lightning.predict")
ACTION_COLUMN = "predicted_action"
OUTPUT_SUFFIXES = (".csv", ".parquet", ".pq")


def _inputs(value: Any) -> bool:
    return path(value) or (isinstance(value, list | tuple) and bool(value) and all(path(v) for v in value))


def _device(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"cpu|cuda(:\d+)?|mps", value) is not None


def _names(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return all(isinstance(v, str) and v for v in value)
    return value is None


RULES: tuple[Rule, ...] = (
    Rule("ckpt_path", path, "a checkpoint (file or sharded directory) or an export (.pt, .safetensors, .onnx, .ts)"),
    Rule("input", _inputs, "a CSV/TSV or Parquet file, a glob, a directory or a list of them"),
    Rule("output", path, "the file to write, .csv or .parquet, e.g. output=actions.csv"),
    Rule("keep", _names, "a list of input columns to copy beside the action, e.g. keep=[episode,step] (or null: all)"),
    Rule("features", _names, "a list of feature columns, e.g. features=[f0,f1] (or null: the model's own)"),
    Rule("batch_rows", whole(1), "a whole number of rows >= 1"),
    Rule("device", _device, "cpu, cuda, cuda:<index> or mps"),
    *CSV_RULES,
    *(Rule(key, boolean, "true or false") for key in ("probabilities", "overwrite", "progress_bar")),
)


@dataclass
class Prediction:
    """What `predict` wrote: the output file, its rows and how often each action was chosen."""

    output: Path
    rows: int
    files: int
    actions: dict[str, int]


def predict(
    ckpt_path: str | Path,
    input: str | Path | Sequence[str | Path],
    output: str | Path,
    keep: Sequence[str] | None = None,
    features: Sequence[str] | None = None,
    probabilities: bool = False,
    batch_rows: int = 65_536,
    device: str = "cpu",
    delimiter: str | None = None,
    encoding: str = "utf-8",
    decimal: str = ".",
    overwrite: bool = False,
    progress_bar: bool = True,
) -> Prediction:
    """Write the policy's greedy action for every row of `input` to `output`; ConfigError on any bad input."""
    keep, features = _name_list(keep), _name_list(features)
    check_arguments(locals(), RULES)
    from agent_lightning.agents.policy import Policy

    files = expand_inputs(input)
    for file in files:
        if kind_of(file) not in TABLE_SUFFIXES:
            raise ConfigError(f"input file {file}: predict reads tables ({', '.join(TABLE_SUFFIXES)}), not arrays")
    output = Path(output)
    _check_output(output, files, overwrite)
    try:
        import pyarrow as pa
    except ImportError:
        raise ConfigError(f"predict reads and writes CSV or Parquet with pyarrow: {INSTALL_HINT}") from None
    policy = Policy.load(ckpt_path, device)
    named = _model_columns(policy, features)
    delimiter, decimal = csv_dialect(delimiter, decimal)
    options = ReadOptions(chunk_rows=int(batch_rows), delimiter=delimiter, encoding=encoding, decimal=decimal)
    names = policy.class_names or [str(i) for i in range(policy.n_actions)]
    reserved = [ACTION_COLUMN, *(f"prob_{name}" for name in names if probabilities)]
    # Every file's columns first: the features of a model that names none, and one type per kept column.
    plans = [_plan(file, options, named, keep, policy.obs_dim, reserved) for file in files]
    kept_types = _kept_schema([plan for plan in plans if plan is not None], output.suffix.lower() == ".csv")
    staged = output.with_name(f".{output.name}.tmp{output.suffix}")  # a stopped run never replaces a good file
    output.parent.mkdir(parents=True, exist_ok=True)
    writer = _Writer(staged)
    counts = np.zeros(policy.n_actions, dtype=np.int64)
    rows = 0
    bar_off = None if progress_bar else True  # None: no bar where stderr is no terminal (a log gets no redraws)
    try:
        with tqdm(desc="predict", unit=" rows", disable=bar_off, file=sys.stderr) as bar:
            for file, plan in zip(files, plans, strict=True):
                if plan is None:  # no rows
                    continue
                columns, kept, _ = plan
                first_row = 0
                for batch in table_batches(file, replace(options, float_columns=columns)):
                    actions, probs = _act(policy, feature_matrix(batch, columns), file, first_row, columns)
                    counts += np.bincount(actions, minlength=policy.n_actions)
                    kept_part = batch.select(kept).cast(kept_types) if kept else batch.select([])
                    writer.write(_output_batch(kept_part, actions, probs, policy.class_names, probabilities))
                    first_row += batch.num_rows
                    bar.update(batch.num_rows)
                rows += first_row
        writer.close()
        if writer.empty:
            raise ConfigError(f"input {', '.join(str(f) for f in files)} has no rows to act on")
        replace_file(staged, output)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:  # a kept value the output type cannot take
        raise ConfigError(f"{output}: a kept column cannot be written: {str(err).splitlines()[0]}") from None
    finally:
        writer.close()
        staged.unlink(missing_ok=True)
    return Prediction(output, rows, len(files), {names[a]: int(n) for a, n in enumerate(counts) if n})


def _name_list(value: Any) -> Any:
    """Column names as a list: one name is a list of one (`keep=episode`, not its letters), a number its text."""
    if value is None:
        return None
    return [column_name(name) for name in ([value] if isinstance(value, str | int) else value)]


def _model_columns(policy: Any, features: list[str] | None) -> list[str] | None:
    """The feature columns to read: `features=`, else the model's own names (None where it has none)."""
    if features is None:
        return policy.feature_names
    if len(features) != policy.obs_dim:
        raise ConfigError(f"features names {len(features)} columns but the model takes {policy.obs_dim}")
    own = policy.feature_names
    if own and sorted(features) == sorted(own) and features != own:  # its own names, in another order
        raise ConfigError(
            f"features lists the model's columns in another order: it reads them as {own} (leave features unset: "
            "they are found by name)"
        )
    return features


def _plan(
    file: Path, options: ReadOptions, named: list[str] | None, keep: list[str] | None, obs_dim: int, reserved: list[str]
) -> tuple[list[str], list[str], Any] | None:
    """(feature columns, kept columns, their types) of a file, from its first rows; None for a file without rows.

    Read with no column made float, so that a kept column keeps its own type (an integer id stays exact).
    """
    first = next(iter(table_batches(file, replace(options, float_columns=[]))), None)
    if first is None:
        return None
    columns, kept = _columns(first, file, named, keep, obs_dim, options.decimal, reserved)
    return columns, kept, first.select(kept).schema


def _kept_schema(plans: list[tuple[list[str], list[str], Any]], csv_output: bool) -> Any:
    """One type per kept column across the files (an int column in one file and a float one in another: float)."""
    import pyarrow as pa

    if not plans:
        return pa.schema([])
    names = plans[0][1]
    for _, kept, _ in plans[1:]:
        if kept != names:
            raise ConfigError(
                f"the inputs' other columns differ ({kept} after {names}): give files with the same columns, or "
                "keep=[...] the ones they share"
            )
    try:
        schema = pa.unify_schemas([types for _, _, types in plans], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise ConfigError(f"a kept column has types that do not mix across the inputs: {err}") from None
    nested = [f.name for f in schema if pa.types.is_nested(f.type)]
    if csv_output and nested:
        raise ConfigError(
            f"kept column {nested[0]!r} holds {schema.field(nested[0]).type}, which CSV cannot hold: write .parquet, "
            "or leave it out with keep=[...]"
        )
    return schema


def _columns(
    batch: Any,
    file: Path,
    features: list[str] | None,
    keep: Sequence[str] | None,
    obs_dim: int,
    decimal: str,
    reserved: Sequence[str],
) -> tuple[list[str], list[str]]:
    """(feature columns, kept columns) of a file, from its first batch; `reserved`: the output's own columns."""
    names = batch.schema.names
    check_unique_columns(names, f"input file {file}")
    if features is None:  # a model whose training data named no columns: every numeric column not kept, in order
        features = [n for n in names if n not in (keep or ()) and is_number_type(batch.schema.field(n).type)]
        if len(features) != obs_dim:
            raise ConfigError(
                f"input file {file}: the model does not name its {obs_dim} feature columns and this file has "
                f"{len(features)} numeric ones {features}: name them with features=[...]"
            )
    missing = [n for n in features if n not in names]
    if missing:
        raise ConfigError(
            f"input file {file} lacks the feature column {missing[0]!r} the model was trained on; its columns are "
            f"{names}"
        )
    check_feature_columns(batch, features, f"input file {file}", decimal)
    kept = [n for n in names if n not in features] if keep is None else list(keep)
    for name in kept:
        if name not in names:
            raise ConfigError(f"keep names {name!r}, which input file {file} lacks; its columns are {names}")
    taken = next((n for n in kept if n in reserved), None)
    if taken is not None:
        raise ConfigError(
            f"input file {file} has a column {taken!r}, a name the output gives its own: leave it out, "
            "e.g. keep=[...] without it"
        )
    return list(features), kept


def _check_output(output: Path, inputs: list[Path], overwrite: bool) -> None:
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigError(f"output={output}: write .csv or .parquet, e.g. output=actions.csv")
    if output.is_dir():
        raise ConfigError(f"output={output} is a directory: give a file name, e.g. output={output / 'actions.csv'}")
    if any(output.resolve() == f.resolve() for f in inputs):
        raise ConfigError(f"output={output} is one of the inputs: write the actions to another file")
    if output.exists() and not overwrite:
        raise ConfigError(f"output={output} exists: choose another or set overwrite=true")


def _act(policy: Any, x: np.ndarray, file: Path, first_row: int, columns: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The greedy actions and action probabilities of a chunk; ConfigError naming a row that is not finite."""
    finite = np.isfinite(x)
    if not finite.all():
        row, column = np.argwhere(~finite)[0]
        raise ConfigError(
            f"input file {file}, row {first_row + int(row)}: feature {columns[column]} is {x[row, column]} "
            "(an empty or NA cell reads as nan; the policy acts on finite numbers only)"
        )
    probs = policy.action_probs(x)
    return probs.argmax(axis=1).astype(np.int64), probs


def _output_batch(
    kept: Any, actions: np.ndarray, probs: np.ndarray, class_names: list[str] | None, probabilities: bool
) -> Any:
    import pyarrow as pa

    names = class_names or [str(i) for i in range(probs.shape[1])]
    action = pa.array(class_names).take(pa.array(actions)) if class_names else pa.array(actions)
    arrays, fields = [*kept.columns, action], [*kept.schema.names, ACTION_COLUMN]
    if probabilities:
        arrays += [pa.array(probs[:, j]) for j in range(probs.shape[1])]
        fields += [f"prob_{name}" for name in names]
    return pa.RecordBatch.from_arrays(arrays, names=fields)


class _Writer:
    """Streams record batches (all of one schema, the first's) to a CSV or Parquet file."""

    def __init__(self, path: Path) -> None:
        self.path, self._writer = path, None
        self.empty = True

    def write(self, batch: Any) -> None:
        """Append `batch` (the first one opens the file with its columns)."""
        if batch.num_rows == 0:
            return
        if self._writer is None:
            if self.path.suffix.lower() == ".csv":
                from pyarrow import csv

                self._writer = csv.CSVWriter(self.path, batch.schema)
            else:
                from pyarrow import parquet

                self._writer = parquet.ParquetWriter(self.path, batch.schema)
        self._writer.write_batch(batch)
        self.empty = False

    def close(self) -> None:
        """Finish the file (once)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


@hydra_command("predict")
def main(cfg: DictConfig) -> None:
    """Command line: write a checkpoint's actions for every row of `input` to `output`; bad input exits 2."""
    for key, example in (("ckpt_path", "outputs/<run>/checkpoints/last.ckpt"), ("input", "new.csv"),
                         ("output", "actions.csv")):  # fmt: skip
        if OmegaConf.is_missing(cfg, key):
            raise ConfigError(f"{key} is required, e.g. {key}={example}")
    options = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(options, dict)
    with signals_stop(lambda name: f"predict stopped by {name} before it finished: {cfg.output} is as it was"):
        done = predict(**options)
    actions = ", ".join(f"{name} {count:,}" for name, count in done.actions.items())
    log.info("wrote %s: %s rows from %d file(s); %s: %s", done.output, f"{done.rows:,}", done.files,
             ACTION_COLUMN, actions)  # fmt: skip


if __name__ == "__main__":
    main()
