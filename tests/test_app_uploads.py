"""The app's upload folder against a shared ``--upload-dir``: the app makes a folder of its own
inside it, serves only that, and deletes only that (at shutdown, on Ctrl-C and SIGTERM, and at the
next start once its process is gone); the user's files beside it, ``tmp*`` and hex-named ones
included, are never served, swept or deleted.

The in-process apps use a stand-in transcriber (no model to load); the signal tests start a real
``whisper-sv app`` with the packaged base.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers import ctrl_c_works

pytest.importorskip("gradio")
from test_app import free_port  # noqa: E402

from whisper_sv.serving.app import AppConfig, build_app, launch  # noqa: E402
from whisper_sv.serving.continuation import Continuer  # noqa: E402
from whisper_sv.serving.uploads import UPLOADS_MARKER, UPLOADS_PREFIX  # noqa: E402


class Echo:
    name = "stand-in"

    def transcribe(self, audio) -> str:
        return "hej"


def users_files(folder: Path) -> dict[str, bytes]:
    """What the user keeps in `folder`: every file, with its bytes, outside the app's own folders."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.relative_to(folder).parts[0].startswith(UPLOADS_PREFIX)}


def own_folders(folder: Path) -> list[Path]:
    """The app folders in `folder`: those with the marker (a look-alike without one is the user's)."""
    return sorted(p for p in folder.glob(UPLOADS_PREFIX + "*") if (p / UPLOADS_MARKER).is_file())


@pytest.fixture
def shared_dir(tmp_path) -> Path:
    """An upload dir the user also keeps things in, named like what Gradio and the app make."""
    d = tmp_path / "shared"
    d.mkdir()
    (d / "notes.txt").write_text("the user's notes")
    (d / ("ab" * 32)).mkdir()  # a Gradio cache folder's name
    (d / ("ab" * 32) / "take.wav").write_bytes(b"RIFF user")
    (d / "tmpbackup").mkdir()  # a tempfile-made folder of another program
    (d / "tmpbackup" / "db.sqlite").write_bytes(b"SQLite format 3\0")
    (d / "tmpx8k2_part").write_bytes(b"another program's part file")
    (d / (UPLOADS_PREFIX + "mine")).mkdir()  # the app's name, but not its folder: no marker
    (d / (UPLOADS_PREFIX + "mine") / "keep.txt").write_text("mine")
    old = time.time() - 86_400  # a day old: past any upload lifetime
    for p in d.rglob("*"):
        os.utime(p, (old, old))
    return d


def start(upload_dir: Path, **kwargs):
    cfg = AppConfig(port=free_port(), upload_dir=str(upload_dir), **kwargs)
    demo = build_app(cfg, transcriber=Echo(), continuer=Continuer(None))
    _, url, _ = launch(demo, cfg, block=False)
    return demo, url.rstrip("/")


def upload(url: str, name: str, data: bytes) -> Path:
    r = httpx.post(f"{url}/gradio_api/upload", files={"files": (name, data)}, timeout=60)
    assert r.status_code == 200, r.text
    return Path(r.json()[0])


def test_the_users_files_survive_start_up_sweeps_and_shutdown(shared_dir):
    before = users_files(shared_dir)
    demo, url = start(shared_dir, upload_ttl_s=1)
    try:
        (ours,) = own_folders(shared_dir)
        kept = upload(url, "clip.wav", b"RIFF upload")
        assert kept.is_relative_to(ours)
        # Our sweep, at once: Gradio's own (every TTL, of files older than it) cannot have taken it first.
        assert demo.upload_folder.sweep(older_than_s=0) >= 1 and not kept.exists()
        old = upload(url, "clip.wav", b"RIFF upload")
        time.sleep(1.5)  # past the upload lifetime: gone, by our sweep or by Gradio's
        demo.upload_folder.sweep()
        assert not old.exists()
        # Gradio's sweep deletes a file and leaves its folder, whose time is then new: ours takes
        # that folder at a later sweep. Then nothing of the uploads is left, and the marker stays.
        demo.upload_folder.sweep(older_than_s=0)
        assert [p.name for p in ours.rglob("*") if p.name != UPLOADS_MARKER] == []
        assert demo.upload_folder.admit()
        assert (ours / UPLOADS_MARKER).is_file()
        assert users_files(shared_dir) == before
    finally:
        demo.close()
    assert users_files(shared_dir) == before
    assert not ours.exists() and own_folders(shared_dir) == []
    assert (shared_dir / (UPLOADS_PREFIX + "mine") / "keep.txt").read_text() == "mine"


def test_only_the_apps_own_uploads_are_served(shared_dir):
    demo, url = start(shared_dir)
    try:
        (ours,) = own_folders(shared_dir)
        for path in [shared_dir / "notes.txt", shared_dir / "tmpbackup" / "db.sqlite",
                     shared_dir / ("ab" * 32) / "take.wav", ours / UPLOADS_MARKER]:
            r = httpx.get(f"{url}/gradio_api/file={path}")
            assert r.status_code in (403, 404), (path, r.status_code)
            assert path.read_bytes() not in r.content
        sent = upload(url, "one.wav", b"RIFF served")
        assert sent.is_relative_to(ours)
        r = httpx.get(f"{url}/gradio_api/file={sent}")
        assert r.status_code == 200 and r.content == b"RIFF served"
    finally:
        demo.close()


CLAIM = ("import os, sys; from whisper_sv.serving.uploads import claim_upload_folder; "
         "print(claim_upload_folder(sys.argv[1]), flush=True); {then}")


def claim_in_subprocess(parent: Path, then: str) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", CLAIM.format(then=then), str(parent)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return proc, Path(proc.stdout.readline().strip())


def test_folders_of_dead_runs_are_deleted_at_start_up_and_live_ones_kept(shared_dir):
    """A run killed before it could clean up (os._exit: no atexit, like SIGKILL) leaves its folder;
    the next start deletes it. A folder whose process still runs stays, and goes when that ends."""
    live_proc, live = claim_in_subprocess(shared_dir, "sys.stdin.read()")
    try:
        killed, dead = claim_in_subprocess(shared_dir, "os._exit(0)")  # after: a claim deletes dead runs' folders
        killed.wait(timeout=60)
        (dead / "f").mkdir()
        (dead / "f" / "left.wav").write_bytes(b"RIFF")
        assert dead.is_dir() and live.is_dir() and own_folders(shared_dir) == sorted([dead, live])
        before = users_files(shared_dir)
        demo, _ = start(shared_dir)
        try:
            ours = [p for p in own_folders(shared_dir) if p != live]
            assert not dead.exists(), "the folder of a run that is gone was kept"
            assert live.is_dir() and (live / UPLOADS_MARKER).is_file(), "a running app's folder was deleted"
            assert len(ours) == 1 and users_files(shared_dir) == before
        finally:
            demo.close()
        assert live.is_dir() and not ours[0].exists()
    finally:
        live_proc.stdin.close()  # the live owner ends normally: its folder goes with it
        assert live_proc.wait(timeout=60) == 0
    assert not live.exists() and users_files(shared_dir) == before


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGTERM, id="SIGTERM"),
                                 pytest.param(signal.SIGINT, id="Ctrl-C", marks=pytest.mark.slow)])
def test_a_signal_stops_the_app_and_deletes_its_folder(shared_dir, tmp_path, sig):
    """``whisper-sv app`` in a subprocess: after the signal its own folder and uploads are gone, the
    user's files are all there, and it exits without a traceback."""
    before = users_files(shared_dir)
    port = free_port()
    log = tmp_path / "app.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "whisper_sv.cli", "app", "--model", "packaged:whisper-base", "--port", str(port),
             "--upload-dir", str(shared_dir)], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, preexec_fn=ctrl_c_works)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.time() < deadline, "the app did not start within 300 s"
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        (ours,) = own_folders(shared_dir)
        sent = upload(url, "clip.wav", b"RIFF upload")
        assert sent.is_relative_to(ours) and sent.is_file()
        proc.send_signal(sig)
        assert proc.wait(timeout=120) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "Traceback" not in text, text
    assert "speech model warmed up" in text  # before the first request, not by it
    assert not sent.exists() and not ours.exists() and own_folders(shared_dir) == []
    assert users_files(shared_dir) == before


SIGTERM_DURING_START = """
import os, signal, sys, types
from whisper_sv.serving.app import AppConfig, launch

class Demo:  # what launch() touches of a built app; its launch() is hit by SIGTERM half-way
    upload_folder = types.SimpleNamespace(path=sys.argv[1])
    live_sessions = transcriber = None
    is_running = True
    def launch(self, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the server already answers; Gradio's launch has not returned
        return (types.SimpleNamespace(router=types.SimpleNamespace(routes=[])), "http://x", None)
    def close(self):
        print("closed", flush=True)

launch(Demo(), AppConfig(), block=True)
print("returned", flush=True)
"""


def test_sigterm_while_the_server_is_starting_still_closes_the_app(tmp_path):
    """The server answers before Gradio's launch() returns: a SIGTERM in that gap must close the app
    (which deletes its upload folder), not kill the process with the folder left on disk."""
    out = subprocess.run([sys.executable, "-c", SIGTERM_DURING_START, str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["closed", "returned"]
