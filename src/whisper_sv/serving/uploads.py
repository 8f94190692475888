"""The app's own upload folder: made per process with a locked marker naming its owner, served
alone (GRADIO_TEMP_DIR), deleted on close, Ctrl-C, SIGTERM and exit, and an earlier one of a
process that is gone deleted at start-up. Nothing else in the parent folder is touched."""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..common.errors import UserError
from ..common.fileio import pid_is_alive

log = logging.getLogger(__name__)


# The app's upload area: a folder it makes itself (`claim_upload_folder`) and marks as its own.
UPLOADS_PREFIX = "whisper-sv-uploads-"
UPLOADS_MARKER = ".whisper-sv-uploads"  # {"pid", "started", "boot", "host"} of the owning process


@dataclass
class _OwnFolder:
    path: Path
    parent: Path
    marker_fd: int  # holds an exclusive flock for the owner's life: the kernel drops it when the owner dies
    previous_env: str | None  # GRADIO_TEMP_DIR before the claim, restored at release
    users: int = 1
    pid: int = 0


_own: _OwnFolder | None = None
_own_lock = threading.Lock()


def claim_upload_folder(parent: str | Path) -> Path:
    """This process's upload folder, a fresh ``whisper-sv-uploads-XXXXXXXX`` inside `parent`, and
    point Gradio's cache (GRADIO_TEMP_DIR) at it; `release_upload_folder` once per claim.

    Gradio reads GRADIO_TEMP_DIR at every upload and check, so there is one such folder per process,
    shared by its apps (the same `parent` again gets the same folder). Before making it, folders of
    earlier runs in `parent` whose owner process is gone (killed, or a machine that went down) are
    deleted; nothing else in `parent` is ever touched.
    """
    global _own
    parent = Path(parent).expanduser().resolve()
    with _own_lock:
        if _own is not None and _own.pid == os.getpid():
            if _own.parent == parent:
                _own.users += 1
                return _own.path
            raise UserError(
                f"this process already keeps its uploads in {_own.parent} (Gradio has one upload folder per "
                f"process): close the app that uses it first, or give the same upload_dir")
        try:
            parent.mkdir(parents=True, exist_ok=True)
            removed = _remove_orphans(parent)
            path = Path(tempfile.mkdtemp(prefix=UPLOADS_PREFIX, dir=parent))
        except OSError as err:
            raise UserError(f"upload_dir {str(parent)!r}: cannot make the app's upload folder there "
                            f"({err.strerror or err}): give a folder you can write to") from None
        if removed:
            log.info("deleted %d upload folder(s) left in %s by earlier runs that ended without cleaning up",
                     removed, parent)
        marker_fd = _write_marker(path)
        _own = _OwnFolder(path, parent, marker_fd, os.environ.get("GRADIO_TEMP_DIR"), pid=os.getpid())
        os.environ["GRADIO_TEMP_DIR"] = str(path)
        log.info("uploads go to %s (deleted when the app stops)", path)
        return path


def release_upload_folder(path: str | Path) -> None:
    """One claim less; the last one deletes the folder with everything Gradio put in it."""
    global _own
    with _own_lock:
        if _own is None or _own.path != Path(path) or _own.pid != os.getpid():
            return
        _own.users -= 1
        if _own.users > 0:
            return
        own, _own = _own, None
    _remove_own(own)


@atexit.register
def _remove_at_exit() -> None:
    """A second net: a program that never closes its app still takes its upload folder with it."""
    global _own
    with _own_lock:
        own, _own = _own, None
    if own is not None and own.pid == os.getpid():  # a forked child never deletes its parent's folder
        _remove_own(own)


def _remove_own(own: _OwnFolder) -> None:
    if own.previous_env is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = own.previous_env
    _rmtree(own.path)
    os.close(own.marker_fd)


def _rmtree(path: Path) -> None:
    def ignore_gone(function, name, exc_info):  # Gradio's own sweep may delete a file first
        if not issubclass(exc_info[0], FileNotFoundError):
            log.warning("could not delete %s: %s", name, exc_info[1])

    shutil.rmtree(path, onerror=ignore_gone)


def _write_marker(path: Path) -> int:
    import fcntl
    import socket

    import psutil

    me = psutil.Process()
    fd = os.open(path / UPLOADS_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a file system without locks: the PID and start time still tell
        pass
    os.write(fd, json.dumps({"pid": me.pid, "started": me.create_time(), "boot": psutil.boot_time(),
                             "host": socket.gethostname()}).encode())
    return fd


def _remove_orphans(parent: Path) -> int:
    """Delete the upload folders in `parent` that carry our marker and whose owner is gone; returns
    how many. A folder without the marker, another user's, a link, or one whose owner may be alive
    (or lives on another host) is left alone."""
    removed = 0
    for entry in parent.glob(UPLOADS_PREFIX + "*"):
        try:
            st = entry.lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or not _owner_is_gone(entry / UPLOADS_MARKER):
                continue
        except OSError:
            continue
        _rmtree(entry)
        removed += 1
    return removed


def _owner_is_gone(marker: Path) -> bool:
    """Whether the process that made `marker` has ended: its lock is free (the kernel releases it at
    death) and no process with its PID and start time exists. Both must agree, so neither a reused
    PID nor a clock that jumped deletes a live app's folder."""
    import fcntl
    import socket

    try:
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False  # no marker (or a link): not a folder of ours
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        owner = json.loads(os.read(fd, 4096))
        pid, started, host = int(owner["pid"]), float(owner["started"]), owner.get("host")
        if host != socket.gethostname():
            return False  # a shared folder: another machine's process, whose life we cannot see
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # held: the owner lives
        except OSError:  # a file system without locks: the PID and start time decide alone
            pass
    except (OSError, ValueError, KeyError, TypeError):
        return False
    finally:
        os.close(fd)
    return not pid_is_alive(pid, started=started)  # a zombie, or a new process under a reused PID, is gone


class UploadFolder:
    """The app's upload folder (made by `claim_upload_folder`, Gradio's cache: one
    ``<sha256>/<name>`` folder per distinct upload and ``tmp*`` part files while one arrives).

    Everything in it but the marker is Gradio's work for this app, so the TTL sweep and the size
    count cover all of it; nothing outside it is looked at.
    """

    def __init__(self, path: Path, ttl_s: float, max_bytes: float, sweep_every_s: float = 60.0):
        self.path, self.ttl_s, self.max_bytes, self.sweep_every_s = Path(path), ttl_s, max_bytes, sweep_every_s
        self._last_sweep = 0.0

    def entries(self) -> list[Path]:
        try:
            return [e for e in self.path.iterdir() if e.name != UPLOADS_MARKER]
        except OSError:
            return []

    def size(self) -> int:
        """Bytes in the folder's entries."""
        total = 0
        for entry in self.entries():
            for f in entry.rglob("*") if entry.is_dir() else [entry]:
                try:
                    total += f.lstat().st_size if f.is_file() else 0
                except OSError:  # deleted while we count
                    continue
        return total

    def sweep(self, older_than_s: float | None = None) -> int:
        """Delete entries that arrived more than `older_than_s` (default: the TTL) ago; returns how many."""
        cutoff = time.time() - (self.ttl_s if older_than_s is None else older_than_s)
        deleted = 0
        for entry in self.entries():
            try:
                stats = [entry.lstat()] + ([f.lstat() for f in entry.iterdir()] if entry.is_dir() else [])
                if max(max(st.st_mtime, st.st_ctime) for st in stats) > cutoff:
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                deleted += 1
            except OSError:  # deleted meanwhile by Gradio's own sweep
                continue
        self._last_sweep = time.monotonic()
        return deleted

    def admit(self) -> bool:
        """Whether a new upload fits: sweeps old entries first when due or when the folder is full."""
        if time.monotonic() - self._last_sweep > self.sweep_every_s:
            self.sweep()
        if self.size() <= self.max_bytes:
            return True
        self.sweep()
        return self.size() <= self.max_bytes


