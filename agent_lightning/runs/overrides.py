"""Reading a key's value from the command line's overrides, before Hydra composes them."""

from __future__ import annotations

from collections.abc import Sequence


def last_override(argv: Sequence[str], key: str) -> str | None:
    """The value of the last `key=` override in `argv` (`+key=` and `++key=` too, quotes stripped); None: not given."""
    values = [arg.split("=", 1)[1].strip("'\"") for arg in argv if arg.lstrip("+").startswith(f"{key}=")]
    return values[-1] if values else None
