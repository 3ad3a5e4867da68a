"""A stream directory: prepared datasets ("parts") that producers add one by one, and an end marker.

Layout of `DIR`: `part-00000/`, `part-00001/`, ... each a complete prepared dataset (its own
`manifest.json` and `.npy` shards, train/val/test splits), and, once the producer is done,
`END.json`. A part is written under a hidden temporary name inside `DIR` and renamed into place
when complete, so a reader lists either nothing or a whole part; `END.json` is written the same
way (temporary name, then rename). The first part fixes the stream's width and classes: later
parts must match it. No Lightning here: producers import this without the trainer.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent_lightning.data.manifest import MANIFEST, read_manifest, schema_difference
from agent_lightning.errors import ConfigError

log = logging.getLogger("agent_lightning")
END = "END.json"
PART = re.compile(r"^part-(\d{5,})$")


def part_names(directory: str | Path) -> list[str]:
    """Names of the complete parts in `directory`, oldest first (temporary names are never listed)."""
    try:
        names = [entry.name for entry in os.scandir(directory) if PART.match(entry.name) and entry.is_dir()]
    except FileNotFoundError:
        return []
    return sorted(names, key=lambda name: int(PART.match(name).group(1)))  # type: ignore[union-attr]


def end_marker(directory: str | Path) -> dict[str, Any] | None:
    """The end marker's contents (`{"parts": n}`), or None while the producer has not finished."""
    path = Path(directory) / END
    try:
        marker = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid JSON ({err}): a producer writes it with StreamWriter.close()") from None
    parts = marker.get("parts") if isinstance(marker, dict) else None
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 0:
        raise ConfigError(f'{path} holds {marker!r}, not an end marker {{"parts": <number of parts>}}')
    return marker


@dataclass(frozen=True)
class Look:
    """One look at a stream directory: its complete parts (oldest first), ended, must stop (time is up)."""

    parts: tuple[str, ...]
    ended: bool
    stop: bool = False


def look(directory: str | Path) -> Look:
    """List the stream: the end marker is read first, so an ended stream's parts are all listed."""
    end = end_marker(directory)
    parts = tuple(part_names(directory))
    # Ended once every part the producer counted is visible (a lagging shared filesystem shows them later).
    return Look(parts, end is not None and len(parts) >= int(end.get("parts", 0)))


def is_stream(directory: str | Path) -> bool:
    """Whether `directory` is (or will become) a stream: no manifest of its own."""
    return not (Path(directory) / MANIFEST).exists()


def first_manifest(directory: str | Path) -> dict[str, Any] | None:
    """The first part's manifest (it fixes the stream's width, classes and statistics), or None before any part."""
    names = part_names(directory)
    return read_manifest(Path(directory) / names[0]) if names else None


def check_stream_options(options: Mapping[str, Any]) -> None:
    """The `data=stream` settings are usable (checked before any rank starts); ConfigError naming the key."""
    for key in ("window_rows", "val_rows", "val_every_steps", "batch_size"):
        value = options.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"data.{key}={value!r} must be a whole number >= 1")
    for key in ("passes", "poll_seconds"):
        value = options.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"data.{key}={value!r} must be a number > 0")
    from agent_lightning.data.replay import check_fraction  # imports torch, which a producer does not need

    check_fraction((options.get("replay") or {}).get("fraction", 0.0))
    if options.get("normalize") not in ("auto", "standard", "none"):
        raise ConfigError(f"data.normalize={options.get('normalize')!r} is not one of auto, standard, none")


def check_is_stream(directory: str | Path) -> None:
    """ConfigError when `data.path` of a `data=stream` run is a prepared dataset rather than a stream directory."""
    if not is_stream(directory):
        raise ConfigError(
            f"data.path={directory} is a prepared dataset, not a stream directory: use data=dataset, or give "
            "data=stream a directory that producers add parts to"
        )


def wait_for_first_part(directory: str | Path, poll_seconds: float, timeout_s: float | None = None) -> dict[str, Any]:
    """The first part's manifest, polling every `poll_seconds` (one log line) until it arrives."""
    check_is_stream(directory)
    started = time.monotonic()
    manifest = first_manifest(directory)
    if manifest is None:
        # A directory that does not exist is most often a mistyped data.path: say so while waiting.
        missing = "" if Path(directory).exists() else "; the directory does not exist yet (is data.path right?)"
        log.info(
            "stream %s: no data yet, waiting for a first part (polling every %gs)%s", directory, poll_seconds, missing
        )
    while manifest is None:
        if end_marker(directory) is not None:
            raise ConfigError(f"data.path={directory}: the stream ended (END.json) without any part")
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise ConfigError(f"data.path={directory}: no part arrived within {timeout_s:g}s")
        time.sleep(poll_seconds)
        manifest = first_manifest(directory)
    return manifest


def stream_num_classes(directory: str | Path, given: int | None) -> int | None:
    """The class count a new part is written with: the given one, else the stream's (from its first part)."""
    first = first_manifest(directory) if Path(directory).is_dir() else None
    if first is None:
        return given
    if given is not None and given != first["num_classes"]:
        raise ConfigError(
            f"num_classes={given} but the stream {directory} has {first['num_classes']} classes (its first part)"
        )
    return int(first["num_classes"])


def check_part_matches(directory: str | Path, manifest: dict[str, Any]) -> None:
    """A new part has the stream's columns and classes, in the same order; ConfigError naming both otherwise."""
    first = first_manifest(directory)
    if first is None:
        return
    differs = schema_difference(manifest, first, "the new part", f"the stream {directory} (its first part)")
    if differs:
        raise ConfigError(
            f"{differs}: every part of a stream has the same columns and classes, in the same order (numeric "
            "labels, or class_names= naming every class in each part)"
        )


def publish_part(work: Path, directory: Path, manifest: dict[str, Any]) -> Path:
    """Rename a complete part directory `work` (inside `directory`) to the stream's next part name."""
    check_part_matches(directory, manifest)
    names = part_names(directory)
    index = int(PART.match(names[-1]).group(1)) + 1 if names else 0  # type: ignore[union-attr]
    while True:
        target = directory / f"part-{index:05d}"
        try:
            os.rename(work, target)  # atomic; fails if another producer took this name
            return target
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            index += 1


def write_end(directory: str | Path) -> Path:
    """Write the end marker (atomically): the stream is complete with the parts visible now."""
    directory = Path(directory)
    path = directory / END
    tmp = directory / f".{END}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"parts": len(part_names(directory)), "time": time.time()}))
    os.replace(tmp, path)
    return path


class StreamWriter:
    """Adds parts to a stream directory from Python: `write(x, y)` per batch of rows, `close()` at the end.

    Each `write` is one part, prepared (checked, split into train/val/test, shuffled) and published
    atomically; `close` writes the end marker, after which an online run stops. As a context
    manager, the end marker is written only when the block finishes without an error.
    """

    def __init__(
        self,
        directory: str | Path,
        num_classes: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.directory = Path(directory)
        if not is_stream(self.directory):
            raise ConfigError(f"{self.directory} is a prepared dataset, not a stream directory")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.num_classes = num_classes
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.parts_written = 0

    def write(self, features: Any, labels: Any, groups: Any = None) -> Path:
        """Publish one part holding these rows; return its directory."""
        from agent_lightning.prepare import prepare  # prepare imports this module

        arrays = (np.asarray(features), np.asarray(labels))
        if groups is not None:
            arrays = (*arrays, np.asarray(groups))
        manifest = prepare(
            arrays,
            self.directory,
            group="groups" if groups is not None else None,
            split="group" if groups is not None else "random",
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            num_classes=self.num_classes,
            seed=self.seed + self.parts_written,
            append=True,
            progress_bar=False,
        )
        self.parts_written += 1
        return self.directory / manifest["part"]

    def close(self) -> None:
        """Write the end marker: the stream is complete."""
        write_end(self.directory)

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.close()
