"""How CSV/TSV text is written: field delimiter, character encoding and decimal point, checked once.

The command line names `;` and `,` by word (`delimiter=semicolon`, `decimal=comma`): Hydra's override
grammar needs them quoted (`"delimiter=';'"`).
"""

from __future__ import annotations

from typing import Any

from agent_lightning.arguments import Rule

DELIMITER_NAMES = {"comma": ",", "semicolon": ";", "tab": "\t", "\\t": "\t", "pipe": "|", "space": " "}


def _one_character(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 1 and value not in '"\r\n'


def _delimiter(value: Any) -> bool:
    return value is None or _one_character(value) or (isinstance(value, str) and value in DELIMITER_NAMES)


def _decimal(value: Any) -> bool:
    return value == "comma" or _one_character(value)


def _encoding(value: Any) -> bool:
    try:
        return isinstance(value, str) and bool("a".encode(value))  # LookupError too for base64: not a text codec
    except (LookupError, UnicodeError):
        return False


CSV_RULES: tuple[Rule, ...] = (
    Rule(
        "delimiter",
        _delimiter,
        f"one character or {', '.join(n for n in DELIMITER_NAMES if n.isalpha())} (or null: by file suffix)",
    ),
    Rule("encoding", _encoding, "a text encoding, e.g. utf-8, latin-1, cp1252, utf-16"),
    Rule("decimal", _decimal, "one character, or comma"),
)


def csv_dialect(delimiter: str | None, decimal: str) -> tuple[str | None, str]:
    """(delimiter, decimal point) as characters, from values `CSV_RULES` accepted (names or characters)."""
    if delimiter is not None:
        delimiter = DELIMITER_NAMES.get(delimiter, delimiter)
    return delimiter, "," if decimal == "comma" else decimal
