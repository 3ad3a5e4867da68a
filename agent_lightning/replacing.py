"""Putting a fully written file or directory in place of an old one so that any interruption leaves one whole.

A file is flushed to disk before its rename and the directory after it, so that a power cut leaves the
old file or the new one, never an empty one under the name. A directory goes in by two renames, each
atomic; between the two, the target is briefly missing while the old directory waits aside. A stop
raised in that moment puts the old one back at once; a killed process leaves it aside, and
`restore_aside` (run by the next writer) puts it back or removes it.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


def remove_path(path: Path) -> None:
    """Remove a file, a link or a directory tree; nothing if it is not there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sync_to_disk(path: Path) -> None:
    """Flush a file, or a directory's entries, to disk; nothing where the platform or file system cannot."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # a directory some platforms do not open
        return
    try:
        os.fsync(descriptor)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # no fsync here (a file system, Windows)
            raise
    finally:
        os.close(descriptor)


def replace_file(staged: Path, target: Path) -> None:
    """Rename the fully written file `staged` over `target`, its bytes on disk before the name points at them."""
    sync_to_disk(staged)
    os.replace(staged, target)
    sync_to_disk(target.parent)  # the rename itself


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
