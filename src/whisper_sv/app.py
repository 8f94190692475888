"""The Gradio app: speak or upload Swedish, read the transcript, let a Swedish LM continue it.

The page and the API are the same two functions: ``/transcribe`` (audio file -> text) and
``/continue`` (text, length, temperature -> continuation), so ``gradio_client`` scripts get what the
page shows. It is built to be exposed:

* uploads over ``max_upload_mb`` are refused by Gradio with HTTP 413 before they reach the model;
* every upload goes through `whisper_sv.audio.load_audio` with ``max_seconds``, which stops
  decoding as soon as the clip is too long, so a small file that expands to hours is refused
  without the memory; any sample rate and channel count is mixed down and resampled;
* empty, silent, corrupt and non-audio input gets a plain message, never a traceback;
* the queue has a size limit and each model runs ``concurrency`` requests at a time;
* Gradio serves only its own upload cache and static files; the working folder and the model
  cache are blocked explicitly as well.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .audio import AudioError, load_audio
from .continuation import MAX_NEW_TOKENS, NOTHING_TO_CONTINUE, SUGGESTED_LM, Continuer, GenerationSettings
from .inference import BACKENDS, WINDOW_HELP, NO_SPEECH, InferenceOptions, Transcriber, default_model_spec, pick_backend

log = logging.getLogger(__name__)

TITLE = "Svenska: tala, läs, fortsätt"


@dataclass(frozen=True)
class AppConfig:
    """Everything `launch` needs; the CLI flags map one to one."""

    model: str | None = None  # None: runs/cpu-demo/ct2 if exported, else packaged:whisper-base
    lm: str | None = None  # a causal LM id or folder; None: the page says how to add one
    backend: str = "auto"
    min_window_s: float = InferenceOptions.min_window_s  # CTranslate2 encoder window floor; 30 = Whisper's
    host: str = "127.0.0.1"  # loopback unless asked: exposing the app is a decision
    port: int = 7860
    max_upload_mb: float = 25.0  # bigger uploads get HTTP 413
    max_seconds: float = 600.0  # decoded audio longer than this is refused while decoding
    concurrency: int = 1  # requests each model runs at once (2 CPU cores: one is fastest)
    queue_size: int = 64  # waiting requests beyond this are turned away ("queue is full")

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r}: choose one of {', '.join(BACKENDS)}")
        if self.max_upload_mb <= 0 or self.max_seconds <= 0:
            raise ValueError("max_upload_mb and max_seconds must be positive")
        if self.concurrency < 1 or self.queue_size < 1:
            raise ValueError("concurrency and queue_size must be at least 1")
        InferenceOptions(min_window_s=self.min_window_s)  # the same range check


def audio_error_message(err: AudioError, max_seconds: float) -> str:
    """What the user reads for each way an upload can fail (no server paths in it)."""
    return {
        "missing": "No audio arrived: record with the microphone or upload a file.",
        "empty": "The file holds no audio (0 samples): record or upload a clip with sound in it.",
        "undecodable": "Cannot read this file as audio: it is corrupt or not an audio file.",
        "too_long": f"The audio is longer than the {max_seconds:g} s limit: upload a shorter clip.",
    }.get(err.reason, "Cannot use this audio.")


def build_demo(cfg: AppConfig = AppConfig(), transcriber: Transcriber | None = None,
               continuer: Continuer | None = None):
    """The Blocks page with its two API endpoints; loads the speech model now, the LM lazily."""
    import gradio as gr

    transcriber = transcriber or pick_backend(cfg.model, backend=cfg.backend,
                                              options=InferenceOptions(min_window_s=cfg.min_window_s))
    continuer = continuer or Continuer(cfg.lm)

    def transcribe(audio_path: str | None) -> str:
        """Transcribe one Swedish audio file (any format ffmpeg reads) to text."""
        if not audio_path:
            raise gr.Error("No audio: record with the microphone or upload a file.")
        if os.path.isfile(audio_path) and os.path.getsize(audio_path) == 0:
            raise gr.Error("The file is empty (0 bytes): record or upload a clip with sound in it.")
        try:
            audio = load_audio(audio_path, max_seconds=cfg.max_seconds)
        except AudioError as err:
            log.info("refused upload: %s", err)
            raise gr.Error(audio_error_message(err, cfg.max_seconds)) from None
        return transcriber.transcribe(audio)

    def continue_text(text: str, length: float = 40, temperature: float = 0.8) -> str:
        """Continue Swedish text with the configured causal language model."""
        if not text or text.strip() == NO_SPEECH:
            return NOTHING_TO_CONTINUE
        try:
            settings = GenerationSettings(max_new_tokens=int(length), temperature=float(temperature))
        except ValueError as err:
            raise gr.Error(str(err)) from None
        return continuer.continue_text(text, settings)

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
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
                transcript = gr.Textbox(label="Transcript", lines=4, elem_id="transcript")
        lm_status = gr.Markdown(continuer.status, elem_id="lm-status")
        with gr.Row():
            length = gr.Slider(1, MAX_NEW_TOKENS, value=40, step=1, label="Length (new tokens)")
            temperature = gr.Slider(0.0, 2.0, value=0.8, step=0.05, label="Temperature (0 = greedy)")
        continue_btn = gr.Button("Continue the text")
        continuation = gr.Textbox(label="Continuation", lines=4, elem_id="continuation")

        transcribe_btn.click(transcribe, audio, transcript, api_name="transcribe", concurrency_id="asr",
                             concurrency_limit=cfg.concurrency)
        audio.stop_recording(transcribe, audio, transcript, api_visibility="private", concurrency_id="asr")
        continue_btn.click(continue_text, [transcript, length, temperature], continuation,
                           api_name="continue", concurrency_id="lm", concurrency_limit=cfg.concurrency
                           ).then(lambda: continuer.status, None, lm_status, api_visibility="private", queue=False)
    demo.queue(max_size=cfg.queue_size, default_concurrency_limit=cfg.concurrency)
    return demo


def blocked_paths(upload_dir: str | Path) -> list[str]:
    """Folders the server must never serve: this working folder and the model cache (unless the
    upload cache lives inside one of them, which would block the uploads themselves)."""
    from .packaged import cache_root

    upload_dir = Path(upload_dir).resolve()
    candidates = [Path.cwd().resolve(), cache_root().resolve(), Path(__file__).resolve().parents[2]]
    return sorted({str(p) for p in candidates if not upload_dir.is_relative_to(p)})


def launch(demo, cfg: AppConfig, block: bool = True):
    """Start the server with the upload, queue and file-serving limits; returns (app, local_url, share_url)."""
    upload_dir = os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio"
    return demo.launch(
        server_name=cfg.host, server_port=cfg.port, max_file_size=int(cfg.max_upload_mb * 1024 * 1024),
        blocked_paths=blocked_paths(upload_dir), allowed_paths=[], show_error=False, ssr_mode=False,
        prevent_thread_lock=not block, quiet=not block, footer_links=["api"],
    )


def add_cli(sub) -> None:
    """Register ``whisper-sv app``."""
    d = AppConfig()
    p = sub.add_parser("app", help="Gradio app: transcribe Swedish speech and continue it with a language model")
    p.add_argument("--model", default=None, help=f"speech model spec (default: {default_model_spec()})")
    p.add_argument("--lm", default=None, help=f"causal LM id or folder for the continuation, e.g. {SUGGESTED_LM}")
    p.add_argument("--backend", choices=BACKENDS, default=d.backend, help="inference backend (default: %(default)s)")
    p.add_argument("--min-window", type=float, default=d.min_window_s, metavar="SECONDS", help=WINDOW_HELP)
    p.add_argument("--host", default=d.host, help="interface to listen on (default: %(default)s; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=d.port, help="port (default: %(default)s)")
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_mb, help="upload size limit, HTTP 413 above (default: %(default)s)")
    p.add_argument("--max-seconds", type=float, default=d.max_seconds, help="longest audio accepted, in seconds (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="requests each model runs at once (default: %(default)s)")
    p.add_argument("--queue-size", type=int, default=d.queue_size, help="most requests waiting (default: %(default)s)")
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    cfg = AppConfig(model=args.model, lm=args.lm, backend=args.backend, min_window_s=args.min_window,
                    host=args.host, port=args.port,
                    max_upload_mb=args.max_upload_mb, max_seconds=args.max_seconds,
                    concurrency=args.concurrency, queue_size=args.queue_size)
    launch(build_demo(cfg), cfg, block=True)
    return 0
