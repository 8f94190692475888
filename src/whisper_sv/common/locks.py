"""Locks for work that several processes may want to do at once, done once: the one implementation.

`FileLock` is an exclusive advisory ``flock`` on a file; the holder writes its PID, host and start
time into the file, for whoever is refused (a feature store's second writer: `feature_store`) or
takes it over. The kernel drops the lock when its holder exits, however it dies (``kill -9``
included), so the lock of a dead process is simply taken over: no PID guessing, no stale-lock
timeout; a release empties the file, so only a holder that died leaves a name behind (logged at
the take-over). On NFS, Linux maps ``flock`` to byte-range locks the server sees, so machines that
share a folder over NFS see each other's locks.

`folder_lock` waits for a folder's lock (``.NAME.lock`` beside it): the trials of a search share a
feature store per feature config and an encoder cache per store, and the first trial that needs
one builds it while the others wait, then all read it. The builders it guards are resumable, so
the next holder finishes what a dead one started.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Iterator

try:
    import fcntl
except ImportError:  # not POSIX: `folder_lock` runs unlocked; `FileLock` (writers only) needs it
    fcntl = None

log = logging.getLogger(__name__)


class FileLock:
    """An exclusive ``flock`` on `path`; the file names its holder for whoever is refused."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, wait: bool = False) -> bool:
        """Take the lock; False when another process holds it (with `wait`, block until it is free)."""
        if fcntl is None:
            raise OSError(f"{self.path}: file locks need a POSIX system (fcntl)")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        left = self.holder()
        if left and left.get("pid") != os.getpid():
            log.warning("%s: taking over the lock of PID %s on %s, which ended without releasing it",
                        self.path.parent, left.get("pid"), left.get("host"))
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        return True

    def holder(self) -> dict[str, Any] | None:
        """What the last holder wrote into the file (None when it released the lock or wrote nothing)."""
        try:
            return json.loads(self.path.read_text() or "null")
        except (OSError, ValueError):
            return None

    def is_held(self) -> bool:
        """Whether some other process holds the lock now (probes it without keeping it)."""
        if self._fd is not None or not self.path.exists():
            return False
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops a probe lock we took
        return False

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # an empty file: released cleanly, nothing to take over
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "FileLock":
        self.acquire(wait=True)
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on `folder` (``.NAME.lock`` beside it), waiting for another holder."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # not POSIX: no locking, as before this existed
        yield folder
        return
    with FileLock(folder.parent / f".{folder.name}.lock"):
        yield folder
