"""Reading a key's value from the command line's overrides, before Hydra composes them."""

from __future__ import annotations

from collections.abc import Sequence


def last_override(argv: Sequence[str], key: str) -> str | None:
    """The value of the last `key=` override in `argv` (`+key=` and `++key=` too, quotes stripped); None: not given."""
    values = [arg.split("=", 1)[1].strip("'\"") for arg in argv if arg.lstrip("+").startswith(f"{key}=")]
    return values[-1] if values else None


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
