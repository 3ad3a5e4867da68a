"""`manifest.json`: what a prepared dataset holds, and the checks that its shards still match it.

A prepared dataset is one directory: per split, fixed-size `.npy` shards of features
(`<split>-<index>.x.npy`, float32 [rows, features]), labels (`.y.npy`, int64) and, when the data has
groups, group ids (`.g.npy`, int64), plus this manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from agent_lightning.errors import ConfigError

FORMAT = "agent_lightning.prepared"
VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")


def sha256_of(path: Path, chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks (never the whole file in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(manifest: dict[str, Any]) -> str:
    """One checksum for the whole dataset: changes when any shard does."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for shard in manifest["splits"][split]["shards"]:
            for entry in shard["files"].values():
                digest.update(entry["sha256"].encode())
    return digest.hexdigest()[:16]


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    """Write `manifest.json` atomically (temporary name, then rename): a reader never sees half of one."""
    path = directory / MANIFEST
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path)
    return path


def read_manifest(directory: str | Path, key: str = "data.path") -> dict[str, Any]:
    """The manifest of a prepared dataset directory; ConfigError naming `key` and the path when it is not one."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ConfigError(
            f"{key}={directory} is not a prepared dataset (no {MANIFEST}): create one with "
            "`python -m agent_lightning.prepare input=... output=...`"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid JSON ({err}): re-run prepare") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError(f"{path} is not an agent_lightning dataset manifest (format != {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise ConfigError(f"{path} has format version {manifest.get('version')}; this version reads {VERSION}")
    for key in ("num_features", "num_classes", "splits", "statistics"):
        if key not in manifest:
            raise ConfigError(f"{path} lacks the key {key!r}: re-run prepare")
    problem = _structure_problem(manifest)
    if problem:
        raise ConfigError(f"{path}: {problem}: altered or damaged; re-run prepare")
    return manifest


def _whole(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _plain_file_name(name: Any) -> bool:
    # A shard is a file in the dataset's own directory: no path that leads elsewhere.
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and "\\" not in name


def _structure_problem(manifest: dict[str, Any]) -> str | None:
    """What is inconsistent in a manifest's counts, statistics and shard entries (None: nothing)."""
    features, classes = manifest["num_features"], manifest["num_classes"]
    if not _whole(features, 1) or not _whole(classes, 1):
        return f"num_features={features!r} and num_classes={classes!r} must be whole numbers >= 1"
    statistics = manifest["statistics"]
    for key in ("mean", "std"):
        values = statistics.get(key) if isinstance(statistics, dict) else None
        if not isinstance(values, list) or len(values) != features:
            return f"statistics.{key} must hold num_features={features} values"
    splits = manifest["splits"]
    for split in SPLITS:
        entry = splits.get(split) if isinstance(splits, dict) else None
        if not isinstance(entry, dict) or not _whole(entry.get("rows")) or not isinstance(entry.get("shards"), list):
            return f"split {split!r} lacks its rows or shards"
        counts = entry.get("class_counts")
        if counts is not None and (not isinstance(counts, list) or len(counts) != classes):
            return (
                f"split {split!r} counts {len(counts) if isinstance(counts, list) else counts} classes, not {classes}"
            )
        for shard in entry["shards"]:
            files = shard.get("files") if isinstance(shard, dict) else None
            if not isinstance(files, dict) or not {"x", "y"} <= set(files) or not _whole(shard.get("rows")):
                return f"a shard of split {split!r} lacks its rows or its x and y files"
            for item in files.values():
                if (
                    not isinstance(item, dict)
                    or not _plain_file_name(item.get("file"))
                    or not _whole(item.get("bytes"))
                ):
                    name = item.get("file") if isinstance(item, dict) else item
                    return f"shard file {name!r} is not a file of the dataset"
    return None


def schema_difference(first: dict[str, Any], second: dict[str, Any], first_name: str, second_name: str) -> str | None:
    """How two datasets' columns or classes differ (width, names, order), as `first_name has ... but ...`; None: alike.

    For datasets read together (replay, a stream's parts): one model reads both, by position.
    """
    for key, what in (("num_features", "features"), ("num_classes", "classes")):
        if first[key] != second[key]:
            return f"{first_name} has {first[key]} {what} but {second_name} has {second[key]}"
    columns, other_columns = first.get("feature_names"), second.get("feature_names")
    if columns and other_columns and columns != other_columns:
        return f"{first_name} has the feature columns {columns[:8]} but {second_name} has {other_columns[:8]}"
    classes, other_classes = first.get("class_names"), second.get("class_names")
    if classes and other_classes and classes != other_classes:
        return f"{first_name} names its classes {classes} but {second_name} names them {other_classes}"
    return None


def check_shard_files(directory: Path, manifest: dict[str, Any], verify: bool) -> None:
    """Every shard file exists with the size the manifest records; with `verify`, the same SHA-256 too."""
    for split in SPLITS:
        rows = 0
        for shard in manifest["splits"][split]["shards"]:
            rows += shard["rows"]
            for entry in shard["files"].values():
                path = directory / entry["file"]
                if not path.is_file():
                    raise ConfigError(f"shard {path} is listed in {directory / MANIFEST} but missing")
                size = path.stat().st_size
                if size != entry["bytes"]:
                    raise ConfigError(
                        f"shard {path} has {size} bytes but the manifest says {entry['bytes']}: truncated or "
                        "altered; re-run prepare"
                    )
                if verify and sha256_of(path) != entry["sha256"]:
                    raise ConfigError(f"shard {path} fails its SHA-256 checksum: altered or corrupt; re-run prepare")
        if rows != manifest["splits"][split]["rows"]:
            raise ConfigError(
                f"{directory / MANIFEST}: split {split!r} says {manifest['splits'][split]['rows']} rows but its "
                f"shards hold {rows}"
            )
