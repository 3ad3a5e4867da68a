"""Command-line overrides: a key's value read before Hydra composes them, and a value written for Hydra or a shell."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path

# What Hydra and a shell both read as plain characters: anything else in a path gets quoted.
_PLAIN = re.compile(r"[A-Za-z0-9_./:+@%-]+")


def quoted_value(value: str | Path) -> str:
    """A path as one Hydra override value, whatever characters it holds."""
    # Hydra reads a backslash in quotes as itself, except in a run of them before a quote, `${` or the closing
    # quote, which stands for half as many; an odd one left escapes the quote or the `${` (an interpolation
    # even inside quotes).
    doubled = re.sub(r"(\\+)(?='|\$\{|$)", lambda run: run.group(1) * 2, str(value))
    return "'" + doubled.replace("'", "\\'").replace("${", "\\${") + "'"


def pasteable_override(key: str, value: str | Path) -> str:
    """`key=value` to paste into a shell: as it is for a plain path, else quoted for Hydra, then for the shell."""
    if _PLAIN.fullmatch(str(value)):
        return f"{key}={value}"
    return shlex.quote(f"{key}={quoted_value(value)}")


def sets_hydra(override: str) -> bool:
    """Whether an override sets Hydra's own config (`hydra.run.dir=`, `hydra/job_logging=`), not the task's."""
    return override.lstrip("+~").startswith(("hydra.", "hydra/"))


def last_override(argv: Sequence[str], key: str) -> str | None:
    """The value of the last `key=` override in `argv` (`+key=` and `++key=` too, unquoted); None: not given."""
    values = [unquoted_value(arg.split("=", 1)[1]) for arg in argv if arg.lstrip("+").startswith(f"{key}=")]
    return values[-1] if values else None


def unquoted_value(value: str) -> str:
    """An override's value as Hydra reads it from quotes (`quoted_value` undone); an unquoted value as it is."""
    quote = value[:1]
    if quote not in ("'", '"') or len(value) < 2 or value[-1] != quote:
        return value
    # A run of backslashes before a quote, `${` or the end stands for half as many (an odd one escapes what follows).
    return re.sub(rf"(\\+)({quote}|\$\{{|$)", lambda run: "\\" * (len(run.group(1)) // 2) + run.group(2), value[1:-1])


# Hydra's own flags that take the next word as their value (`-cd DIR`); `--info` takes one of its topics.
_FLAGS_WITH_VALUE = ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "-p", "--package")
_INFO_TOPICS = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


def command_overrides(args: Sequence[str]) -> list[str]:
    """The overrides among a command's arguments (`sys.argv[1:]`), without Hydra's flags and their values."""
    overrides, skip = [], False
    for index, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg.startswith("-"):
            topic = args[index + 1] if index + 1 < len(args) else None
            skip = arg in _FLAGS_WITH_VALUE or (arg == "--info" and topic in _INFO_TOPICS)
            continue
        overrides.append(arg)
    return overrides
