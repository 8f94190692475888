"""Sounds that are not speech: silence, noise colours, mains hum, tones, clicks and music-like signals.

A fine-tune that only ever heard speech learns that every window holds words, and then writes
words on silence (a model fine-tuned on the demo's corpus put text on all 16 such clips, the base
on one). These signals serve twice: the report card decodes them with VAD off and counts the ones
that get text, and the training recipe adds them, labelled with Whisper's no-speech target, so the
model keeps knowing what silence is.

Every clip is a function of its kind, its length and a seed: NumPy only, the same samples on every
machine. Levels are given in dBFS of the clip's RMS; nothing clips at full scale.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .realism import coloured_noise

SAMPLE_RATE = 16000


def _level(x: np.ndarray, dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x)))) if len(x) else 0.0
    return (x * (10 ** (dbfs / 20) / rms) if rms > 0 else x).astype(np.float32)


def _t(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64) / SAMPLE_RATE


def _silence(n, rng):
    return np.zeros(n, np.float32)


def _room_tone(n, rng):  # a quiet room: pink noise far below speech
    return _level(coloured_noise(n, 1.0, rng), -65.0)


def _noise(exponent: float, dbfs: float):
    return lambda n, rng: _level(coloured_noise(n, exponent, rng), dbfs)


def _hum(mains_hz: float):
    def make(n, rng):
        t = _t(n)
        x = sum(np.sin(2 * np.pi * mains_hz * k * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3, 5, 7))
        return _level(x + 0.02 * rng.standard_normal(n), -30.0)
    return make


def _tone(hz: float):
    return lambda n, rng: _level(np.sin(2 * np.pi * hz * _t(n)), -20.0)


def _sweep(n, rng):  # a logarithmic sweep 100 Hz -> 4 kHz, as a test signal or an alarm
    t, f0, f1 = _t(n), 100.0, 4000.0
    duration = max(n / SAMPLE_RATE, 1e-3)
    phase = 2 * np.pi * f0 * duration / np.log(f1 / f0) * (np.exp(t / duration * np.log(f1 / f0)) - 1)
    return _level(np.sin(phase), -20.0)


def _dial_tone(n, rng):  # a European ringing tone: 425 Hz, 1 s on, 4 s off
    t = _t(n)
    return _level(np.sin(2 * np.pi * 425 * t) * ((t % 5.0) < 1.0) + 1e-4 * rng.standard_normal(n), -25.0)


def _clicks(n, rng):  # a metronome: short decaying clicks twice a second
    x = 1e-4 * rng.standard_normal(n)
    click = np.exp(-np.arange(160) / 20.0) * rng.standard_normal(160)
    for start in range(0, n - 160, SAMPLE_RATE // 2):
        x[start : start + 160] += click
    return _level(x, -30.0)


def _crackle(n, rng):  # vinyl-like crackle: random impulses over a faint hiss
    x = 3e-3 * rng.standard_normal(n)
    for start in rng.integers(0, max(1, n - 40), size=max(1, n // 800)):
        width = min(40, n - start)  # a clip shorter than one impulse gets a cut one
        x[start : start + width] += rng.uniform(-1, 1) * np.exp(-np.arange(width) / 6.0)
    return _level(x, -30.0)


def _notes(n, rng, chord: bool):
    """Piano-like notes (harmonics, a fast attack, an exponential decay) from a C-major scale."""
    t_note = _t(SAMPLE_RATE // 2 if not chord else SAMPLE_RATE)
    x = np.zeros(n)
    scale = 261.63 * 2 ** (np.array([0, 2, 4, 5, 7, 9, 11, 12]) / 12)
    for start in range(0, n, len(t_note)):
        picks = rng.choice(scale, size=3 if chord else 1, replace=False)
        note = sum(np.sin(2 * np.pi * f * k * t_note) / k ** 1.5 for f in picks for k in (1, 2, 3, 4))
        note = note * np.exp(-3.0 * t_note) * np.minimum(1, t_note * 200)
        end = min(n, start + len(note))
        x[start:end] += note[: end - start]
    return _level(x, -22.0)


def _drums(n, rng):  # a beat: noise bursts (snare) and low thumps (kick), 120 bpm
    x = np.zeros(n)
    beat = SAMPLE_RATE // 2
    t_hit = _t(beat // 2)
    for i, start in enumerate(range(0, n, beat)):
        hit = (np.sin(2 * np.pi * 60 * t_hit) if i % 2 == 0 else rng.standard_normal(len(t_hit))) * np.exp(-25 * t_hit)
        end = min(n, start + len(hit))
        x[start:end] += hit[: end - start]
    return _level(x, -22.0)


def _music_in_noise(n, rng):  # music over a café's pink noise
    return _level(_notes(n, rng, chord=True) + 0.5 * _noise(1.0, -25.0)(n, rng), -22.0)


# The report card's set: each kind once. The order is the set's: a seed draws clip k from kind k.
KINDS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "silence": _silence,
    "room_tone": _room_tone,
    "white_noise": _noise(0.0, -30.0),
    "pink_noise": _noise(1.0, -30.0),
    "brown_noise": _noise(2.0, -25.0),
    "hum_50hz": _hum(50.0),
    "hum_60hz": _hum(60.0),
    "tone_440hz": _tone(440.0),
    "tone_1khz": _tone(1000.0),
    "sweep": _sweep,
    "ringing_tone": _dial_tone,
    "clicks": _clicks,
    "crackle": _crackle,
    "melody": lambda n, rng: _notes(n, rng, chord=False),
    "chords": lambda n, rng: _notes(n, rng, chord=True),
    "drums": _drums,
    "music_in_noise": _music_in_noise,
}


def nonspeech_clip(kind: str, seconds: float, seed: int = 0) -> np.ndarray:
    """`seconds` of the non-speech sound `kind` (a key of `KINDS`), 16 kHz mono float32, peak below 1."""
    if kind not in KINDS:
        raise ValueError(f"unknown non-speech kind {kind!r}: use one of {', '.join(KINDS)}")
    n = int(round(seconds * SAMPLE_RATE))
    x = KINDS[kind](n, np.random.default_rng([seed, list(KINDS).index(kind)]))
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    return (x * (0.9 / peak) if peak > 0.9 else x).astype(np.float32)


def nonspeech_set(seconds: float = 10.0, seed: int = 0, kinds: tuple[str, ...] | None = None) -> list[tuple[str, np.ndarray]]:
    """``(kind, clip)`` for each of `kinds` (default: every kind), each `seconds` long."""
    return [(kind, nonspeech_clip(kind, seconds, seed)) for kind in (kinds or tuple(KINDS))]


def training_clip(index: int, seed: int, seconds_range: tuple[float, float] = (2.0, 30.0)) -> tuple[str, np.ndarray]:
    """The `index`-th non-speech training clip of a seed: a kind, a length and a level drawn from it."""
    rng = np.random.default_rng([seed, index, 7])
    kind = list(KINDS)[int(rng.integers(len(KINDS)))]
    seconds = float(rng.uniform(*seconds_range))
    clip = nonspeech_clip(kind, seconds, seed=int(rng.integers(1 << 31)))
    gain = 10 ** (float(rng.uniform(-12.0, 6.0)) / 20)
    return kind, np.clip(clip * gain, -0.99, 0.99).astype(np.float32)
