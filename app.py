"""Hugging Face Spaces entry point: ``python app.py`` serves the Swedish speech app.

Spaces runs this file and sets ``GRADIO_SERVER_NAME=0.0.0.0``; locally it listens on loopback.
Settings come from the environment so a Space needs no code change:
``WHISPER_SV_MODEL`` (speech model spec), ``WHISPER_SV_LM`` (causal LM id or folder, e.g.
AI-Sweden-Models/gpt-sw3-126m), ``WHISPER_SV_MAX_UPLOAD_MB``, ``WHISPER_SV_MAX_SECONDS``,
``WHISPER_SV_MIN_WINDOW`` (shortest encoder window in seconds; 30 = Whisper's own),
``WHISPER_SV_UPLOAD_DIR`` (the upload folder, emptied at start-up; default <temp>/whisper-sv-uploads).
The same app is ``whisper-sv app`` on the command line.
"""

import os
import sys
from pathlib import Path

try:
    import whisper_sv  # noqa: F401  (installed with `pip install -e .`)
except ModuleNotFoundError:  # a Space that only copied the repository: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from whisper_sv.app import AppConfig, build_demo, launch

cfg = AppConfig(
    model=os.environ.get("WHISPER_SV_MODEL") or None,
    lm=os.environ.get("WHISPER_SV_LM") or None,
    host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
    port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
    max_upload_mb=float(os.environ.get("WHISPER_SV_MAX_UPLOAD_MB", AppConfig.max_upload_mb)),
    max_seconds=float(os.environ.get("WHISPER_SV_MAX_SECONDS", AppConfig.max_seconds)),
    min_window_s=float(os.environ.get("WHISPER_SV_MIN_WINDOW", AppConfig.min_window_s)),
    upload_dir=os.environ.get("WHISPER_SV_UPLOAD_DIR") or None,
)
demo = build_demo(cfg)

if __name__ == "__main__":
    launch(demo, cfg, block=True)
