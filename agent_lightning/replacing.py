"""Putting a fully written directory in place of an old one so that any interruption leaves one of them whole.

Each rename is atomic; between the two, the target is briefly missing while the old directory waits
aside. A stop raised in that moment puts the old one back at once; a killed process leaves it aside,
and `restore_aside` (run by the next writer) puts it back or removes it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def remove_path(path: Path) -> None:
    """Remove a file, a link or a directory tree; nothing if it is not there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def replace_directory(staged: Path, target: Path, aside: Path) -> None:
    """Move the fully written `staged` directory to `target`, keeping the old `target` at `aside` until it is there."""
    remove_path(aside)
    if target.exists():
        os.replace(target, aside)
    try:
        os.replace(staged, target)
    finally:
        if aside.exists() and not target.exists():  # stopped between the two renames: the old one back
            os.replace(aside, target)
    remove_path(aside)


def restore_aside(aside: Path, target: Path) -> bool:
    """After a killed `replace_directory`: put the old directory back if the new one never arrived, else remove it.

    Returns whether `aside` was left over (restored or removed).
    """
    if not aside.exists():
        return False
    if not target.exists():
        os.replace(aside, target)
    else:
        remove_path(aside)
    return True
