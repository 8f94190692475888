"""Whisper's log-mel, computed only over the frames that hold audio, and its optional smoothing.

`WhisperFeatureExtractor` zero-pads every clip to 30 s (480000 samples) and takes a centred,
reflect-padded STFT of all of it (n_fft 400, hop 160, periodic Hann), so a 3 s clip spends 90 % of
its time on frames of silence. Those frames are the STFT of zeros: their mel energy is 0, clamped to
1e-10, i.e. log10 = -10, and after the per-clip clamp to ``max - 8`` every one of them holds the
same value, the clip's *floor*. `log_mel` therefore computes only the first `n_frames` frames (the
ones whose 400-sample window overlaps the audio) plus that floor, and `pad_features` rebuilds the
(n_mels, 3000) array the model wants. Together they reproduce
``WhisperFeatureExtractor(audio, sampling_rate=16000).input_features[0]`` to 1e-4 (the test pins it)
for clips from one sample to 30 s.

Reference: transformers/models/whisper/feature_extraction_whisper.py (``_torch_extract_fbank_features``,
the path it takes when torch is installed) and openai/whisper ``whisper/audio.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from .io import HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES, SAMPLE_RATE

LOG_FLOOR = 1e-10  # mel energy clamp before log10 (Whisper's)
DYNAMIC_RANGE = 8.0  # log10 units kept below the clip's maximum
_HALF = N_FFT // 2  # centre=True pads n_fft // 2 samples on each side


_MEL_BANKS: dict[int, np.ndarray] = {}


def use_mel_filters(n_mels: int, bank: np.ndarray) -> None:
    """Install a bank computed elsewhere (a pool worker gets the parent's and skips importing transformers)."""
    assert bank.shape == (1 + N_FFT // 2, n_mels) and bank.dtype == np.float32, bank.shape
    _MEL_BANKS[n_mels] = bank


def mel_filters(n_mels: int = 80) -> np.ndarray:
    """Slaney mel filter bank of Whisper, float32 of shape (n_freqs=201, n_mels).

    The feature extractor's own (transformers.audio_utils.mel_filter_bank), cast to float32 as its
    torch path does.
    """
    if n_mels not in _MEL_BANKS:
        _MEL_BANKS[n_mels] = _transformers_mel_filters(n_mels)
    return _MEL_BANKS[n_mels]


def _transformers_mel_filters(n_mels: int) -> np.ndarray:
    from transformers.audio_utils import mel_filter_bank  # parent only: pool workers get its bank (use_mel_filters)

    bank = mel_filter_bank(
        num_frequency_bins=1 + N_FFT // 2,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=SAMPLE_RATE / 2,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    return np.ascontiguousarray(bank, dtype=np.float32)


@lru_cache(maxsize=1)
def _torch_state():
    import torch  # deferred (seconds): importing the package, e.g. for `whisper-sv --help`, stays quick

    return torch, torch.hann_window(N_FFT)  # periodic Hann, as the feature extractor uses


def frames_with_audio(n_samples: int) -> int:
    """How many of the 3000 frames see any of the first `n_samples` samples.

    Frame t is centred on sample 160 t and spans samples [160 t - 200, 160 t + 200), so it holds
    audio iff 160 t - 200 < n_samples.
    """
    return min(N_FRAMES, -(-(min(n_samples, N_SAMPLES) + _HALF) // HOP_LENGTH))


def log_mel(audio: np.ndarray, n_mels: int = 80) -> tuple[np.ndarray, int, float]:
    """Whisper's log-mel of 16 kHz mono `audio`, only over the frames that hold audio.

    Returns ``(compact, n_frames, pad_value)``: `compact` is float32 of shape (n_mels, n_frames),
    and every frame past `n_frames` of the 3000-frame window equals `pad_value` (the clip's floor,
    ``(max(-10, max_log - 8) + 4) / 4``). Clips over 30 s are truncated, as the feature extractor does.
    """
    torch, window = _torch_state()
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)[:N_SAMPLES]
    if audio.size == 0:
        raise ValueError("log_mel needs at least one sample")
    n_frames = frames_with_audio(audio.size)
    end = HOP_LENGTH * (n_frames - 1) + _HALF  # last sample (exclusive) the last frame reads
    if end <= N_SAMPLES:
        # The 30 s window is zeros past the audio; only its first `end` samples matter, plus the
        # left reflect pad (which reads samples 1..200, zeros included for very short clips).
        signal = np.zeros(end + _HALF, dtype=np.float32)
        signal[_HALF : _HALF + audio.size] = audio
        signal[:_HALF] = signal[2 * _HALF : _HALF : -1]
    else:  # the last frames reach the reflect pad on the right: use the whole window
        signal = np.zeros(N_SAMPLES, dtype=np.float32)
        signal[: audio.size] = audio
        signal = np.pad(signal, _HALF, mode="reflect")
    stft = torch.stft(torch.from_numpy(signal), N_FFT, HOP_LENGTH, window=window, center=False, return_complex=True)
    power = (stft[:, :n_frames].abs() ** 2).contiguous()
    mel = torch.from_numpy(mel_filters(n_mels)).T @ power
    log_spec = torch.clamp(mel, min=LOG_FLOOR).log10()
    silent = torch.clamp(torch.zeros((), dtype=torch.float32), min=LOG_FLOOR).log10()  # a frame of zeros
    peak = log_spec.max()
    if n_frames < N_FRAMES:  # the floor frames take part in the per-clip max as well
        peak = torch.maximum(peak, silent)
    floor = peak - DYNAMIC_RANGE
    log_spec = (torch.maximum(log_spec, floor) + 4.0) / 4.0
    pad_value = float((torch.maximum(silent, floor) + 4.0) / 4.0)
    return log_spec.numpy(), n_frames, pad_value


def pad_features(compact: np.ndarray, n_frames: int | None = None, pad_value: float = -1.5, frames: int = N_FRAMES) -> np.ndarray:
    """The (n_mels, `frames`) float32 Whisper input from a compact log-mel and its floor (3,000
    frames = Whisper's 30 s window; fewer for a shorter encoder window, encoder_window.py)."""
    compact = np.asarray(compact, dtype=np.float32)
    n_frames = compact.shape[-1] if n_frames is None else int(n_frames)
    assert compact.ndim == 2 and compact.shape[1] == n_frames <= frames <= N_FRAMES, (compact.shape, n_frames, frames)
    full = np.full((compact.shape[0], frames), pad_value, dtype=np.float32)
    full[:, :n_frames] = compact
    return full


def collate_features(rows: Sequence[dict[str, Any]], frames: int = N_FRAMES):
    """Stack feature-store rows into a float32 torch tensor (batch, n_mels, `frames`), 3000 frames
    being Whisper's 30 s window.

    Each row needs ``input_features`` (n_mels, n_frames; nested lists or an array, any float
    dtype), ``n_frames`` and ``pad_value``, as `FeatureStore.dataset()` yields them.
    """
    import torch  # deferred, as in _torch_state

    batch = [
        pad_features(_as_2d(r["input_features"], r["n_frames"]), r["n_frames"], r["pad_value"], frames) for r in rows
    ]
    return torch.from_numpy(np.stack(batch))


def _as_2d(features: Any, n_frames: int) -> np.ndarray:
    array = np.asarray(features, dtype=np.float32)
    if array.ndim == 1:  # a flat row: (n_mels * n_frames,)
        array = array.reshape(-1, int(n_frames))
    return array


# ---------------------------------------------------------------------------------------------
# Smoothing (the seed notebook's experiment): OpenCV filters on the log-mel "image".

SMOOTHING_KINDS = ("gaussian", "median", "bilateral")


@dataclass(frozen=True)
class Smoothing:
    """An OpenCV filter over the (n_mels, 3000) log-mel image, applied before storing.

    `gaussian`: ``cv2.GaussianBlur`` with an odd `ksize` and `sigma` (0 = from ksize);
    `median`: ``cv2.medianBlur`` (float32 images allow only `ksize` 3 or 5);
    `bilateral`: ``cv2.bilateralFilter`` with diameter `d` and `sigma_color` (log-mel units,
    the scaled values span about 2) and `sigma_space` (pixels).
    """

    kind: str = "gaussian"
    ksize: int = 5
    sigma: float = 1.0
    d: int = 5
    sigma_color: float = 0.2
    sigma_space: float = 2.0

    def __post_init__(self):
        if self.kind not in SMOOTHING_KINDS:
            raise ValueError(f"smoothing kind {self.kind!r}: pick one of {SMOOTHING_KINDS}")
        if self.kind in ("gaussian", "median") and (self.ksize < 1 or self.ksize % 2 == 0):
            raise ValueError(f"smoothing ksize={self.ksize}: use an odd kernel size (3, 5, 7, ...)")
        if self.kind == "median" and self.ksize not in (3, 5):
            raise ValueError(
                f"median ksize={self.ksize}: OpenCV's medianBlur takes only 3 or 5 on float32 images; use 3 or 5"
            )
        if self.kind == "gaussian" and self.sigma < 0:
            raise ValueError(f"gaussian sigma={self.sigma}: use 0 (derive from ksize) or a positive value")
        if self.kind == "bilateral" and (self.d < 1 or self.sigma_color <= 0 or self.sigma_space <= 0):
            raise ValueError("bilateral smoothing needs d >= 1, sigma_color > 0 and sigma_space > 0")

    @classmethod
    def parse(cls, value: "Smoothing | dict | str | None") -> "Smoothing | None":
        """A `Smoothing` from itself, a dict of its fields, a kind name, or None (off)."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, str):
            return None if value in ("", "none") else cls(kind=value)
        return cls(**value)

    @property
    def radius(self) -> int:
        """How many frames past the audio the filter can change (its half-width)."""
        return (self.d if self.kind == "bilateral" else self.ksize) // 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def smooth_image(image: np.ndarray, spec: Smoothing) -> np.ndarray:
    """Apply `spec` to a float32 (n_mels, frames) image with OpenCV's default border."""
    import cv2  # only smoothing needs OpenCV

    image = np.ascontiguousarray(image, dtype=np.float32)
    if spec.kind == "gaussian":
        return cv2.GaussianBlur(image, (spec.ksize, spec.ksize), spec.sigma)
    if spec.kind == "median":
        return cv2.medianBlur(image, spec.ksize)
    return cv2.bilateralFilter(image, spec.d, spec.sigma_color, spec.sigma_space)


def smooth_log_mel(
    compact: np.ndarray, n_frames: int, pad_value: float, spec: Smoothing | None
) -> tuple[np.ndarray, int]:
    """Smooth a compact log-mel so that padding it afterwards equals smoothing the padded image.

    A filter of radius r changes at most r frames of floor past the audio; everything beyond is
    a constant region the filter leaves constant. So the compact part is extended by 2 r floor
    frames, filtered, and the first ``n_frames + r`` frames are kept; near the end of the 30 s
    window (where the image border would differ) the whole padded image is filtered instead.
    Returns ``(compact, n_frames)``; `pad_value` is unchanged.
    """
    if spec is None:
        return compact, n_frames
    r = spec.radius
    if n_frames + 2 * r >= N_FRAMES:
        return smooth_image(pad_features(compact, n_frames, pad_value), spec), N_FRAMES
    extended = np.concatenate(
        [compact, np.full((compact.shape[0], 2 * r), pad_value, dtype=np.float32)], axis=1
    )
    return np.ascontiguousarray(smooth_image(extended, spec)[:, : n_frames + r]), n_frames + r
