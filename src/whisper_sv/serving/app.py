"""The Gradio app: speak or upload Swedish, read the transcript, let a Swedish LM continue it.

The page and the API are the same two functions: ``/transcribe`` (audio file -> text) and
``/continue`` (text, length, temperature -> continuation), so ``gradio_client`` scripts get what the
page shows. It is built to be exposed:

* uploads over ``max_upload_mb`` are refused by Gradio with HTTP 413 before they reach the model;
  `RequestLimits` refuses, with 413 and a message, an upload request with more than
  ``max_files_per_upload`` files or bytes, and any other request body over `MAX_BODY_BYTES`;
* uploads live in a folder the app makes itself (`claim_upload_folder`): a fresh
  ``whisper-sv-uploads-XXXXXXXX`` inside ``upload_dir`` (default: the system's temporary folder),
  marked as the app's by a ``.whisper-sv-uploads`` file that names its process and holds a lock
  while it runs. Gradio's cache (GRADIO_TEMP_DIR) is that folder, so only the app's own uploads are
  served, never other files in ``upload_dir``. Uploads are deleted ``upload_ttl_s`` after they
  arrive (Gradio's ``delete_cache`` and `UploadFolder`'s sweep; not at once, since identical
  uploads share one path and the page replays and re-sends its upload), and the whole folder when
  the app stops: ``demo.close()``, Ctrl-C, SIGTERM, or any exit Python sees. Folders left by a
  killed run are deleted at the next start once their process is gone; nothing else in
  ``upload_dir`` is ever deleted. New uploads get HTTP 503 while the folder holds
  ``max_upload_store_mb``;
* every upload goes through `whisper_sv.audio.io.load_audio` with ``max_seconds``: it decodes only
  audio containers named by their bytes (a playlist named ``x.mp3`` that points at a server file
  is refused, never opened), stops as soon as the clip is too long or holds too many samples, so a
  small file that expands to hours is refused without the memory; any sample rate and channel
  count is mixed down and resampled;
* ``/continue`` refuses text over `MAX_TEXT_CHARS` before tokenising it and refuses or clamps
  generation settings the model cannot run;
* values of the wrong type (a list for the text, "abc" or null for a number, a number for the
  audio) are refused before Gradio's components read them (`check_inputs`);
* every failure is one plain message for the client and one line in the server log, never a
  traceback or an empty ``error: null``;
* the queue has a size limit, and transcription is scheduled fairly (`FairScheduler`): a short
  clip never waits for someone else's long upload to finish. Every request's speech is split into
  its VAD chunks (at most 30 s each) and ``concurrency`` decode threads (one by default: on 2 CPU
  cores two decodes at once only halve each other's speed) take one chunk at a time from the
  admitted request with the least audio decoded so far, the shorter request on a tie. A new request
  has had nothing decoded, so it goes next once the chunk in progress ends: a clip of up to 30 s
  waits for at most one chunk of other audio, and long uploads share the decoder round-robin.
  Up to ``queue_size`` transcription requests (at most 32, leaving Gradio's other workers to
  ``/continue``) are admitted at once and the rest wait in Gradio's queue. A client (its IP
  address as the server sees it; uvicorn takes it from X-Forwarded-For only when the peer is in
  FORWARDED_ALLOW_IPS, loopback by default, so behind a proxy name the proxy there) may have
  ``max_client_audio_s`` seconds of audio waiting or in progress and all clients together
  ``max_queued_audio_s``: a request over either is refused with a one-line message, and at most
  two uploads are decoded into memory at once. A request whose client goes away is dropped from
  the schedule. The LM runs ``concurrency`` requests at a time;
* Gradio serves only the app's upload folder and its static files; the working folder, the model
  cache and the folder's marker are blocked explicitly as well.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import functools
import itertools
import json
import logging
import math
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from pathlib import Path

from ..audio.io import FORMAT_NAMES, SAMPLE_RATE, AudioError, load_audio
from ..common.errors import UserError
from ..common.fileio import pid_is_alive
from ..common.options import add_options, build, option, options_from
from .continuation import (
    MAX_NEW_TOKENS,
    MAX_TEXT_CHARS,
    NOTHING_TO_CONTINUE,
    ContinuationConfig,
    Continuer,
    check_text,
)
from .inference import BACKENDS, NO_SPEECH, InferenceConfig, Transcriber, join_texts, pick_backend

log = logging.getLogger(__name__)

TITLE = "Svenska: tala, läs, fortsätt"
MAX_BODY_BYTES = 1 << 20  # any request but an upload: /continue's 20,000 characters fit many times
# Transcription requests admitted to the scheduler at once (Gradio runs at most 40 events at once:
# the rest stay free for /continue), and uploads decoded into memory at once.
MAX_ADMITTED, LOADS_AT_ONCE = 32, 2
_MULTIPART_OVERHEAD = 64 << 10  # part headers and boundaries around the files of one upload


def _check_host(host: str) -> None:
    """Refuse a host this machine cannot listen on, before any model loads (Gradio would only say
    "Cannot find empty port"). Binding to port 0 asks the kernel, not the network."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family) as probe:
            probe.bind((host, 0))
    except (OSError, UnicodeError, ValueError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise ValueError(
            f"--host {host!r} is not an address of this machine ({reason}); use 127.0.0.1 "
            "(this machine only) or 0.0.0.0 (every interface)"
        ) from None


@dataclass(frozen=True)
class AppConfig:
    """Everything `launch` needs; the CLI flags map one to one."""

    model: str | None = option(None, (
        "speech model spec; null: runs/cpu-demo/ct2 if exported, else packaged:whisper-base"
    ))
    lm: str | None = option(None, (
        "causal LM id or folder for the continuation, e.g. AI-Sweden-Models/gpt-sw3-126m; null: none"
    ))
    backend: str = option("auto", "auto, faster-whisper or transformers")
    min_window_s: float = option(InferenceConfig.min_window_s, (
        "shortest CTranslate2 encoder window, s; 30 = Whisper's own (slower on short clips)"
    ))
    language: str | None = option(None, (
        "The language forced in every decode (sv, nb, ...); null: the model's own (a fine-tune's "
        "target), else sv."
    ))
    host: str = option("127.0.0.1", "interface to listen on; loopback unless asked (0.0.0.0 exposes the app)")
    port: int = option(7860, "TCP port")
    max_upload_mb: float = option(25.0, "bigger uploads get HTTP 413")
    max_files_per_upload: int = option(1, "the page sends one file per upload; more get HTTP 413")
    upload_dir: str | None = option(None, (
        "Where the app makes its own upload folder (whisper-sv-uploads-XXXXXXXX, deleted when it "
        "stops); nothing else in it is touched. null: the system's temporary folder."
    ))
    upload_ttl_s: float = option(600.0, "uploads are deleted this long after they arrive")
    max_upload_store_mb: float = option(1024.0, "new uploads get HTTP 503 while the folder holds this much")
    max_seconds: float = option(600.0, "decoded audio longer than this is refused while decoding")
    concurrency: int = option(1, (
        "speech chunks (ASR) or requests (LM) each model decodes at once (2 CPU cores: one is "
        "fastest)"
    ))
    queue_size: int = option(64, "waiting requests beyond this are turned away (\"queue is full\")")
    max_client_audio_s: float | None = option(None, (
        "Seconds of audio one client (IP address) may have waiting or being transcribed; a request "
        "over it is refused with a message. null: twice max_seconds. At least max_seconds."
    ))
    max_queued_audio_s: float | None = option(None, (
        "Seconds of audio all clients together may have waiting (float32 in memory: 230 MB per hour)."
        " null: six times max_seconds. At least max_client_audio_s."
    ))

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r}: choose one of {', '.join(BACKENDS)}")
        if self.max_upload_mb <= 0 or self.max_seconds <= 0:
            raise ValueError("max_upload_mb and max_seconds must be positive")
        if self.max_files_per_upload < 1 or self.upload_ttl_s <= 0 or self.max_upload_store_mb < self.max_upload_mb:
            raise ValueError("max_files_per_upload must be at least 1, upload_ttl_s positive and "
                             "max_upload_store_mb at least max_upload_mb")
        if self.concurrency < 1 or self.queue_size < 1:
            raise ValueError("concurrency and queue_size must be at least 1")
        if self.max_client_audio_s is None:
            object.__setattr__(self, "max_client_audio_s", 2 * self.max_seconds)
        if self.max_queued_audio_s is None:
            object.__setattr__(self, "max_queued_audio_s", max(6 * self.max_seconds, self.max_client_audio_s))
        if not self.max_seconds <= self.max_client_audio_s <= self.max_queued_audio_s:
            raise ValueError(f"max_client_audio_s={self.max_client_audio_s:g} must be at least max_seconds="
                             f"{self.max_seconds:g} (one clip) and at most max_queued_audio_s={self.max_queued_audio_s:g}")
        InferenceConfig(min_window_s=self.min_window_s, language=self.language)  # the same range check
        _check_host(self.host)

    @property
    def upload_parent(self) -> Path:
        """The folder in which the app makes its own upload folder."""
        return Path(self.upload_dir or tempfile.gettempdir()).expanduser().resolve()


def audio_error_message(err: AudioError, max_seconds: float) -> str:
    """What the user reads for each way an upload can fail (no server paths in it)."""
    return {
        "missing": "No audio arrived: record with the microphone or upload a file.",
        "empty": "The file holds no audio (0 samples): record or upload a clip with sound in it.",
        "undecodable": f"Cannot read this file as audio: it is corrupt or not an audio file. Upload {FORMAT_NAMES}.",
        "too_long": f"The audio is longer than the {max_seconds:g} s limit: upload a shorter clip.",
        "too_large": ("The audio holds too many samples (a very high sample rate or many channels): "
                      "upload mono or stereo at 48 kHz or less."),
    }.get(err.reason, "Cannot use this audio.")


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


class RequestLimits:
    """ASGI middleware: what one HTTP request may send, checked before and while Gradio reads it.

    An upload (``POST .../upload``) may carry ``max_files`` files and ``max_files`` x the file
    limit in bytes, and is admitted only while the upload folder has room; any other request body
    may be `MAX_BODY_BYTES`. The declared length is checked first; a body without one is counted as
    it streams and cut off at the limit, as is an upload with too many parts (Gradio then deletes
    its part files). Refusals are HTTP 413 (503 for a full folder) with a one-line message.
    """

    def __init__(self, app, max_file_bytes: int, max_files: int, folder: UploadFolder):
        self.app, self.max_files, self.folder = app, max_files, folder
        self.max_upload_bytes = max_files * max_file_bytes + _MULTIPART_OVERHEAD
        self.file_limit = f"{max_files} file{'s' if max_files > 1 else ''} of at most {max_file_bytes / (1 << 20):g} MB"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        from starlette.formparsers import MultiPartException

        headers = {k.lower(): v for k, v in scope["headers"]}
        upload = scope["path"].rstrip("/").endswith("/upload")
        limit = self.max_upload_bytes if upload else MAX_BODY_BYTES
        too_big = (f"Upload at most {self.file_limit} per request." if upload
                   else f"The request body is over {MAX_BODY_BYTES >> 10} KB: send less text.")
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            return await _plain(send, 400, "Invalid Content-Length header.")
        if declared > limit:
            log.warning("refused request to %s: %d bytes declared: %s", scope["path"], declared, too_big)
            return await _plain(send, 413, too_big)
        if upload and not self.folder.admit():
            log.warning("refused upload: the upload folder is full")
            return await _plain(send, 503, "The server holds too many uploads right now: try again in a few minutes.")
        boundary = _boundary(headers.get(b"content-type", b"")) if upload else None
        state = {"bytes": 0, "delimiters": 0, "tail": b"", "refused": None, "started": False}

        async def counted_receive():
            message = await receive()
            if message["type"] == "http.request" and not state["refused"]:
                body = message.get("body", b"")
                state["bytes"] += len(body)
                if boundary:  # n parts have n + 1 delimiters; the tail catches one split across messages
                    window = state["tail"] + body
                    state["delimiters"] += window.count(boundary)
                    state["tail"] = window[-len(boundary) + 1 :]
                if state["bytes"] > limit:
                    state["refused"] = (413, too_big)
                elif state["delimiters"] > self.max_files + 1:
                    state["refused"] = (413, f"Too many files in one upload: {self.file_limit} per request.")
                if state["refused"]:
                    log.warning("refused request to %s: %s", scope["path"], state["refused"][1])
                    raise MultiPartException(state["refused"][1])  # Gradio's parser deletes its part files
            return message

        async def guarded_send(message):
            if state["refused"]:
                return  # the app's own answer to a request cut off above
            state["started"] = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not state["refused"]:
                raise
        if state["refused"] and not state["started"]:
            await _plain(send, *state["refused"])


def _boundary(content_type: bytes) -> bytes | None:
    match = re.search(rb'boundary="?([^";]+)"?', content_type)
    return b"--" + match.group(1) if match else None


async def _plain(send, status: int, text: str) -> None:
    body = (text + "\n").encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# Fair scheduling of transcription: requests share the decoder chunk by chunk.


class Refused(Exception):
    """A request the scheduler turns away; its message is the one line the client reads."""


@dataclass(eq=False)
class _Job:
    client: str
    seconds: float  # the request's audio: what it holds of its client's and the server's allowance
    seq: int  # arrival order
    future: Future
    chunks: list = field(default_factory=list)  # speech chunks; [audio] for a backend without chunks()
    texts: list[str] = field(default_factory=list)  # one per chunk decoded so far
    done_s: float = 0.0  # audio decoded so far: the scheduling key
    running: bool = False
    released: bool = False  # its audio no longer counts against the allowances


class FairScheduler:
    """Transcription requests share the decoder chunk by chunk, least-served first.

    `submit` splits a request's audio into its speech chunks (the backend's ``chunks``: VAD, at most
    30 s each) and queues it; `workers` threads then decode one chunk at a time (``decode``), always
    from the queued request with the least audio decoded so far, the shorter request on a tie, the
    earlier on a second tie. A new request has had nothing decoded, so it goes next once a chunk in
    progress ends: a clip of one chunk waits for at most one chunk of other audio per worker, never
    for a long upload to finish, and long uploads take turns. Each request's chunks are decoded in
    order, one at a time. A backend without ``chunks`` and ``decode`` (the `Transcriber` protocol
    alone) is one step per request, its ``transcribe``.

    A client may hold `client_audio_s` seconds of audio (waiting or being decoded) and all clients
    together `total_audio_s`; `submit` refuses a request over either with `Refused`. A request's
    audio counts until its future is done, cancelled included: a cancelled request is dropped at
    the next pick.
    """

    def __init__(self, transcriber: Transcriber, workers: int = 1, client_audio_s: float = math.inf,
                 total_audio_s: float = math.inf):
        self.transcriber, self.workers = transcriber, workers
        self.client_audio_s, self.total_audio_s = client_audio_s, total_audio_s
        self.chunked = callable(getattr(transcriber, "chunks", None)) and callable(getattr(transcriber, "decode", None))
        self._cond = threading.Condition()
        self._jobs: list[_Job] = []
        self._held: dict[str, float] = {}
        self._total = 0.0
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def held(self, client: str) -> float:
        """Seconds of audio `client` has waiting or being decoded."""
        with self._cond:
            return self._held.get(client, 0.0)

    def check_room(self, client: str, seconds: float = 0.0) -> None:
        """Refuse (`Refused`) a request of `seconds` from `client` that is over an allowance now."""
        with self._cond:
            self._check_room(client, seconds)

    def _check_room(self, client: str, seconds: float) -> None:
        if self._closed:
            raise Refused("The server is shutting down: try again in a minute.")
        held = self._held.get(client, 0.0)
        if held + seconds > self.client_audio_s or held >= self.client_audio_s:
            clip = f" + {seconds:.0f} s in this clip" if seconds else ""
            raise Refused(f"Too much of your audio is waiting: {held:.0f} s queued{clip}, and one client may queue "
                          f"at most {self.client_audio_s:g} s. Wait for your transcripts, then send it again.")
        if self._total + seconds > self.total_audio_s or self._total >= self.total_audio_s:
            raise Refused(f"The server has {self._total / 60:.0f} minutes of audio waiting, all it takes: "
                          "try again in a few minutes.")

    def submit(self, audio, client: str = "local") -> Future:
        """Queue `audio` (16 kHz mono float32) from `client`; returns a future for its transcript.

        Blocks while the audio is split into speech chunks (VAD); raises `Refused` when the request is
        over the client's or the server's allowance, and whatever the backend raises while splitting.
        """
        seconds = len(audio) / SAMPLE_RATE
        with self._cond:
            self._check_room(client, seconds)
            job = _Job(client, seconds, next(self._seq), Future())
            self._held[client] = self._held.get(client, 0.0) + seconds
            self._total += seconds
        job.future.add_done_callback(lambda _: self._release(job))
        try:
            chunks = list(self.transcriber.chunks(audio)) if self.chunked else [audio]
        except BaseException:
            job.future.cancel()
            raise
        if not chunks:
            self._release(job)
            _settle(job.future, NO_SPEECH)
            return job.future
        with self._cond:
            job.chunks = chunks
            self._jobs.append(job)
            self._start_workers()
            self._cond.notify()
        return job.future

    def transcribe(self, audio, client: str = "local") -> str:
        """`submit` and wait for the transcript."""
        return self.submit(audio, client).result()

    def close(self) -> None:
        """Stop the workers after the chunks in progress; requests still queued get `Refused`."""
        with self._cond:
            self._closed = True
            dropped, self._jobs = self._jobs, []
            self._cond.notify_all()
        for job in dropped:
            self._release(job)
            _settle(job.future, error=Refused("The app stopped before this clip was transcribed: try again."))

    def _release(self, job: _Job) -> None:
        """Stop counting `job`'s audio (once): before its future is settled, or when it is cancelled."""
        with self._cond:
            if job.released:
                return
            job.released = True
            left = self._held.get(job.client, 0.0) - job.seconds
            if left > 1e-6:
                self._held[job.client] = left
            else:
                self._held.pop(job.client, None)
            self._total = max(0.0, self._total - job.seconds)

    def _start_workers(self) -> None:
        while len(self._threads) < self.workers:
            thread = threading.Thread(target=self._work, name=f"whisper-sv-asr-{len(self._threads)}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _pick(self) -> _Job | None:
        self._jobs = [j for j in self._jobs if not j.future.done() or j.running]  # drop cancelled requests
        ready = [j for j in self._jobs if not j.running and not j.future.done()]
        return min(ready, key=lambda j: (j.done_s, j.seconds, j.seq), default=None)

    def _work(self) -> None:
        while True:
            with self._cond:
                while (job := self._pick()) is None and not self._closed:
                    self._cond.wait()
                if job is None:
                    return
                job.running = True
                chunk = job.chunks[len(job.texts)]
            error, text = None, ""
            try:
                if self.chunked:
                    (text,) = self.transcriber.decode([chunk])
                else:
                    text = self.transcriber.transcribe(chunk)
            except Exception as err:
                error = err
            result = None
            with self._cond:
                job.running = False
                job.texts.append(text)
                job.done_s += len(chunk) / SAMPLE_RATE
                finished = error is not None or len(job.texts) == len(job.chunks)
                if finished and job in self._jobs:  # not when `close` dropped it meanwhile
                    self._jobs.remove(job)
                    result = join_texts(job.texts) if self.chunked else text
                self._cond.notify()
            if finished:
                self._release(job)  # first, so the allowance is free when the client has its transcript
                _settle(job.future, result, error)


def _settle(future: Future, result=None, error: BaseException | None = None) -> None:
    """Give `future` its result or error, unless it was cancelled meanwhile."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


def client_of(request) -> str:
    """Whom a Gradio request counts against: the client's IP address as the server sees it."""
    client = getattr(request, "client", None)
    return str(getattr(client, "host", None) or "unknown")


# Each endpoint's function, its name on the API, and what to say when Gradio's components cannot
# read a request's values (the precise message comes from `check_inputs` where it can).
_ENDPOINTS = {"transcribe": "/transcribe", "continue_text": "/continue"}
_UNREADABLE = {
    "transcribe": "The audio must be a file uploaded to this server: with gradio_client, pass handle_file(path).",
    "continue_text": "Send /continue a text (a string), a length and a temperature (numbers).",
}


def _json_kind(value) -> str:
    """What a JSON value is, in words for a message (never the value itself)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", list: "a list", tuple: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def check_inputs(fn_name: str, inputs: list) -> str | None:
    """What is wrong with the values a request sends the endpoint function `fn_name`, checked before
    Gradio's components read them (a slider compares "abc" with its minimum and fails with a
    traceback and ``error: null``; a textbox turns a list into its repr); None when they fit."""
    if fn_name == "continue_text":
        if len(inputs) < 3:
            return f"/continue takes 3 values (text, length, temperature); the request sent {len(inputs)}."
        text, length, temperature = inputs[:3]
        if text is not None and not isinstance(text, str):
            return f"The text must be a string, not {_json_kind(text)}."
        for name, value in (("length", length), ("temperature", temperature)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"The {name} must be a number, not {_json_kind(value)}."
    elif fn_name == "transcribe":
        if len(inputs) < 1:
            return "/transcribe takes 1 value (the audio file); the request sent none."
        if inputs[0] is not None and not isinstance(inputs[0], dict):
            return (f"The audio must be a file uploaded to this server (with gradio_client, pass "
                    f"handle_file(path)), not {_json_kind(inputs[0])}.")
    return None


@functools.cache
def _blocks_class():
    """gr.Blocks that checks its endpoints' values before Gradio reads them and gives its upload
    folder back when it closes (made on first use: Gradio is imported only when an app is built)."""
    import gradio as gr

    class AppBlocks(gr.Blocks):
        upload_folder: UploadFolder | None = None
        scheduler: FairScheduler | None = None

        async def preprocess_data(self, block_fn, inputs, *args, **kwargs):
            name = getattr(block_fn, "name", None)
            if name not in _ENDPOINTS:
                return await super().preprocess_data(block_fn, inputs, *args, **kwargs)
            problem, detail = check_inputs(name, inputs), ""
            if problem is None:
                try:
                    return await super().preprocess_data(block_fn, inputs, *args, **kwargs)
                except gr.Error as err:  # a component's own refusal (a slider's bounds): its words, no traceback
                    problem = str(err.message)
                except Exception as err:  # anything else Gradio could not read: ours, not `error: null`
                    first = (str(err).strip().splitlines() or [""])[0][:200]
                    problem, detail = _UNREADABLE[name], f" ({type(err).__name__}: {first})"
            log.info("refused %s request: %s%s", _ENDPOINTS[name], problem, detail)
            raise gr.Error(problem, print_exception=False)

        def close(self, verbose: bool = True) -> None:
            try:
                super().close(verbose)
            finally:
                if self.scheduler is not None:
                    self.scheduler.close()
                folder, self.upload_folder = self.upload_folder, None
                if folder is not None:
                    release_upload_folder(folder.path)

    return AppBlocks


def build_app(cfg: AppConfig = AppConfig(), transcriber: Transcriber | None = None,
               continuer: Continuer | None = None):
    """The Blocks page with its two API endpoints; loads the speech model now, the LM lazily.

    Claims the process's upload folder (`claim_upload_folder`); ``demo.close()`` gives it back.
    """
    transcriber = transcriber or pick_backend(cfg.model, backend=cfg.backend,
                                              options=InferenceConfig(min_window_s=cfg.min_window_s, language=cfg.language))
    continuer = continuer or Continuer(cfg.lm)
    # After the models load (a model that fails leaves no folder behind), before Gradio is imported
    # (some of its modules read GRADIO_TEMP_DIR once, at import) and before any component exists
    # (each notes the folder when it is made).
    path = claim_upload_folder(cfg.upload_parent)
    try:
        import gradio as gr

        folder = UploadFolder(path, cfg.upload_ttl_s, cfg.max_upload_store_mb * (1 << 20))
        demo = _build_blocks(gr, cfg, transcriber, continuer)
    except BaseException:
        release_upload_folder(path)
        raise
    demo.upload_folder = folder  # `launch` guards it; `demo.close()` releases it
    return demo


def _build_blocks(gr, cfg: AppConfig, transcriber: Transcriber, continuer: Continuer):
    def refuse(message: str) -> gr.Error:
        return gr.Error(message, print_exception=False)  # the reason is logged in one line instead

    scheduler = FairScheduler(transcriber, workers=cfg.concurrency, client_audio_s=cfg.max_client_audio_s,
                              total_audio_s=cfg.max_queued_audio_s)
    loads = threading.BoundedSemaphore(LOADS_AT_ONCE)

    def load(audio_path: str):
        with loads:
            return load_audio(audio_path, max_seconds=cfg.max_seconds)

    async def transcribe(audio_path: str | None, request) -> str:
        """Transcribe one Swedish audio file (WAV, FLAC, MP3, OGG/Opus, M4A, WebM, ...) to text."""
        import anyio

        if not audio_path:
            log.info("refused upload: no audio")
            raise refuse("No audio: record with the microphone or upload a file.")
        if os.path.isfile(audio_path) and os.path.getsize(audio_path) == 0:
            log.info("refused upload: %s: 0 bytes", Path(audio_path).name)
            raise refuse("The file is empty (0 bytes): record or upload a clip with sound in it.")
        client = client_of(request)
        try:
            scheduler.check_room(client)  # before decoding the upload
            samples = await anyio.to_thread.run_sync(load, audio_path)
            future = await anyio.to_thread.run_sync(scheduler.submit, samples, client)
            del samples  # the request's chunks keep what they need
            return await asyncio.wrap_future(future)  # cancelled with the request: dropped from the schedule
        except AudioError as err:
            log.info("refused upload (%s): %s", err.reason, err)
            # Not deleted here: identical uploads share one path, and another request may hold it.
            raise refuse(audio_error_message(err, cfg.max_seconds)) from None
        except Refused as err:
            log.info("refused upload from %s: %s", client, err)
            raise refuse(str(err)) from None
        except Exception as err:  # a bug or a broken model: a message, not `error: null`
            log.error("transcription failed: %s: %s", type(err).__name__, err)
            raise refuse("Transcription failed on the server: try again, or another clip.") from None

    # Gradio passes the request to a parameter annotated gr.Request; `gr` is not a module global
    # here, so the annotation is the class itself.
    transcribe.__annotations__["request"] = gr.Request

    def continue_text(text: str, length: float = 40, temperature: float = 0.8) -> str:
        """Continue Swedish text with the configured causal language model."""
        if not text or text.strip() == NO_SPEECH:
            return NOTHING_TO_CONTINUE
        try:
            check_text(text)  # before any tokenising
            if not (math.isfinite(float(length)) and math.isfinite(float(temperature))):
                raise ValueError("length and temperature must be numbers")
            settings = ContinuationConfig(max_new_tokens=int(length), temperature=float(temperature))
        except (TypeError, ValueError) as err:
            log.info("refused continuation: %s", err)
            raise refuse(str(err)) from None
        try:
            return continuer.continue_text(text, settings)
        except Exception as err:
            log.error("continuation failed: %s: %s", type(err).__name__, err)
            raise refuse("The language model failed on this text: try other settings or another text.") from None

    with _blocks_class()(title=TITLE, analytics_enabled=False,
                         delete_cache=(min(60, math.ceil(cfg.upload_ttl_s)), math.ceil(cfg.upload_ttl_s))) as demo:
        gr.Markdown(
            f"# {TITLE}\nTala eller ladda upp svenskt tal (högst {cfg.max_seconds:g} s, "
            f"{cfg.max_upload_mb:g} MB), läs transkriptionen och låt en svensk språkmodell fortsätta texten.\n\n"
            f"Speech model: `{transcriber.name}`"
        )
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(sources=["microphone", "upload"], type="filepath", label="Swedish speech")
                transcribe_btn = gr.Button("Transcribe", variant="primary")
            with gr.Column():
                transcript = gr.Textbox(label="Transcript", lines=4, elem_id="transcript", max_length=MAX_TEXT_CHARS)
        lm_status = gr.Markdown(continuer.status, elem_id="lm-status")
        with gr.Row():
            length = gr.Slider(1, MAX_NEW_TOKENS, value=40, step=1, label="Length (new tokens)")
            temperature = gr.Slider(0.0, 2.0, value=0.8, step=0.05, label="Temperature (0 = greedy)")
        continue_btn = gr.Button("Continue the text")
        continuation = gr.Textbox(label="Continuation", lines=4, elem_id="continuation")

        # Up to MAX_ADMITTED requests wait inside the scheduler, which shares the decoder fairly.
        admitted = min(cfg.queue_size, MAX_ADMITTED)
        transcribe_btn.click(transcribe, audio, transcript, api_name="transcribe", concurrency_id="asr",
                             concurrency_limit=admitted)
        audio.stop_recording(transcribe, audio, transcript, api_visibility="private", concurrency_id="asr",
                             concurrency_limit=admitted)
        continue_btn.click(continue_text, [transcript, length, temperature], continuation,
                           api_name="continue", concurrency_id="lm", concurrency_limit=cfg.concurrency
                           ).then(lambda: continuer.status, None, lm_status, api_visibility="private", queue=False)
    demo.queue(max_size=cfg.queue_size, default_concurrency_limit=cfg.concurrency)
    demo.scheduler = scheduler  # `demo.close()` stops its workers
    return demo


def blocked_paths(upload_dir: str | Path) -> list[str]:
    """What the server must never serve: the upload folder's marker (its owner's PID), this working
    folder, the installed package and the model cache (unless the upload folder lives inside one of them, which would block
    the uploads themselves). Gradio serves only its cache folder, the app's own upload folder, anyway."""
    from ..models.packaged import cache_root

    upload_dir = Path(upload_dir).resolve()
    candidates = [Path.cwd().resolve(), cache_root().resolve(), Path(__file__).resolve().parents[1]]  # parents[1]: the package
    return sorted({str(upload_dir / UPLOADS_MARKER)} | {str(p) for p in candidates if not upload_dir.is_relative_to(p)})


def launch(demo, cfg: AppConfig, block: bool = True):
    """Start the server with the upload, queue and file-serving limits; returns (app, local_url, share_url).

    With `block`, serve until Ctrl-C or SIGTERM, then close the app, which deletes its upload folder."""
    from starlette.middleware import Middleware

    folder: UploadFolder = demo.upload_folder
    max_file_bytes = int(cfg.max_upload_mb * 1024 * 1024)
    limits = Middleware(RequestLimits, max_file_bytes=max_file_bytes, max_files=cfg.max_files_per_upload, folder=folder)
    try:
        result = demo.launch(
            server_name=cfg.host, server_port=cfg.port, max_file_size=max_file_bytes,
            blocked_paths=blocked_paths(folder.path), allowed_paths=[], show_error=False, ssr_mode=False,
            prevent_thread_lock=True, quiet=not block, footer_links=["api"], app_kwargs={"middleware": [limits]},
        )
    except BaseException:
        demo.close()
        raise
    if block:
        _serve_until_stopped(demo)
    return result


def _serve_until_stopped(demo) -> None:
    """Wait for Ctrl-C or SIGTERM (what `kill`, systemd and docker stop send), then close the app."""
    stop = threading.Event()

    def on_sigterm(signum, frame):
        log.info("SIGTERM: stopping the app")
        stop.set()

    try:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread: only the main thread may handle signals
        previous = None
    try:
        while not stop.wait(0.5) and demo.is_running:
            pass
    except KeyboardInterrupt:
        log.info("Ctrl-C: stopping the app")
    finally:
        demo.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def add_cli(sub) -> None:
    """Register ``whisper-sv app``."""
    p = sub.add_parser("app", help="Gradio app: transcribe Swedish speech and continue it with a language model")
    # --min-window and --upload-ttl: the flags' names before they were made from the fields.
    add_options(p, AppConfig, aliases={"min_window_s": "--min-window", "upload_ttl_s": "--upload-ttl"})
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    cfg = build(AppConfig, options_from(args, AppConfig))
    launch(build_app(cfg), cfg, block=True)
    return 0
