"""Acoustic realism for the synthetic corpus: a room, background noise, a telephone
line, a recording level and a speaking speed, drawn per clip.

A clean synthetic clip is the same sound every time a sentence is said; real recordings differ in
all of the above, and a model fine-tuned only on clean clips learns that they never do. Each clip
draws its `Effects` from its own random generator (seeded by the corpus seed and the clip's
index), so a corpus is the same for a seed whichever worker renders which clip. Everything is
NumPy and soxr: no filter design library, and the same bytes on every machine with the same
libraries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import soxr

NOISE_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power falls as 1/f^exponent
DIRECT_TO_REVERB_DB = 3.0  # the direct sound this much above the room's tail: a speaker a metre or two away
FIRST_REFLECTION_S = 0.003  # the tail starts a few milliseconds after the direct sound
TELEPHONE_BAND_HZ = (300.0, 3400.0)  # the passband of a (narrowband) telephone line
BAND_EDGE_HZ = 100.0  # width of the raised-cosine slope at each edge of the band


@dataclass(frozen=True)
class Effects:
    """What happens to one clip between the speaker's mouth and the file, in that order."""

    speed: float  # speaking-speed factor: 1.05 is 5 % faster (the pitch follows, as on tape)
    rt60_s: float | None  # the room's reverberation time (to -60 dB); None: no room
    noise_colour: str | None  # a key of NOISE_COLOURS; None: no background noise
    snr_db: float  # speech over that noise, dB (unused without noise)
    telephone: bool  # band-limited to TELEPHONE_BAND_HZ
    gain_db: float  # the recording level's change, dB; the result is clipped at full scale
    noise_seed: int  # seeds the room's and the noise's random samples

    def describe(self) -> str:
        """One line for the corpus TSV: ``speed 1.03 room 0.41 s pink noise 17.2 dB telephone gain -4.0 dB``."""
        parts = [f"speed {self.speed:.3f}"]
        if self.rt60_s is not None:
            parts.append(f"room {self.rt60_s:.2f} s")
        if self.noise_colour is not None:
            parts.append(f"{self.noise_colour} noise {self.snr_db:.1f} dB")
        if self.telephone:
            parts.append("telephone")
        parts.append(f"gain {self.gain_db:.1f} dB")
        return " ".join(parts)


def draw_effects(
    rng: np.random.Generator,
    *,
    snr_db: Sequence[float] | None,
    reverb_share: float,
    rt60_s: Sequence[float],
    telephone_share: float,
    gain_db: Sequence[float],
    speed: Sequence[float],
) -> Effects:
    """One clip's effects, each drawn uniformly from its range (``[low, high]``) or by its share.

    Every value is drawn whether or not it is used, so turning one effect off (a share of 0, or
    ``snr_db`` None) leaves the others' draws for every clip as they were.
    """
    noise_colour = list(NOISE_COLOURS)[int(rng.integers(len(NOISE_COLOURS)))]
    snr = float(rng.uniform(*snr_db)) if snr_db is not None else float(rng.uniform())
    in_room, rt60 = bool(rng.uniform() < reverb_share), float(rng.uniform(*rt60_s))
    return Effects(
        speed=round(float(rng.uniform(*speed)), 4),
        rt60_s=round(rt60, 3) if in_room else None,
        noise_colour=noise_colour if snr_db is not None else None,
        snr_db=round(snr, 2),
        telephone=bool(rng.uniform() < telephone_share),
        gain_db=round(float(rng.uniform(*gain_db)), 2),
        noise_seed=int(rng.integers(1 << 62)),
    )


def apply_effects(audio: np.ndarray, rate: int, effects: Effects) -> np.ndarray:
    """`audio` (float32 mono (n,), at `rate` Hz) as `effects` change it; float32, length changed by speed and room."""
    rng = np.random.default_rng(effects.noise_seed)
    out = audio.astype(np.float64)
    if effects.speed != 1.0:
        out = soxr.resample(out, rate * effects.speed, rate)  # played back faster: fewer samples at the same rate
    if effects.rt60_s is not None:
        out = _reverberate(out, rate, effects.rt60_s, rng)
    if effects.noise_colour is not None:
        noise = coloured_noise(len(out), NOISE_COLOURS[effects.noise_colour], rng)
        out = out + noise * (_rms(out) / _rms(noise) * 10 ** (-effects.snr_db / 20))
    if effects.telephone:
        out = band_limit(out, rate, *TELEPHONE_BAND_HZ)
    return np.clip(out * 10 ** (effects.gain_db / 20), -1, 1).astype(np.float32)


def room_response(rate: int, rt60_s: float, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room impulse response (float64, ``rt60_s * rate`` samples): the direct sound, then
    Gaussian noise decaying exponentially to -60 dB at `rt60_s`, DIRECT_TO_REVERB_DB below it."""
    n = max(2, int(rt60_s * rate))
    t = np.arange(n) / rate
    tail = rng.standard_normal(n) * 10 ** (-3 * t / rt60_s)
    tail[: int(FIRST_REFLECTION_S * rate) + 1] = 0
    tail *= 10 ** (-DIRECT_TO_REVERB_DB / 20) / np.sqrt(np.sum(tail**2))
    tail[0] = 1.0
    return tail


def _reverberate(audio: np.ndarray, rate: int, rt60_s: float, rng: np.random.Generator) -> np.ndarray:
    """`audio` in the room, its tail kept (the room rings on after the last word), at the dry peak level."""
    response = room_response(rate, rt60_s, rng)
    size = len(audio) + len(response) - 1
    n_fft = 1 << (size - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(audio, n_fft) * np.fft.rfft(response, n_fft), n_fft)[:size]
    return wet * (np.abs(audio).max() / max(np.abs(wet).max(), 1e-12))


def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """`n` samples (float64) of noise whose power falls as 1/f^`exponent` (0 white, 1 pink, 2 brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = f[1] if len(f) > 1 else 1.0  # no infinite DC
    return np.fft.irfft(spectrum / f ** (exponent / 2), n)


def band_limit(audio: np.ndarray, rate: int, low_hz: float, high_hz: float) -> np.ndarray:
    """`audio` with everything outside [low_hz, high_hz] removed (raised-cosine edges BAND_EDGE_HZ wide)."""
    spectrum = np.fft.rfft(audio)
    f = np.fft.rfftfreq(len(audio), 1 / rate)
    rise = np.clip((f - low_hz + BAND_EDGE_HZ / 2) / BAND_EDGE_HZ, 0, 1)
    fall = np.clip((high_hz + BAND_EDGE_HZ / 2 - f) / BAND_EDGE_HZ, 0, 1)
    gain = (0.5 - 0.5 * np.cos(np.pi * rise)) * (0.5 - 0.5 * np.cos(np.pi * fall))
    return np.fft.irfft(spectrum * gain, len(audio))


def _rms(x: np.ndarray) -> float:
    return max(float(np.sqrt(np.mean(x**2))), 1e-12)
