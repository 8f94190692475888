"""Hugging Face Spaces entry point: ``python app.py`` serves the Swedish speech app.

Spaces runs this file and sets ``GRADIO_SERVER_NAME=0.0.0.0``; locally it listens on loopback.
Settings come from the environment so a Space needs no code change: every `AppConfig` field (see
``whisper-sv app --help``) as ``WHISPER_SV_<FIELD>``, for example ``WHISPER_SV_MODEL`` (speech
model spec), ``WHISPER_SV_LM`` (causal LM id or folder, e.g. AI-Sweden-Models/gpt-sw3-126m),
``WHISPER_SV_MAX_UPLOAD_MB``, ``WHISPER_SV_MAX_SECONDS``, ``WHISPER_SV_MIN_WINDOW_S`` (shortest
encoder window in seconds; 30 = Whisper's own; ``WHISPER_SV_MIN_WINDOW`` is read too) and
``WHISPER_SV_UPLOAD_DIR``. Host and port come from Gradio's own ``GRADIO_SERVER_NAME`` and
``GRADIO_SERVER_PORT``. The same app is ``whisper-sv app`` on the command line.
"""

import os
import sys
from pathlib import Path

try:
    import whisper_sv  # noqa: F401  (installed with `pip install -e .`)
except ModuleNotFoundError:  # a Space that only copied the repository: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from whisper_sv.common.options import build, env_options
from whisper_sv.serving.app import AppConfig, build_app, launch

cfg = build(AppConfig, env_options(
    AppConfig, "WHISPER_SV_", os.environ,
    aliases={"host": "GRADIO_SERVER_NAME", "port": "GRADIO_SERVER_PORT", "min_window_s": "WHISPER_SV_MIN_WINDOW"},
))
demo = build_app(cfg)

if __name__ == "__main__":
    launch(demo, cfg, block=True)
