"""Recordings stitched from single-sentence clips, with the exact text and sentence boundaries.

Whisper is used on long recordings: faster-whisper and the Transformers pipeline cut them into 30 s
windows and read timestamp tokens to know where the next window starts. A corpus of one sentence
per clip never shows a model either, so a fine-tune on it can forget both (it stops after a few
sentences, or invents timestamps). Stitching clips of one split with pauses between them gives
recordings whose text and sentence boundaries are known exactly:

* the report card decodes recordings of a minute or more the three ways users do and compares the
  segment boundaries the decoders give with the true ones;
* the training recipe stitches clips into windows of up to 30 s and labels a share of them with
  Whisper's timestamp tokens (`timestamp_labels`).

Each clip is trimmed to its sound first (the synthetic voices leave a few hundred milliseconds of
near-silence at either end), so a boundary is where the speech starts or ends, not where a file did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

SAMPLE_RATE = 16000
TIME_PRECISION = 0.02  # s per Whisper timestamp token (<|0.00|> ... <|30.00|>: 1,501 tokens)
_FRAME = 160  # 10 ms: the trimming's resolution


@dataclass(frozen=True)
class Segment:
    """One sentence of a stitched recording: seconds from the recording's start, and its text."""

    start: float
    end: float
    text: str


@dataclass
class Recording:
    """A stitched recording: 16 kHz mono float32 `audio` and its sentences in order."""

    id: str
    audio: np.ndarray
    segments: list[Segment] = field(default_factory=list)
    speakers: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments)

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    def boundaries(self) -> list[float]:
        """Every sentence's start and end, in seconds."""
        return [t for s in self.segments for t in (s.start, s.end)]


def trim_silence(audio: np.ndarray, below_peak_db: float = 40.0, margin_s: float = 0.05) -> np.ndarray:
    """`audio` without its quiet head and tail: 10 ms frames more than `below_peak_db` under the
    loudest frame, less `margin_s` kept on either side. Audio with no sound comes back unchanged."""
    n = len(audio) // _FRAME
    if n == 0:
        return audio
    rms = np.sqrt(np.mean(np.square(audio[: n * _FRAME].reshape(n, _FRAME), dtype=np.float64), axis=1))
    peak = rms.max()
    if peak <= 0:
        return audio
    loud = np.flatnonzero(rms >= peak * 10 ** (-below_peak_db / 20))
    margin = int(margin_s * SAMPLE_RATE)
    start = max(0, loud[0] * _FRAME - margin)
    end = min(len(audio), (loud[-1] + 1) * _FRAME + margin)
    return audio[start:end]


def stitch(clips: Sequence[tuple[np.ndarray, str]], rng: np.random.Generator,
           pause_s: tuple[float, float] = (0.4, 1.2), lead_s: tuple[float, float] = (0.1, 0.6),
           floor_dbfs: float = -60.0) -> tuple[np.ndarray, list[Segment]]:
    """Join `clips` (audio, text) into one recording with a pause drawn from `pause_s` between
    them and a lead-in and tail drawn from `lead_s`; pauses hold a faint noise floor (no recording
    is digital zero). Returns the audio and each clip's `Segment`. Every clip starts on Whisper's
    20 ms grid and is padded with that floor to a whole number of 20 ms steps, so each boundary is a
    timestamp token's time exactly."""
    pieces: list[np.ndarray] = []
    segments: list[Segment] = []
    at = 0
    step = int(TIME_PRECISION * SAMPLE_RATE)  # 320 samples

    def floor(n: int) -> np.ndarray:
        return (rng.standard_normal(n) * 10 ** (floor_dbfs / 20)).astype(np.float32)

    def gap(seconds: float) -> np.ndarray:
        return floor(int(round(seconds / TIME_PRECISION)) * step)

    pieces.append(gap(rng.uniform(*lead_s)))
    at += len(pieces[-1])
    for i, (audio, text) in enumerate(clips):
        if i:
            pieces.append(gap(rng.uniform(*pause_s)))
            at += len(pieces[-1])
        audio = np.asarray(audio, np.float32)
        audio = np.concatenate([audio, floor(-len(audio) % step)])
        pieces.append(audio)
        segments.append(Segment(round(at / SAMPLE_RATE, 2), round((at + len(audio)) / SAMPLE_RATE, 2), text.strip()))
        at += len(audio)
    pieces.append(gap(rng.uniform(*lead_s)))
    return np.concatenate(pieces), segments


def long_recordings(clips: Iterable[tuple[str, np.ndarray, str, str]], count: int = 4, min_seconds: float = 60.0,
                    seed: int = 0) -> list[Recording]:
    """Up to `count` recordings of at least `min_seconds`, each from consecutive `clips`
    ``(id, audio, text, speaker)`` (trimmed, then stitched with pauses); fewer when the clips run out.
    The length is counted with the shortest pauses `stitch` draws, so no recording falls short."""
    rng = np.random.default_rng([seed, 60])
    recordings: list[Recording] = []
    pending: list[tuple[np.ndarray, str, str]] = []
    seconds = 0.2  # the two shortest leads
    for _, audio, text, speaker in clips:
        audio = trim_silence(audio)
        if not text.strip() or len(audio) == 0:
            continue
        seconds += len(audio) / SAMPLE_RATE + (0.4 if pending else 0.0)  # the shortest pause before it
        pending.append((audio, text, speaker))
        if seconds >= min_seconds:
            audio_out, segments = stitch([(a, t) for a, t, _ in pending], rng)
            recordings.append(Recording(f"long-{len(recordings):02d}", audio_out, segments, [s for _, _, s in pending]))
            pending, seconds = [], 0.2
            if len(recordings) == count:
                break
    return recordings


def timestamp_token(seconds: float, timestamp_begin: int) -> int:
    """The id of Whisper's timestamp token for `seconds` (0-30 s in 20 ms steps); `timestamp_begin`
    is the id of ``<|0.00|>`` (the token after ``<|notimestamps|>``)."""
    steps = int(round(seconds / TIME_PRECISION))
    if not 0 <= steps <= 1500:
        raise ValueError(f"{seconds} s is outside Whisper's 30 s window of timestamps")
    return timestamp_begin + steps


def timestamp_labels(prefix: Sequence[int], segments: Sequence[Segment], texts: Sequence[Sequence[int]],
                     timestamp_begin: int, eot: int) -> list[int]:
    """Whisper's timestamped target: ``prefix`` (sot, language, task: no ``<|notimestamps|>``), then
    per segment ``<|start|> text <|end|>``, then eot. `texts` are each segment's text tokens."""
    ids = list(prefix)
    for segment, tokens in zip(segments, texts, strict=True):
        ids += [timestamp_token(segment.start, timestamp_begin), *tokens, timestamp_token(segment.end, timestamp_begin)]
    return ids + [eot]
