"""Prepare a dataset once: `python -m agent_lightning.prepare input=... output=... [label=... split=...]`.

Reads CSV, Parquet, `.npy`/`.npz`, `.pt` or in-memory arrays as a stream, checks every row, assigns
splits, shuffles and writes fixed-size memory-mappable `.npy` shards with a `manifest.json`; then
`python -m agent_lightning.train data=dataset data.path=<output>` trains on it. From Python:
`prepare(input="raw/*.csv", output="data/mine", label="label")`. With `append=true`, `output` is a
stream directory and the input becomes its next part (see `agent_lightning.data.stream_dir`).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from agent_lightning.arguments import (
    SEED,
    SEED_VALID,
    Rule,
    boolean,
    check_arguments,
    choice,
    column_name,
    fraction,
    name_or_none,
    path,
    whole,
)
from agent_lightning.config import hydra_command
from agent_lightning.data.csv_dialect import CSV_RULES, csv_dialect
from agent_lightning.data.manifest import FORMAT, MANIFEST, SPLITS, VERSION, fingerprint, sha256_of, write_manifest
from agent_lightning.data.readers import ReadOptions, expand_inputs, input_bytes, is_data_frame, read_chunks
from agent_lightning.data.splits import RULES as SPLIT_RULES
from agent_lightning.data.splits import SplitAssigner, group_codes
from agent_lightning.data.stream_dir import (
    END,
    end_marker,
    first_manifest,
    is_stream,
    publish_part,
    stream_num_classes,
    write_end,
)
from agent_lightning.data.writer import (
    MAX_CLASSES,
    BucketSpill,
    LabelEncoder,
    RunningStats,
    ShardWriter,
    aligned_features,
    check_features,
)
from agent_lightning.errors import ConfigError, signals_stop
from agent_lightning.replacing import replace_directory, restore_aside

log = logging.getLogger("agent_lightning.prepare")
WORK = ".prepare-"  # `.<output>.prepare-<host>-<pid>`: the dataset being written
ASIDE = ".replaced-"  # `.<output>.replaced-<host>-<pid>`: the old dataset while an overwrite renames the new one in
Arrays = Mapping[str, Any] | tuple


class EmptyTrainSplitError(ConfigError):
    """No row went to the train split (callers that know why, e.g. `collect`'s few episodes, say it their way)."""


def _input(value: Any) -> bool:
    if isinstance(value, list):
        return bool(value) and all(path(v) for v in value)
    return path(value) or isinstance(value, Mapping | tuple) or is_data_frame(value)


def _class_names(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, list | tuple) or not value:
        return False
    names = [str(v) for v in value]
    return all(isinstance(v, str | int) and str(v) for v in value) and len(set(names)) == len(names)


def _features(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return bool(value) and all(isinstance(v, str) and v for v in value)
    return name_or_none(value)


RULES: tuple[Rule, ...] = (
    Rule("input", _input, "a file, a glob, a directory or a list of them (or input.train=... per split)"),
    Rule("output", path, "the directory to write the dataset to, e.g. output=data/mine"),
    Rule("label", name_or_none, "a column or array name (or null: detected)"),
    Rule("group", name_or_none, "a column or array name (or null)"),
    Rule("split", choice(*SPLIT_RULES), ", ".join(SPLIT_RULES)),
    Rule("val_fraction", fraction, "a number in [0, 1)"),
    Rule("test_fraction", fraction, "a number in [0, 1)"),
    Rule("split_column", name_or_none, "a column or array name"),
    Rule("features", _features, "a column name or a list of them, e.g. features=[f0,f1] (or null: every column)"),
    Rule("features_key", name_or_none, "an array name (or null: detected)"),
    *CSV_RULES,
    Rule(
        "num_classes",
        whole(1, MAX_CLASSES + 1, also=(None,)),
        f"a whole number in [1, {MAX_CLASSES}] (or null: from the labels)",
    ),
    Rule("class_names", _class_names, "a list of distinct names, e.g. class_names=[down,left,right,up] (or null)"),
    Rule("seed", SEED, SEED_VALID),
    Rule("shard_rows", whole(1), "a whole number of rows >= 1"),
    Rule("chunk_rows", whole(1), "a whole number of rows >= 1"),
    Rule("bucket_mb", whole(1), "a whole number of MiB >= 1"),
    *(Rule(key, boolean, "true or false") for key in ("overwrite", "progress_bar", "append", "end_stream")),
)


def _sources(input: Any) -> list[tuple[Path | Arrays, str | None]]:
    """(input, its fixed split or None) pairs; a mapping with split names as keys means one input per split."""
    files_per_split = isinstance(input, Mapping) and any(
        key in SPLITS and isinstance(spec, str | Path | list) for key, spec in input.items()
    )
    if files_per_split and not set(input) <= set(SPLITS):  # e.g. `tset:`: its files would be read as arrays
        unknown = sorted(str(key) for key in input if key not in SPLITS)
        raise ConfigError(f"input.{unknown[0]} is not a split: one input per split takes train, val and test")
    if isinstance(input, Mapping) and set(input) and set(input) <= set(SPLITS):
        pairs: list[tuple[Path | Arrays, str | None]] = []
        for name, spec in input.items():
            if spec is None:
                continue
            pairs += [(f, name) for f in (expand_inputs(spec) if isinstance(spec, str | Path | list) else [spec])]
        return pairs
    if isinstance(input, Mapping | tuple) or is_data_frame(input):
        return [(input, None)]
    return [(f, None) for f in expand_inputs(input)]


def _check_each_file_once(sources: list[tuple[Path | Arrays, str | None]]) -> None:
    """ConfigError for a file given twice (by two globs, or for two splits): its rows would be read twice."""
    seen: dict[Path, str | None] = {}
    for source, split in sources:
        if not isinstance(source, Path):
            continue
        if source.resolve() in seen:
            splits = f" (for {seen[source.resolve()]} and {split})" if split else ""
            raise ConfigError(f"input names {source} twice{splits}: give each file once")
        seen[source.resolve()] = split


def prepare(
    input: str | Path | Sequence[str | Path] | Arrays | Mapping[str, Any] | Any,
    output: str | Path,
    label: str | None = None,
    group: str | None = None,
    split: str = "random",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_column: str = "split",
    features: Sequence[str] | None = None,
    features_key: str | None = None,
    delimiter: str | None = None,
    encoding: str = "utf-8",
    decimal: str = ".",
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    seed: int = 0,
    shard_rows: int = 131_072,
    chunk_rows: int = 65_536,
    bucket_mb: int = 256,
    overwrite: bool = False,
    progress_bar: bool = True,
    append: bool = False,
    end_stream: bool = False,
) -> dict[str, Any]:
    """Write the prepared dataset at `output` and return its manifest; ConfigError on any bad input.

    `append=True`: add it as the next part of the stream directory `output` (the returned manifest's
    `part` names it); its classes default to the stream's. `end_stream=True` then writes the stream's
    end marker: this was its last part. `delimiter`, `encoding` and `decimal` say how CSV/TSV text is written.
    """
    # A column named by a number (`label=3` on the command line, a header `0,1,2,3`) is that name as text.
    label, group, split_column = (column_name(v) for v in (label, group, split_column))
    features = [column_name(v) for v in features] if isinstance(features, list | tuple) else column_name(features)
    check_arguments(locals(), RULES)
    # Plain Python numbers from here on (a numpy integer would not go into the manifest's JSON).
    val_fraction, test_fraction, seed = float(val_fraction), float(test_fraction), int(seed)
    shard_rows, chunk_rows, bucket_mb = int(shard_rows), int(chunk_rows), int(bucket_mb)
    num_classes = None if num_classes is None else int(num_classes)
    class_names = [str(name) for name in class_names] if class_names else None
    delimiter, decimal = csv_dialect(delimiter, decimal)
    if class_names and num_classes is not None and num_classes != len(class_names):
        raise ConfigError(f"num_classes={num_classes} but class_names names {len(class_names)}: give one of them")
    output = Path(output)
    if isinstance(features, str):  # `features=f0`: one column, not its letters
        features = [features]
    sources = _sources(input)
    _check_each_file_once(sources)
    _restore_interrupted_replace(output)  # first: the dataset a killed overwrite left aside is the output again
    if not append:
        named = [Path(p) for p in (label, group) if p and str(p).endswith(".npy")]  # a bare .npy's labels/groups
        check_output(output, overwrite, [*(s for s, _ in sources if isinstance(s, Path)), *named])
    if end_stream and not append:
        raise ConfigError("end_stream=true ends a stream: it needs append=true")
    if append:
        if output.is_file() or not is_stream(output):
            raise ConfigError(f"output={output} is not a stream directory (it is a file or a prepared dataset)")
        if end_marker(output) is not None:  # a run following the stream has stopped: a new part would go unseen
            raise ConfigError(
                f"output={output} has ended ({END} is there): its runs stop at its last part; start a new stream "
                "directory for more data"
            )
        num_classes = stream_num_classes(output, num_classes)
        first = first_manifest(output)
        if class_names is None and first is not None and first.get("class_names"):
            class_names = list(first["class_names"])  # a part lacking a class numbers the others as the stream
    _check_writable(output)
    rule = "files" if any(fixed for _, fixed in sources) else split
    if rule == "files" and (split not in ("random", "files") or (val_fraction, test_fraction) != (0.1, 0.1)):
        log.warning(
            "one input per split: each file's rows go to its split, so split=%s val_fraction=%s test_fraction=%s "
            "do not apply",
            split, val_fraction, test_fraction,
        )  # fmt: skip
    assigner = SplitAssigner(rule, val_fraction, test_fraction, seed)
    options = ReadOptions(
        label=label,
        group=group,
        split_column=split_column if rule == "column" else None,
        features=features,
        features_key=features_key,
        chunk_rows=chunk_rows,
        delimiter=delimiter,
        encoding=encoding,
        decimal=decimal,
    )
    files = [s for s, _ in sources if isinstance(s, Path)]
    size = input_bytes(files) if files else _in_memory_bytes(input)
    buckets = max(1, math.ceil(size / (bucket_mb * 2**20)))

    output.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_work(output)
    if append:  # the part is written inside the stream, under a name readers never list
        output.mkdir(exist_ok=True)
        work = output / f".part{WORK}{_owner()}"
        _remove_abandoned_work(output / "part")  # this stream's killed appends
    else:
        work = output.parent / f".{output.name}{WORK}{_owner()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        encoder = LabelEncoder(num_classes, class_names)
        manifest = _write(sources, options, assigner, work, buckets, shard_rows, encoder, seed, progress_bar)
        manifest["source"] = {
            "input": [
                str(s) if isinstance(s, Path) else "<DataFrame>" if is_data_frame(s) else "<arrays>" for s, _ in sources
            ],
            "split": rule,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "label": label,
            "group": group,
            "seed": seed,
        }
        _verify(work, manifest)
        _warn_of_untrained_classes(manifest)
        write_manifest(work, manifest)
        if append:
            manifest["part"] = publish_part(work, output, manifest).name
            if end_stream:
                write_end(output)
            return manifest
        if not _replaceable(output):  # filled by someone else while this ran: keep their files
            raise ConfigError(f"output={output} was filled while preparing: choose another output")
        replace_directory(work, output, aside=output.parent / f".{output.name}{ASIDE}{_owner()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def _replaceable(output: Path) -> bool:
    # Only what prepare itself wrote (its manifest is there) or an empty directory may be replaced.
    return not output.exists() or (output.is_dir() and ((output / MANIFEST).is_file() or not any(output.iterdir())))


def check_output(output: Path, overwrite: bool, inputs: Sequence[Path] = ()) -> None:
    """ConfigError unless `output` may be written: new, empty, or (with `overwrite`) a prepared dataset.

    The output directory is replaced as a whole, so it is never the working directory, one above it,
    a directory of other files, or one holding any of `inputs`.
    """
    here = Path.cwd().resolve()
    target = output.resolve()
    if target == here or target in here.parents:
        raise ConfigError(
            f"output={output} is the working directory or one above it: name a directory of its own, e.g. "
            "output=data/mine"
        )
    for file in inputs:
        source = Path(file).resolve()
        if source == target or target in source.parents:
            raise ConfigError(f"output={output} holds the input {file}: write the dataset to another directory")
    if output.is_file():
        raise ConfigError(f"output={output} is a file: name a directory for the dataset, e.g. output=data/mine")
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise ConfigError(f"output={output} exists and is not empty: choose another or set overwrite=true")
    if not _replaceable(output):
        raise ConfigError(
            f"output={output} holds files but no {MANIFEST}: overwrite=true replaces only a prepared dataset (or "
            "an empty directory); choose another output"
        )


def _check_writable(output: Path) -> None:
    # Refused before reading any input; the parent is where the work directory is made.
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output.parent, prefix=f".{output.name}.write-check-"):
            pass
    except OSError as err:
        raise ConfigError(f"output={output} cannot be written ({err.strerror or err}): choose another") from None


def _remove_abandoned_work(output: Path) -> None:
    # A killed prepare leaves its hidden work directory (bucket files): remove those whose process is gone.
    for work in output.parent.glob(f".{output.name}{WORK}*"):
        if _process_gone(work, WORK):
            shutil.rmtree(work, ignore_errors=True)


def _restore_interrupted_replace(output: Path) -> None:
    # An overwrite killed between its two renames left the old dataset aside: it is the output until replaced.
    for aside in output.parent.glob(f".{output.name}{ASIDE}*"):
        if not _process_gone(aside, ASIDE):
            log.warning("%s is another prepare's (running, or on another host): left as it is", aside)
        elif restore_aside(aside, output):
            log.info("restored %s, left aside by an overwrite that was stopped", output)


def _owner() -> str:
    """`<host>-<pid>` of this process: the end of the hidden directories it writes."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _process_gone(path: Path, marker: str) -> bool:
    """Whether the process that wrote `path` (named `...<marker><host>-<pid>`) has ended.

    Another host's directory is left alone (on a shared file system its process cannot be seen from here).
    """
    host, _, pid = path.name.partition(marker)[2].rpartition("-")
    if host and host != socket.gethostname():  # no host: named before hosts were (this machine's)
        return False
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return True
    except PermissionError:
        pass  # alive, another user's
    return False


def _described(source: Any) -> str:
    """An input as the manifest records it: a file's path, or what was given in memory."""
    if isinstance(source, Path):
        return str(source)
    return "DataFrame" if is_data_frame(source) else "arrays"


def _in_memory_bytes(input: Any) -> int:
    if is_data_frame(input):
        return int(input.memory_usage(deep=False).sum())
    if isinstance(input, tuple):
        return sum(np.asarray(a).nbytes for a in input)
    if isinstance(input, Mapping):  # arrays, or one per split
        return sum(_in_memory_bytes(v) if is_data_frame(v) else getattr(v, "nbytes", 0) for v in input.values())
    return 0


def _bar_off(progress_bar: bool) -> bool | None:
    """The `disable` of a tqdm bar: None keeps it off where stderr is no terminal (a log gets no redraws)."""
    return None if progress_bar else True


def _write(
    sources: list[tuple[Path | Arrays, str | None]],
    options: ReadOptions,
    assigner: SplitAssigner,
    work: Path,
    buckets: int,
    shard_rows: int,
    encoder: LabelEncoder,
    seed: int,
    progress_bar: bool,
) -> dict[str, Any]:
    spill: BucketSpill | None = None
    width: int | None = None
    feature_names: list[str] | None = None
    total = 0
    # Closed on an error too: the bar, so that the error's line starts a line of its own; the bucket files,
    # so that a caller in Python (StreamWriter, collect) keeps no open files from a refused input.
    try:
        with tqdm(desc="prepare: read", unit=" rows", disable=_bar_off(progress_bar), file=sys.stderr) as bar:
            for source, fixed_split in sources:
                for chunk in read_chunks(source, options):
                    feature_names = feature_names or chunk.feature_names
                    features = aligned_features(chunk, feature_names)  # by name first: it names the columns
                    width = check_features(chunk, width)
                    codes = encoder.encode(chunk)
                    splits = assigner.assign(chunk, fixed_split)
                    groups = group_codes(chunk.groups) if options.group else None
                    if spill is None:
                        spill = BucketSpill(work, buckets, width, groups is not None, seed)
                    spill.add(splits, features, codes, groups)
                    total += len(chunk)
                    bar.update(len(chunk))
    finally:
        if spill is not None:
            spill.close()
    if spill is None or total == 0:
        raise ConfigError(f"input {', '.join(_described(s) for s, _ in sources)} has no rows")
    remap, class_names = encoder.finish()
    count = len(class_names)
    stats = RunningStats(spill.width)
    rng = np.random.default_rng([seed, 3])
    splits: dict[str, Any] = {}
    bar = tqdm(
        total=total,
        desc="prepare: shuffle+write",
        unit=" rows",
        disable=None if progress_bar else True,
        file=sys.stderr,
    )
    for code, name in enumerate(SPLITS):
        writer = ShardWriter(work, name, shard_rows, spill.width)
        per_class = np.zeros(count, dtype=np.int64)
        for bucket in range(buckets):
            x, y, g = spill.read(code, bucket)
            if remap is not None:
                y = remap[y]
            order = rng.permutation(len(y))
            x, y = x[order], y[order]
            g = g[order] if g is not None else None
            if name == "train":
                stats.update(x)
            per_class += np.bincount(y, minlength=count)[:count]
            writer.add(x, y, g)
            bar.update(len(y))
        shards = writer.close()
        rows = int(sum(s["rows"] for s in shards))
        splits[name] = {"rows": rows, "class_counts": per_class.tolist(), "shards": shards}
    bar.close()
    # Files given only as val / test make a held-out set to evaluate on (`evaluate ... split=test`), not to train on.
    held_out_only = bool(sources) and all(fixed in ("val", "test") for _, fixed in sources)
    if not splits["train"]["rows"] and not held_out_only:
        raise EmptyTrainSplitError("the train split is empty: lower val_fraction / test_fraction or give training rows")
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "num_features": spill.width,
        "num_classes": count,
        "class_names": class_names,
        "feature_names": feature_names,
        "dtype": "float32",
        "label_dtype": "int64",
        "group": options.group,
        "shard_rows": shard_rows,
        "splits": splits,
        "statistics": stats.as_dict(),
    }
    manifest["fingerprint"] = fingerprint(manifest)
    return manifest


def _warn_of_untrained_classes(manifest: dict[str, Any]) -> None:
    """Log the classes with rows in val/test but none in train: a model trained on it cannot predict them."""
    train = manifest["splits"]["train"]
    if not train["rows"]:  # a held-out set
        return
    names = manifest["class_names"]
    elsewhere = [sum(manifest["splits"][s]["class_counts"][i] for s in ("val", "test")) for i in range(len(names))]
    missing = [name for i, name in enumerate(names) if train["class_counts"][i] == 0 and elsewhere[i]]
    if missing:
        log.warning(
            "class(es) %s have val/test rows but no training rows: a model trained on this data never predicts "
            "them (split=stratified keeps every class in every split)",
            missing[:8],
        )


def _verify(directory: Path, manifest: dict[str, Any]) -> None:
    # Read every shard back from disk: a bad write is caught here, not at training time.
    for split in SPLITS:
        for shard in manifest["splits"][split]["shards"]:
            for entry in shard["files"].values():
                if sha256_of(directory / entry["file"]) != entry["sha256"]:
                    raise ConfigError(f"shard {entry['file']} reads back with another checksum: disk error?")


def _summary(manifest: dict[str, Any], output: Path) -> str:
    rows = ", ".join(f"{s} {manifest['splits'][s]['rows']:,}" for s in SPLITS)
    if "part" in manifest:
        return (
            f"appended {output}: {rows} rows x {manifest['num_features']} features, {manifest['num_classes']} "
            f"classes; an online run follows it with: python -m agent_lightning.train data=stream "
            f"data.path={output.parent}"
        )
    shape = f"{rows} rows x {manifest['num_features']} features, {manifest['num_classes']} classes"
    if not manifest["splits"]["train"]["rows"]:
        split = "test" if manifest["splits"]["test"]["rows"] else "val"
        return (
            f"wrote {output}: {shape}; a held-out set, score a checkpoint on it with: python -m "
            f"agent_lightning.evaluate ckpt_path=<checkpoint> data=dataset data.path={output} split={split}"
        )
    return f"wrote {output}: {shape}; train with: python -m agent_lightning.train data=dataset data.path={output}"


@hydra_command("prepare")
def main(cfg: DictConfig) -> None:
    """Command line: prepare one dataset from `cfg`; a bad input exits 2 with one line."""
    for key, what in (("input", "the file(s) to read"), ("output", "the directory to write the dataset to")):
        if OmegaConf.is_missing(cfg, key):  # else the placeholder '???' is taken as a path
            raise ConfigError(f"{key} is required: {what}, e.g. {key}={'raw/*.csv' if key == 'input' else 'data/mine'}")
    options = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(options, dict)
    # A stop removes the work directory on its way out and leaves the output as it was.
    kept = "the stream keeps the parts it had" if cfg.get("append") else f"{cfg.output} is as it was"
    with signals_stop(lambda name: f"prepare stopped by {name} before it finished: {kept}; run it again to prepare"):
        manifest = prepare(**options)
    output = Path(cfg.output) / manifest["part"] if cfg.get("append") else Path(cfg.output)
    log.info("%s", _summary(manifest, output))


if __name__ == "__main__":
    main()
