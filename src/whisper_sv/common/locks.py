"""Waiting locks for work that several processes may want to do at once, done once.

The trials of a search share a feature store per feature config and an encoder cache per store:
the first trial that needs one builds it while the others wait, then all read it. `folder_lock`
is an advisory ``flock`` on a file beside the folder: the kernel drops it when its holder dies (a
SIGKILLed builder never leaves a stale lock), and the builders it guards are themselves
resumable, so the next holder finishes what a dead one started.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on `folder` (``.NAME.lock`` beside it), waiting for another holder."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = folder.parent / f".{folder.name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking, as before this existed
            yield folder
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield folder
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
