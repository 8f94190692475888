"""`whisper_sv.common.locks` and process liveness: one file lock for the feature store and the
folders a search shares, naming its holder, refusing a second one, taken over from a dead one;
and `pid_is_alive` by psutil (a zombie is dead, a reused PID is another process)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from whisper_sv.common.fileio import pid_is_alive
from whisper_sv.common.locks import FileLock, folder_lock
from whisper_sv.data import feature_store
from whisper_sv.data.feature_store import StoreBusy, take_writer_lock


def _holding(path, *, then: str = "sys.stdin.read(); lock.release()") -> subprocess.Popen:
    """A child that takes the lock on `path`, says so on stdout, then runs `then` (by default: waits)."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        from whisper_sv.common.locks import FileLock
        lock = FileLock({str(path)!r})
        assert lock.acquire()
        print("held", flush=True)
        {then}
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_the_store_uses_the_one_lock():
    assert feature_store.FileLock is FileLock and not hasattr(feature_store, "StoreLock")


def test_a_held_lock_names_its_holder_and_refuses_a_second_one(tmp_path):
    path = tmp_path / ".manifest.lock"
    child = _holding(path)
    try:
        lock = FileLock(path)
        assert lock.is_held() and not lock.acquire()
        who = lock.holder()
        assert who["pid"] == child.pid and who["host"] == socket.gethostname() and who["since"]
    finally:
        child.stdin.close()
        child.wait(timeout=60)
    assert not FileLock(path).is_held()
    assert FileLock(path).holder() is None  # released cleanly: the file is emptied, nothing to take over


def test_a_second_writer_of_a_store_is_refused_in_one_line_naming_the_holder(tmp_path):
    out = tmp_path / "store"
    out.mkdir()
    child = _holding(out / ".manifest.lock")
    try:
        with pytest.raises(StoreBusy) as refused:
            take_writer_lock(out)
        message = str(refused.value)
        assert f"being written by PID {child.pid} on {socket.gethostname()}" in message and "\n" not in message
    finally:
        child.stdin.close()
        child.wait(timeout=60)
    take_writer_lock(out).release()  # free again once the holder has ended


def test_the_lock_of_a_killed_holder_is_taken_over_with_a_warning(tmp_path, caplog):
    path = tmp_path / ".claim.lock"
    child = _holding(path, then="os.kill(os.getpid(), signal.SIGKILL)")
    child.wait(timeout=60)
    assert FileLock(path).holder()["pid"] == child.pid  # its name stays: it never released
    lock = FileLock(path)
    with caplog.at_level(logging.WARNING, logger="whisper_sv.common.locks"):
        assert lock.acquire()
    try:
        assert f"taking over the lock of PID {child.pid}" in caplog.text
        assert lock.holder()["pid"] == os.getpid()
    finally:
        lock.release()


def test_folder_lock_waits_for_the_holder_and_lives_beside_the_folder(tmp_path):
    folder = tmp_path / "features" / "train"
    folder.parent.mkdir()
    child = _holding(tmp_path / "features" / ".train.lock", then="import time; time.sleep(1.0); lock.release()")
    started = time.monotonic()
    with folder_lock(folder) as got:
        waited = time.monotonic() - started
        assert got == folder and FileLock(tmp_path / "features" / ".train.lock").holder()["pid"] == os.getpid()
    child.wait(timeout=60)
    assert waited > 0.5, "the second holder did not wait for the first"
    assert sorted(p.name for p in (tmp_path / "features").iterdir()) == [".train.lock"]


# ---------------------------------------------------------------------------------------------
# Liveness


def test_pid_is_alive_knows_the_living_the_dead_and_impossible_pids():
    assert pid_is_alive(os.getpid())
    assert pid_is_alive(os.getpid(), started=psutil.Process().create_time())
    assert not pid_is_alive(_dead_pid())
    for pid in (0, -1, 2**31, 2**70):  # the old os.kill(0, 0) signalled our own group: "alive"
        assert not pid_is_alive(pid)


def test_a_reused_pid_is_another_process():
    assert not pid_is_alive(os.getpid(), started=psutil.Process().create_time() - 60)


def test_a_zombie_is_dead_even_with_its_own_start_time():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(child.pid).create_time()
    try:
        deadline = time.monotonic() + 30
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:  # exited, not yet reaped
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert psutil.pid_exists(child.pid)
        assert not pid_is_alive(child.pid)
        assert not pid_is_alive(child.pid, started=started)  # what a search worker and an app marker record
    finally:
        child.wait(timeout=60)


def test_a_search_worker_that_is_a_zombie_is_stale():
    pytest.importorskip("optuna")
    from whisper_sv.search.study import BOOT, HOST, is_stale

    class Trial:
        datetime_start = None

        def __init__(self, worker):
            self.user_attrs = {"worker": worker, "heartbeat": time.time()}

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    worker = {"host": HOST, "boot": BOOT, "pid": child.pid, "start": psutil.Process(child.pid).create_time()}
    try:
        assert not is_stale(Trial({**worker, "pid": os.getpid(), "start": psutil.Process().create_time()}), 600)
        deadline = time.monotonic() + 30
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert is_stale(Trial(worker), 600)  # the old check (its start time alone) called a zombie alive
    finally:
        child.wait(timeout=60)


def test_an_app_marker_of_a_dead_owner_on_this_host_is_gone(tmp_path):
    from whisper_sv.serving.uploads import UPLOADS_MARKER, _owner_is_gone

    marker = tmp_path / UPLOADS_MARKER
    me = {"pid": os.getpid(), "started": psutil.Process().create_time(), "host": socket.gethostname()}
    marker.write_text(json.dumps(me))
    assert not _owner_is_gone(marker)  # our own PID and start time: alive (the lock is free here)
    marker.write_text(json.dumps({**me, "started": me["started"] - 60}))
    assert _owner_is_gone(marker)  # a reused PID
    marker.write_text(json.dumps({**me, "pid": _dead_pid()}))
    assert _owner_is_gone(marker)
    marker.write_text(json.dumps({**me, "host": "elsewhere", "pid": _dead_pid()}))
    assert not _owner_is_gone(marker)  # another machine's process: never judged
