"""The Gradio app: speak or upload Swedish, read the transcript, let a Swedish LM continue it.

The page and the API are the same two functions: ``/transcribe`` (audio file -> text) and
``/continue`` (text, length, temperature -> continuation), so ``gradio_client`` scripts get what the
page shows. The page's live microphone panel (live_page.py) and programs share ``ws://HOST:PORT/live``
(live.py). It is built to be exposed:

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
import functools
import logging
import math
import os
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ..audio.io import FORMAT_NAMES, AudioError, load_audio
from ..common.options import add_options, build, option, options_from
from .continuation import (
    MAX_NEW_TOKENS,
    MAX_TEXT_CHARS,
    NOTHING_TO_CONTINUE,
    ContinuationConfig,
    Continuer,
    check_text,
)
from .inference import BACKENDS, NO_SPEECH, InferenceConfig, Transcriber, pick_backend, warm_up
from .limits import ENDPOINTS, UNREADABLE, RequestLimits, check_host, check_inputs
from .live import LiveConfig, LiveSessions, live_endpoint
from .live_page import live_panel
from .scheduler import FairScheduler, Refused
from .uploads import UPLOADS_MARKER, UploadFolder, claim_upload_folder, release_upload_folder

log = logging.getLogger(__name__)

TITLE = "Svenska: tala, läs, fortsätt"
# Transcription requests admitted to the scheduler at once (Gradio runs at most 40 events at once:
# the rest stay free for /continue), and uploads decoded into memory at once.
MAX_ADMITTED, LOADS_AT_ONCE = 32, 2
# How long closing the app waits for the speech chunk being decoded (at most 30 s of audio).
CLOSE_WAIT_S = 10.0


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
    live_sessions: int = option(2, "live microphone sessions at once (ws://HOST:PORT/live); one more is refused")
    live_max_s: float = option(600.0, "a live session ends after this much audio, s")
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


def client_of(request) -> str:
    """Whom a Gradio request counts against: the client's IP address as the server sees it."""
    client = getattr(request, "client", None)
    return str(getattr(client, "host", None) or "unknown")


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
            if name not in ENDPOINTS:
                return await super().preprocess_data(block_fn, inputs, *args, **kwargs)
            problem, detail = check_inputs(name, inputs), ""
            if problem is None:
                try:
                    return await super().preprocess_data(block_fn, inputs, *args, **kwargs)
                except gr.Error as err:  # a component's own refusal (a slider's bounds): its words, no traceback
                    problem = str(err.message)
                except Exception as err:  # anything else Gradio could not read: ours, not `error: null`
                    first = (str(err).strip().splitlines() or [""])[0][:200]
                    problem, detail = UNREADABLE[name], f" ({type(err).__name__}: {first})"
            log.info("refused %s request: %s%s", ENDPOINTS[name], problem, detail)
            raise gr.Error(problem, print_exception=False)

        def close(self, verbose: bool = True) -> None:
            try:
                super().close(verbose)
            finally:
                if self.scheduler is not None:
                    # the chunk in progress may end (a few seconds): exiting inside a decode can abort
                    self.scheduler.close(wait_s=CLOSE_WAIT_S)
                live, self.live_sessions = getattr(self, "live_sessions", None), None
                if live is not None:
                    live.shutdown(wait_s=CLOSE_WAIT_S)  # the same for a live decode in progress
                folder, self.upload_folder = self.upload_folder, None
                if folder is not None:
                    release_upload_folder(folder.path)

    return AppBlocks


def build_app(cfg: AppConfig = AppConfig(), transcriber: Transcriber | None = None,
               continuer: Continuer | None = None):
    """The Blocks page with its two API endpoints; loads and warms the speech model now (unless
    `transcriber` is given), the LM lazily.

    Claims the process's upload folder (`claim_upload_folder`); ``demo.close()`` gives it back.
    """
    if transcriber is None:  # loaded here, so warmed here: the first request should not pay its first call
        transcriber = pick_backend(cfg.model, backend=cfg.backend,
                                   options=InferenceConfig(min_window_s=cfg.min_window_s, language=cfg.language))
        log.info("speech model warmed up in %.1f s", warm_up(transcriber))
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
    demo.transcriber = transcriber  # `launch` serves live sessions on it
    demo.live_sessions = LiveSessions(LiveConfig(max_sessions=cfg.live_sessions, max_session_s=cfg.live_max_s))
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
                live_panel(gr)  # live microphone mode: words while you speak, over /live
            with gr.Column():
                transcript = gr.Textbox(label="Transcript", lines=4, elem_id="transcript", max_length=MAX_TEXT_CHARS)
        lm_status = gr.Markdown(continuer.status, elem_id="lm-status")
        with gr.Row():
            # elem_ids: the live panel reads them for its continuation at pauses
            length = gr.Slider(1, MAX_NEW_TOKENS, value=40, step=1, label="Length (new tokens)", elem_id="lm-length")
            temperature = gr.Slider(0.0, 2.0, value=0.8, step=0.05, label="Temperature (0 = greedy)",
                                    elem_id="lm-temperature")
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

    With `block`, serve until Ctrl-C or SIGTERM, then close the app, which deletes its upload folder.
    The SIGTERM handler goes in before the server starts: the server answers requests before
    Gradio's own `launch` returns, and a SIGTERM in that gap would otherwise kill the process with
    its upload folder still on disk."""
    from starlette.middleware import Middleware

    folder: UploadFolder = demo.upload_folder
    max_file_bytes = int(cfg.max_upload_mb * 1024 * 1024)
    limits = Middleware(RequestLimits, max_file_bytes=max_file_bytes, max_files=cfg.max_files_per_upload, folder=folder)
    stop = threading.Event()
    previous = _on_sigterm(stop) if block else None
    try:
        try:
            result = demo.launch(
                server_name=cfg.host, server_port=cfg.port, max_file_size=max_file_bytes,
                blocked_paths=blocked_paths(folder.path), allowed_paths=[], show_error=False, ssr_mode=False,
                prevent_thread_lock=True, quiet=not block, footer_links=["api"], app_kwargs={"middleware": [limits]},
            )
        except BaseException:
            demo.close()
            raise
        # Live transcription for programs (live.py says the protocol). First among the routes: Gradio
        # ends its own with a catch-all mount, which would refuse the WebSocket (HTTP 403).
        from starlette.routing import WebSocketRoute

        result[0].router.routes.insert(0, WebSocketRoute("/live", live_endpoint(demo.live_sessions, demo.transcriber)))
        if block:
            _serve_until_stopped(demo, stop)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return result


def _on_sigterm(stop: threading.Event):
    """Make SIGTERM (what `kill`, systemd and docker stop send) set `stop`; returns the handler it
    replaced, or None off the main thread (only the main thread may handle signals)."""

    def on_sigterm(signum, frame):
        log.info("SIGTERM: stopping the app")
        stop.set()

    try:
        return signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:
        return None


def _serve_until_stopped(demo, stop: threading.Event) -> None:
    """Wait for Ctrl-C or `stop` (set by SIGTERM), then close the app."""
    try:
        while not stop.wait(0.5) and demo.is_running:
            pass
    except KeyboardInterrupt:
        log.info("Ctrl-C: stopping the app")
    finally:
        demo.close()


def add_cli(sub) -> None:
    """Register ``whisper-sv app``."""
    p = sub.add_parser("app", help="Gradio app: transcribe Swedish speech and continue it with a language model")
    # --min-window and --upload-ttl: the flags' names before they were made from the fields.
    add_options(p, AppConfig, aliases={"min_window_s": "--min-window", "upload_ttl_s": "--upload-ttl"})
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    cfg = build(AppConfig, options_from(args, AppConfig))
    check_host(cfg.host)  # before any model loads (a config is only values: it binds nothing itself)
    launch(build_app(cfg), cfg, block=True)
    return 0
