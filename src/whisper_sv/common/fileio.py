"""Writing artifacts so that a killed process never leaves a half file or folder under its final name.

Every stage writes what a later run trusts (a shard, a manifest's config, a corpus's TSVs, a model
folder, a report) through this module, so the guarantee is written once:

* a file (`write_atomic`, `write_json`, `atomic_file`, `copy_atomic`) is written under a temporary
  name beside it, ``.NAME.TOKEN.PID.tmp``, fsynced, renamed onto ``NAME`` with ``os.replace`` and
  the rename made durable by fsyncing the folder. A reader sees the old bytes or the new ones,
  never a prefix; a kill leaves only the temporary file, whose PID says whose litter it is
  (`remove_dead_temp_files`), and whose TOKEN keeps two threads of one process apart;
* a folder (`atomic_folder`) is built under a temporary name beside it and renamed into place;
  an existing one is first set aside, then deleted, so the final name never holds a mix;
* a folder that a configuration owns (a corpus, a run, a study) records that configuration
  once, and a later run asking for another is refused in one line naming what differs
  (`claim_folder`), rather than mixing two configurations in one folder.

The standard library (with `errors`, and psutil for process liveness): every layer above may use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping

import psutil

from .errors import UserError

COPY_CHUNK = 1 << 22  # 4 MiB: big enough to be fast, small enough to keep memory flat (a 145 MB model.bin)
TEMP_SUFFIX = ".tmp"
START_TOLERANCE_S = 1.0  # create_time is rounded (to clock ticks on Linux): a PID whose start differs more was reused
_ABSENT = object()


# ---------------------------------------------------------------------------------------------
# Files


def temp_path(path: Path, tag: str = "") -> Path:
    """``.NAME[.TAG].TOKEN.PID.tmp`` beside `path`: hidden, unique, and naming the process that writes it."""
    middle = f".{tag}" if tag else ""
    return path.with_name(f".{path.name}{middle}.{secrets.token_hex(4)}.{os.getpid()}{TEMP_SUFFIX}")


@contextlib.contextmanager
def atomic_file(path: str | Path, *, mode: int | None = None) -> Iterator[BinaryIO]:
    """A binary file to write that appears as `path` only if the block ends without an exception.

    `mode` (e.g. 0o644) is set before the rename, for files a cache shared between users must be
    able to read whatever the writer's umask. An exception inside the block (a checksum that does
    not match) deletes the temporary file and leaves `path` as it was.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: str | Path, data: bytes | str, *, mode: int | None = None) -> Path:
    """Write `data` (a str is UTF-8 encoded) to `path` atomically and durably; returns `path`."""
    with atomic_file(path, mode=mode) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def write_json(path: str | Path, obj: Any, *, indent: int | None = 2, sort_keys: bool = False,
               ensure_ascii: bool = True) -> Path:
    """`obj` as JSON (and a final newline) to `path` atomically; returns `path`."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii) + "\n"
    return write_atomic(path, text)


def copy_atomic(src: str | Path, dest: str | Path, *, mode: int | None = None) -> Path:
    """Copy `src` onto `dest` through a temporary file, so `dest` is never half written."""
    with open(src, "rb") as source, atomic_file(dest, mode=mode) as out:
        shutil.copyfileobj(source, out, COPY_CHUNK)
    return Path(dest)


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside `path` durable; a no-op where a folder cannot be opened or synced."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks so a large model.bin does not sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Litter of killed writers


def pid_is_alive(pid: int, started: float | None = None) -> bool:
    """Whether process `pid` runs on this machine: it exists and is no zombie (killed, not yet reaped).

    With `started` (the process's psutil ``create_time``, recorded when it was alive), a process
    under that PID that started at another time (more than `START_TOLERANCE_S` apart) is another
    one: the PID was reused. Someone else's process we may not inspect counts as alive.
    """
    try:
        if pid <= 0 or not psutil.pid_exists(pid):
            return False
        proc = psutil.Process(pid)
        if started is not None and abs(proc.create_time() - started) > START_TOLERANCE_S:
            return False
        return proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except OverflowError:  # no PID is that big
        return False
    except psutil.NoSuchProcess:  # it ended meanwhile (psutil.ZombieProcess is one)
        return False
    except psutil.AccessDenied:
        return True


def remove_dead_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files and folders (``.*.PID.tmp``) in `folder` whose writer is gone.

    One whose PID is alive is kept: another process on this machine (a second ``--shard-index``
    filling the same store) may be writing it. One without a PID is litter of older code.
    Returns what was removed.
    """
    removed = []
    for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        pid = tmp.name.removesuffix(TEMP_SUFFIX).rpartition(".")[2]
        if pid.isdigit() and pid_is_alive(int(pid)):
            continue
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


# ---------------------------------------------------------------------------------------------
# Folders


@contextlib.contextmanager
def atomic_folder(dest: str | Path, *, keep: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """A temporary folder beside `dest` to fill; on success it is renamed to `dest`, on an exception deleted.

    An existing `dest` is replaced safely: set aside under a temporary name, the new folder renamed
    into place, then the old one deleted (should the rename fail, the old one is put back). So
    `dest` is at every moment absent, the old folder or the new one, and a kill never leaves a
    half folder under the final name. Files are fsynced before the rename.

    `keep(dest)`, when given, is asked before replacing an existing `dest` and again if the rename
    fails (another process renamed its own first): True keeps that folder and discards ours, for
    work that any process may finish and whose result someone may already be reading.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dest)
    os.mkdir(tmp)
    try:
        yield tmp
        if keep is not None and dest.exists() and keep(dest):
            return
        _fsync_tree(tmp)
        try:
            _swap_into_place(tmp, dest)
        except OSError:
            if keep is not None and dest.exists() and keep(dest):
                return
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left to remove after a successful rename


def _swap_into_place(src: Path, dest: Path) -> None:
    aside = None
    if dest.exists() or dest.is_symlink():
        aside = temp_path(dest, "old")
        os.rename(dest, aside)
    try:
        os.rename(src, dest)
    except OSError:
        if aside is not None and not dest.exists():
            os.rename(aside, dest)
        raise
    fsync_dir(dest.parent)
    if aside is not None:
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink(missing_ok=True)


def _fsync_tree(folder: Path) -> None:
    for root, _, names in os.walk(folder):
        for name in names:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


# ---------------------------------------------------------------------------------------------
# Folders that belong to one configuration


def differing_keys(found: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """The keys, sorted, whose values differ between two records (a key missing from one differs)."""
    return sorted(k for k in set(found) | set(wanted) if found.get(k, _ABSENT) != wanted.get(k, _ABSENT))


def describe_keys(record: Mapping[str, Any], keys: list[str]) -> str:
    """``clips=6, seed=0``: the values of `keys` in `record` as JSON spells them, on one line."""
    parts = []
    for k in keys:
        if k not in record:
            parts.append(f"no {k}")
        else:
            value = record[k]
            parts.append(f"{k}={value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}")
    return " ".join(", ".join(parts).split())  # a value's own newlines would break the one line


def claim_folder(
    folder: str | Path,
    record_name: str,
    config: Mapping[str, Any],
    what: str,
    *,
    comparable: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    hint: str = "pick another --out or delete it",
) -> bool:
    """Make `folder` the home of `config`, recorded as JSON in ``folder/record_name``; True if it already was.

    A folder without the record is created and the record written (atomically): False, a fresh
    start. A folder whose record matches: True, a resume. A record that differs raises `UserError`
    in one line naming only the keys that differ, e.g. ``corpus/x holds a corpus made with
    clips=6, not clips=7; pick another --out or delete it`` (`what` is "a corpus", `hint` the end).

    `comparable(record)` is the part of a record that must match (default: all of it; a key left
    out is kept for the reader, not compared). `upgrade(record)` turns a record written by older
    code into today's form before comparing; an upgraded record that matches is rewritten.
    """
    folder = Path(folder)
    path = folder / record_name
    wanted = json.loads(json.dumps(config))  # as it reads back: tuples are lists, keys strings
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        write_json(path, wanted)
        return False
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UserError(f"{path} is not readable JSON ({err}); delete it, or the whole {folder}, to start again") from None
    found = upgrade(stored) if upgrade is not None else stored
    view = comparable or (lambda record: record)
    old, new = view(found), view(wanted)
    keys = differing_keys(old, new)
    if keys:
        raise UserError(f"{folder} holds {what} made with {describe_keys(old, keys)}, not {describe_keys(new, keys)}; {hint}")
    if found != stored:
        write_json(path, found)  # today's form, so the next run need not upgrade it again
    return True
