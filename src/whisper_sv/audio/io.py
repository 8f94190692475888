"""Audio physics and the one audio loader shared by features, training and serving.

Every path into the model goes through `load_audio`: a file path, raw bytes, or a decoded
``{"array", "sampling_rate"}`` dict (Hub datasets) becomes 16 kHz mono float32 in [-1, 1].

Encoded input is decoded as audio only: the container is identified from its first
bytes, never its name, and only the formats in `AUDIO_FORMATS` reach a decoder. ffmpeg is told
that format (``-f``) and may open nothing but the one file or pipe (``-protocol_whitelist``), so
a playlist, concat list or other file that names further files or URLs is refused, not followed.
Decoding is bounded in memory and work: blocks are resampled as they are decoded, and a cap on
decoded samples (all channels) stops a tiny file at an absurd rate or channel count early.
"""

from __future__ import annotations

import io
import os
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

# soundfile reads in blocks of at most this many samples (all channels), so a cap stops decoding
# early and a file with hundreds of channels still reads 4 MB at a time.
_BLOCK_SAMPLES = 1 << 20
# Rates outside this range are not recordings of speech (384 kHz is the highest any audio
# interface records); a 655,350 Hz FLAC of silence is a memory bomb, not a clip.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 384_000
# With `max_seconds`, at most this many samples per second (all channels) are decoded: 48 kHz
# stereo. Real uploads under the size limit never come close; bombs stop here.
MAX_DECODED_RATE = 48_000 * 2
FFMPEG_TIMEOUT_S = 120  # no upload that passed the caps takes ffmpeg this long
# The containers `load_audio` decodes, by what `sniff_format` calls them -> ffmpeg's demuxer.
# Each holds its own audio; none can point at another file or URL (ffmpeg's mov demuxer follows
# data references only with ``-enable_drefs 1``, off by default).
AUDIO_FORMATS = {
    "wav": "wav", "flac": "flac", "ogg": "ogg", "mp3": "mp3", "aiff": "aiff", "caf": "caf",
    "mp4": "mov", "webm": "matroska", "aac": "aac",
}
FORMAT_NAMES = "WAV, FLAC, MP3, OGG/Opus, M4A/MP4, WebM, AAC, AIFF or CAF"
_SOUNDFILE_FORMATS = {"wav", "flac", "ogg", "mp3", "aiff", "caf"}  # libsndfile reads these; ffmpeg the rest


class AudioError(ValueError):
    """Audio that cannot become a Whisper input; ``reason`` is a short machine-readable tag.

    Reasons: ``undecodable`` (corrupt, not audio, or not a format in `AUDIO_FORMATS`), ``empty``
    (no samples), ``too_long`` (over the caller's cap), ``too_large`` (a sample rate outside
    `MIN_SAMPLE_RATE`..`MAX_SAMPLE_RATE`, or more decoded samples than the cap allows), ``missing``
    (no such file).
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def load_audio(
    source: str | Path | bytes | dict[str, Any],
    sr: int = SAMPLE_RATE,
    max_seconds: float | None = None,
) -> np.ndarray:
    """Decode `source` to mono float32 at `sr` Hz, shape (n_samples,), peak at most 1.

    `source` is a path, the encoded bytes of a file, or a dict with either ``array`` and
    ``sampling_rate`` (already decoded) or ``bytes``/``path`` (a Hub Audio column with
    ``decode=False``). With `max_seconds`, decoding stops as soon as the clip is known to be
    longer, or to hold more than ``max_seconds * MAX_DECODED_RATE`` samples over all channels, so
    a small compressed file that expands to hours of PCM never reaches memory. Float audio that
    goes beyond [-1, 1] (a float WAV at int16 scale) is scaled to a peak of 1.
    Raises `AudioError` with a message that says what was wrong.
    """
    name = _describe(source)
    if isinstance(source, dict):
        if source.get("array") is not None:
            array = np.asarray(source["array"], dtype=np.float32)
            rate = int(source["sampling_rate"])
            _check_rate(rate, name)
            if array.ndim == 2:  # (channels, samples) as datasets returns stereo
                array = array.mean(axis=0 if array.shape[0] < array.shape[1] else 1)
            _check_duration(len(array) / rate, max_seconds, name)
            return _finish(_resample(array, rate, sr), name)
        if source.get("bytes"):
            return load_audio(source["bytes"], sr, max_seconds)
        if source.get("path"):
            return load_audio(source["path"], sr, max_seconds)
        raise AudioError("undecodable", f"{name}: audio dict has neither 'array', 'bytes' nor 'path'")

    if isinstance(source, (str, Path)) and not Path(source).is_file():
        what = "a folder, not an audio file" if Path(source).is_dir() else "no such audio file"
        raise AudioError("missing", f"{source}: {what}; check the path (and the clips/ folder)")
    fmt = sniff_format(_head(source))
    if fmt is None:
        raise AudioError("undecodable", f"{name}: not an audio file in a format this loader reads ({FORMAT_NAMES}); "
                                        "playlists and files that point to other files are refused")
    if fmt in _SOUNDFILE_FORMATS:
        try:
            return _finish(_decode_soundfile(source, sr, max_seconds, name), name)
        except AudioError:
            raise
        except Exception as sf_error:  # libsndfile cannot read it (an MP3 it dislikes, Opus in old builds, ...)
            if shutil.which("ffmpeg") is None:
                raise AudioError(
                    "undecodable", f"{name}: cannot decode ({sf_error}); install ffmpeg for more formats"
                ) from sf_error
    elif shutil.which("ffmpeg") is None:
        raise AudioError("undecodable", f"{name}: {fmt} needs ffmpeg; install it (make setup does)")
    return _finish(_decode_ffmpeg(source, AUDIO_FORMATS[fmt], sr, max_seconds, name), name)


def sniff_format(head: bytes) -> str | None:
    """The container `head` (a file's first bytes, 4 KB is plenty) starts, as a key of
    `AUDIO_FORMATS`, or None for anything else: playlists (``#EXTM3U``), ffmpeg concat lists,
    text, HTML, images, ... Judged from the bytes only, never from a file name."""
    if head.startswith(b"ID3") and len(head) >= 10:  # ID3v2 tag: what follows decides
        rest = head[10 + _id3_size(head) + (10 if head[5] & 0x10 else 0):]
        return "flac" if rest.startswith(b"fLaC") else ("aac" if _adts(rest) else "mp3")
    four, kind = head[:4], head[8:12]
    if four in (b"RIFF", b"RIFX", b"RF64", b"BW64") and kind == b"WAVE":
        return "wav"
    if four == b"FORM" and kind in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[4:8] == b"ftyp":
        return "mp4"
    simple = {b"fLaC": "flac", b"OggS": "ogg", b"caff": "caf", b"\x1a\x45\xdf\xa3": "webm"}
    if four in simple:
        return simple[four]
    if _adts(head):
        return "aac"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE6 in (0xE2, 0xE4, 0xE6):  # MPEG audio layer 1-3 sync
        return "mp3"
    return None


def _adts(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0  # sync, layer 00: AAC


def _head(source: str | Path | bytes, n: int = 4096) -> bytes:
    """The first `n` bytes, or, behind an ID3 tag, the tag header and the `n` bytes after it."""
    if isinstance(source, bytes):
        head = source[:n]
        if head.startswith(b"ID3") and len(head) >= 10:
            return source[: 20 + _id3_size(head) + n]
        return head
    with open(source, "rb") as f:
        head = f.read(n)
        if head.startswith(b"ID3") and len(head) >= 10:
            f.seek(0)
            head = f.read(20 + _id3_size(head) + n)
    return head


def _id3_size(head: bytes) -> int:
    """The size of an ID3v2 tag's body, from its header (four 7-bit bytes)."""
    return (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | (head[9] & 0x7F)


def _decode_soundfile(source, sr: int, max_seconds: float | None, name: str) -> np.ndarray:
    """Read blocks, mix each to mono and resample it as it comes: memory holds the output only."""
    handle = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    with sf.SoundFile(handle) as f:
        rate, channels = f.samplerate, f.channels
        _check_rate(rate, name)
        cap = None if max_seconds is None else int(max_seconds * rate) + 1
        if f.frames > 0 and cap is not None and f.frames > cap:  # header knows the length
            raise AudioError("too_long", f"{name}: {f.frames / rate:.1f} s is over the {max_seconds:g} s limit")
        sample_cap = None if max_seconds is None else int(max_seconds * MAX_DECODED_RATE)
        if sample_cap is not None and f.frames * channels > sample_cap:
            raise AudioError("too_large", _too_many_samples(name, rate, channels))
        stream = soxr.ResampleStream(rate, sr, 1, dtype="float32", quality="HQ") if rate != sr else None
        block_frames = max(1024, _BLOCK_SAMPLES // channels)
        blocks, total = [], 0
        while True:
            block = f.read(block_frames, dtype="float32", always_2d=True)
            last = len(block) < block_frames
            total += len(block)
            if cap is not None and total > cap:
                raise AudioError("too_long", f"{name}: over the {max_seconds:g} s limit")
            if sample_cap is not None and total * channels > sample_cap:
                raise AudioError("too_large", _too_many_samples(name, rate, channels))
            mono = block.mean(axis=1) if len(block) else np.zeros(0, np.float32)
            blocks.append(stream.resample_chunk(mono, last=last) if stream is not None else mono)
            if last:
                break
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def _decode_ffmpeg(source, demuxer: str, sr: int, max_seconds: float | None, name: str) -> np.ndarray:
    """ffmpeg with the demuxer `sniff_format` chose and access to this one file or pipe only."""
    from_pipe = isinstance(source, bytes)
    target = "pipe:0" if from_pipe else "file:" + os.path.abspath(source)  # "file:": never a URL scheme
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-protocol_whitelist", "pipe" if from_pipe else "file",
           "-f", demuxer, "-i", target]
    if max_seconds is not None:
        cmd += ["-t", f"{max_seconds + 0.05:.3f}"]  # ffmpeg stops decoding here; we see the overflow
    cmd += ["-f", "f32le", "-ac", "1", "-ar", str(sr), "pipe:1"]
    try:
        proc = subprocess.run(cmd, input=source if from_pipe else None, capture_output=True,
                              stdin=None if from_pipe else subprocess.DEVNULL, timeout=FFMPEG_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AudioError("undecodable", f"{name}: decoding took over {FFMPEG_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["unknown error"]
        raise AudioError("undecodable", f"{name}: not a readable audio file ({detail[0]})")
    array = np.frombuffer(proc.stdout, dtype=np.float32).copy()
    _check_duration(len(array) / sr, max_seconds, name)
    return array


def _check_rate(rate: int, name: str) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError("too_large", f"{name}: a sample rate of {rate} Hz is outside {MIN_SAMPLE_RATE}-"
                                      f"{MAX_SAMPLE_RATE} Hz; resample it to 16-48 kHz")


def _too_many_samples(name: str, rate: int, channels: int) -> str:
    return (f"{name}: more samples than the limit allows ({channels} channel(s) at {rate} Hz); "
            "use mono or stereo at 48 kHz or less")


def _check_duration(seconds: float, max_seconds: float | None, name: str) -> None:
    if max_seconds is not None and seconds > max_seconds:
        raise AudioError("too_long", f"{name}: {seconds:.1f} s is over the {max_seconds:g} s limit")


def _resample(array: np.ndarray, rate: int, sr: int) -> np.ndarray:
    return soxr.resample(array, rate, sr, quality="HQ") if rate != sr and array.size else array


def _finish(array: np.ndarray, name: str) -> np.ndarray:
    if array.size == 0:
        raise AudioError("empty", f"{name}: the audio holds no samples")
    if not np.all(np.isfinite(array)):
        raise AudioError("undecodable", f"{name}: the audio holds NaN or infinite samples")
    peak = float(np.abs(array).max())
    if peak > 1.0:  # float audio past full scale, e.g. a float WAV at int16 scale
        array = array / peak
    return np.ascontiguousarray(array, dtype=np.float32)


def _describe(source: Any) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes of audio>"
    if isinstance(source, dict) and source.get("path"):
        return str(source["path"])
    return "<audio>"
