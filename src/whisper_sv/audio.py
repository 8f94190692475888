"""Audio physics and the one audio loader shared by features, training and serving.

Every path into the model goes through `load_audio`: a file path, raw bytes, or a decoded
``{"array", "sampling_rate"}`` dict (Hub datasets) becomes 16 kHz mono float32 in [-1, 1].
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

# Whisper's fixed front end (openai/whisper, whisper/audio.py). The encoder accepts nothing else.
SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30  # seconds in one encoder window
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30 s window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in a 30 s window

# soundfile reads in blocks of this many frames so a duration cap stops decoding early.
_BLOCK_FRAMES = 1 << 16


class AudioError(ValueError):
    """Audio that cannot become a Whisper input; ``reason`` is a short machine-readable tag.

    Reasons: ``undecodable`` (corrupt or not audio), ``empty`` (no samples), ``too_long``
    (over the caller's cap), ``missing`` (no such file).
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def load_audio(
    source: str | Path | bytes | dict[str, Any],
    sr: int = SAMPLE_RATE,
    max_seconds: float | None = None,
) -> np.ndarray:
    """Decode `source` to mono float32 at `sr` Hz, shape (n_samples,).

    `source` is a path, the encoded bytes of a file, or a dict with either ``array`` and
    ``sampling_rate`` (already decoded) or ``bytes``/``path`` (a Hub Audio column with
    ``decode=False``). With `max_seconds`, decoding stops as soon as the clip is known to be
    longer, so a small compressed file that expands to hours of PCM never reaches memory.
    Raises `AudioError` with a message that says what was wrong.
    """
    name = _describe(source)
    if isinstance(source, dict):
        if source.get("array") is not None:
            array = np.asarray(source["array"], dtype=np.float32)
            rate = int(source["sampling_rate"])
            if array.ndim == 2:  # (channels, samples) as datasets returns stereo
                array = array.mean(axis=0 if array.shape[0] < array.shape[1] else 1)
            _check_duration(len(array) / rate, max_seconds, name)
            return _finish(array, rate, sr, name)
        if source.get("bytes"):
            return load_audio(source["bytes"], sr, max_seconds)
        if source.get("path"):
            return load_audio(source["path"], sr, max_seconds)
        raise AudioError("undecodable", f"{name}: audio dict has neither 'array', 'bytes' nor 'path'")

    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise AudioError("missing", f"{source}: no such audio file; check the path (and the clips/ folder)")
    try:
        array, rate = _decode_soundfile(source, max_seconds, name)
    except AudioError:
        raise
    except Exception as sf_error:  # libsndfile cannot read it (m4a, webm, ...): try ffmpeg
        if shutil.which("ffmpeg") is None:
            raise AudioError(
                "undecodable", f"{name}: cannot decode ({sf_error}); install ffmpeg for more formats"
            ) from sf_error
        array, rate = _decode_ffmpeg(source, sr, max_seconds, name)
    return _finish(array, rate, sr, name)


def _decode_soundfile(source, max_seconds: float | None, name: str) -> tuple[np.ndarray, int]:
    handle = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    with sf.SoundFile(handle) as f:
        rate = f.samplerate
        cap = None if max_seconds is None else int(max_seconds * rate) + 1
        if f.frames > 0 and cap is not None and f.frames > cap:  # header knows the length
            raise AudioError("too_long", f"{name}: {f.frames / rate:.1f} s is over the {max_seconds:g} s limit")
        blocks, total = [], 0
        while True:
            block = f.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
            if len(block) == 0:
                break
            blocks.append(block.mean(axis=1))
            total += len(block)
            if cap is not None and total > cap:
                raise AudioError("too_long", f"{name}: over the {max_seconds:g} s limit")
    array = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    return array, rate


def _decode_ffmpeg(source, sr: int, max_seconds: float | None, name: str) -> tuple[np.ndarray, int]:
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", "pipe:0" if isinstance(source, bytes) else str(source)]
    if max_seconds is not None:
        cmd += ["-t", f"{max_seconds + 0.05:.3f}"]  # ffmpeg stops decoding here; we see the overflow
    cmd += ["-f", "f32le", "-ac", "1", "-ar", str(sr), "pipe:1"]
    proc = subprocess.run(cmd, input=source if isinstance(source, bytes) else None, capture_output=True)
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["unknown error"]
        raise AudioError("undecodable", f"{name}: not a readable audio file ({detail[0]})")
    array = np.frombuffer(proc.stdout, dtype=np.float32).copy()
    _check_duration(len(array) / sr, max_seconds, name)
    return array, sr


def _check_duration(seconds: float, max_seconds: float | None, name: str) -> None:
    if max_seconds is not None and seconds > max_seconds:
        raise AudioError("too_long", f"{name}: {seconds:.1f} s is over the {max_seconds:g} s limit")


def _finish(array: np.ndarray, rate: int, sr: int, name: str) -> np.ndarray:
    if array.size == 0:
        raise AudioError("empty", f"{name}: the audio holds no samples")
    if not np.all(np.isfinite(array)):
        raise AudioError("undecodable", f"{name}: the audio holds NaN or infinite samples")
    if rate != sr:
        array = soxr.resample(array, rate, sr, quality="HQ")
    return np.ascontiguousarray(array, dtype=np.float32)


def _describe(source: Any) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes of audio>"
    if isinstance(source, dict) and source.get("path"):
        return str(source["path"])
    return "<audio>"
