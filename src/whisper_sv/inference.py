"""Serving backends: one `Transcriber` protocol, faster-whisper (CTranslate2) and Transformers.

Both backends share the same front and back ends, so they differ only in the decoder:

1. `speech_chunks` finds speech with Silero VAD (the ONNX model that ships inside the
   faster-whisper wheel, so it works offline) after a cheap energy gate. Silence and noise give no
   chunks, and the answer is `NO_SPEECH` instead of a sentence Whisper invents for empty input.
2. Speech spans are merged into chunks of at most 30 s (one encoder window), cut in pauses, so
   long audio is transcribed in pieces and nothing is truncated.
3. Each chunk is decoded with Swedish forced and no timestamps (the fine-tuned models are
   trained without them; DESIGN.md), and segments Whisper itself marks as non-speech
   (``no_speech_prob`` high *and* ``avg_logprob`` low, openai/whisper's rule) are dropped.

`pick_backend` turns a model spec into a backend: a CTranslate2 folder (``model.bin``), a training
run with ``ct2/`` beside ``final/``, or ``packaged:whisper-base`` go to faster-whisper (int8 on
CPU, float16 on CUDA); anything else to Transformers.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from .audio import CHUNK_LENGTH, SAMPLE_RATE
from .models import LANGUAGE, PACKAGED_BASE, TASK

log = logging.getLogger(__name__)

NO_SPEECH = "no speech detected"
DEMO_RUN = Path("runs/cpu-demo")  # what the training issue's `make demo` writes (final/ and ct2/)
BACKENDS = ("auto", "faster-whisper", "transformers")

# Energy gate: a clip whose loudest 30 ms frame is below this is silence; no VAD or model needed.
SILENCE_DBFS = -60.0
_FRAME = SAMPLE_RATE * 30 // 1000  # 480 samples = 30 ms


@dataclass(frozen=True)
class InferenceOptions:
    """How a backend decodes and what it counts as speech; change with `dataclasses.replace`."""

    beam_size: int = 1  # greedy: the setting the project's WER figures and the benchmark use
    # Temperature 0 only: deterministic, and one decode per chunk. faster-whisper's default
    # fallback (0.2 ... 1.0 when a decode looks bad) re-decodes weak audio up to five times,
    # which made a 2 s clip take 1 to 7 s on 2 cores.
    temperatures: tuple[float, ...] = (0.0,)
    vad_threshold: float = 0.5  # Silero speech probability above which a 32 ms frame is speech
    min_silence_ms: int = 500  # a pause this long separates two speech spans
    speech_pad_ms: int = 200  # kept either side of each span so word edges are not clipped
    max_chunk_s: float = float(CHUNK_LENGTH)  # one Whisper window
    no_speech_prob: float = 0.6  # openai/whisper's no_speech_threshold ...
    min_avg_logprob: float = -1.0  # ... applied together with its logprob_threshold

    def __post_init__(self):
        if self.beam_size < 1:
            raise ValueError(f"beam_size={self.beam_size}: use 1 (greedy) or more")
        if not 0 < self.max_chunk_s <= CHUNK_LENGTH:
            raise ValueError(f"max_chunk_s={self.max_chunk_s}: Whisper windows hold at most {CHUNK_LENGTH} s")


class Transcriber(Protocol):
    """What the app, the CLI and the benchmark need from a backend."""

    name: str  # e.g. "faster-whisper int8 (…/ct2)"

    def transcribe(self, audio: np.ndarray) -> str:
        """16 kHz mono float32 audio, shape (n_samples,) -> transcript, or `NO_SPEECH`."""
        ...


# ---------------------------------------------------------------------------------------------
# Shared front end: where the speech is
# ---------------------------------------------------------------------------------------------


def peak_dbfs(audio: np.ndarray) -> float:
    """Level of the loudest 30 ms frame in dB relative to full scale (-inf for digital silence)."""
    n = len(audio) // _FRAME * _FRAME
    frames = audio[:n].reshape(-1, _FRAME) if n else audio.reshape(1, -1)
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1)).max(initial=0.0)
    return float(20 * np.log10(rms)) if rms > 0 else float("-inf")


def speech_chunks(audio: np.ndarray, options: InferenceOptions = InferenceOptions()) -> list[np.ndarray]:
    """The parts of `audio` that hold speech, merged into chunks of at most ``max_chunk_s`` seconds.

    Returns an empty list for silence and noise. Chunks are contiguous slices of `audio` (pauses
    inside a chunk are kept, so Whisper hears natural speech), each cut in a pause where possible.
    """
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    if len(audio) == 0 or peak_dbfs(audio) < SILENCE_DBFS:
        return []
    vad = VadOptions(
        threshold=options.vad_threshold,
        min_silence_duration_ms=options.min_silence_ms,
        speech_pad_ms=options.speech_pad_ms,
        # Spans longer than a window are split at their last pause by Silero's own rule.
        max_speech_duration_s=options.max_chunk_s - 2 * options.speech_pad_ms / 1000,
    )
    spans = get_speech_timestamps(audio, vad, sampling_rate=SAMPLE_RATE)
    limit = int(options.max_chunk_s * SAMPLE_RATE)
    chunks, start, end = [], None, None
    for span in spans:
        s, e = span["start"], min(len(audio), span["end"])  # spans already carry speech_pad_ms
        if start is not None and e - start <= limit:
            end = e  # grow the current chunk over the pause
            continue
        if start is not None:
            chunks.append(audio[start:end])
        start, end = s, e
    if start is not None:
        chunks.append(audio[start:end])
    return [c[i : i + limit] for c in chunks for i in range(0, len(c), limit)]  # never over a window


def _join(texts: Sequence[str]) -> str:
    text = " ".join(t.strip() for t in texts if t and t.strip())
    return text or NO_SPEECH


# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------


def _cuda_available() -> bool:
    try:
        import ctranslate2

        return ctranslate2.get_cuda_device_count() > 0
    except Exception:  # a CPU-only build without CUDA libraries
        return False


class FasterWhisperBackend:
    """faster-whisper on a CTranslate2 Whisper folder; int8 on CPU, float16 on CUDA."""

    def __init__(self, ct2_dir: str | Path, device: str = "auto", compute_type: str | None = None,
                 options: InferenceOptions = InferenceOptions(), cpu_threads: int | None = None,
                 label: str | None = None):
        from faster_whisper import WhisperModel

        if device == "auto":
            device = "cuda" if _cuda_available() else "cpu"
        compute_type = compute_type or ("float16" if device == "cuda" else "int8")
        self.ct2_dir, self.options = Path(ct2_dir), options
        # `label` (the model spec) names the model on the page without showing server paths.
        self.name = f"faster-whisper {compute_type} on {device} ({label or self.ct2_dir.name})"
        self.model = WhisperModel(
            str(self.ct2_dir), device=device, compute_type=compute_type,
            cpu_threads=cpu_threads or os.cpu_count() or 1, local_files_only=True,
        )

    def transcribe(self, audio: np.ndarray) -> str:
        texts = []
        for chunk in speech_chunks(audio, self.options):
            segments, _ = self.model.transcribe(
                chunk, language=LANGUAGE, task=TASK, beam_size=self.options.beam_size,
                temperature=list(self.options.temperatures),
                without_timestamps=True, condition_on_previous_text=False, vad_filter=False,
                no_speech_threshold=self.options.no_speech_prob, log_prob_threshold=self.options.min_avg_logprob,
            )
            for seg in segments:  # faster-whisper already skips these; the check keeps the rule explicit
                if seg.no_speech_prob > self.options.no_speech_prob and seg.avg_logprob < self.options.min_avg_logprob:
                    continue
                texts.append(seg.text)
        return _join(texts)


class TransformersBackend:
    """`WhisperForConditionalGeneration` through `whisper_sv.transcribe.transcribe_arrays`."""

    def __init__(self, model_spec: str, device: str = "cpu", options: InferenceOptions = InferenceOptions()):
        from .models import load_model

        self.model, self.processor = load_model(model_spec, device=device)
        self.options = options
        self.name = f"transformers on {device} ({_label(model_spec)})"
        self._lock = threading.Lock()  # generate() on one model is not safe from two threads

    def transcribe(self, audio: np.ndarray) -> str:
        from .transcribe import DecodeOptions, transcribe_arrays

        chunks = speech_chunks(audio, self.options)
        if not chunks:
            return NO_SPEECH
        with self._lock:  # every chunk is <= 30 s, so transcribe_arrays batches them
            texts = transcribe_arrays(self.model, self.processor, chunks, DecodeOptions(beam_size=self.options.beam_size))
        return _join(texts)


# ---------------------------------------------------------------------------------------------
# Which backend a model spec gets
# ---------------------------------------------------------------------------------------------


def default_model_spec() -> str:
    """The app's default: the demo run's CTranslate2 export when it exists, else the packaged base."""
    return str(DEMO_RUN / "ct2") if (DEMO_RUN / "ct2" / "model.bin").is_file() else PACKAGED_BASE


def ct2_dir_for(model_spec: str) -> Path | None:
    """The CTranslate2 folder that serves `model_spec`, or None when only Transformers can.

    ``packaged:whisper-base`` -> the packaged CT2 folder; a folder with ``model.bin`` -> itself; a
    run folder, or its ``final/``, with ``ct2/model.bin`` beside -> that ``ct2/``.
    """
    if model_spec == PACKAGED_BASE:
        from .packaged import packaged_ct2_dir

        return packaged_ct2_dir()
    path = Path(model_spec).expanduser()
    if not path.is_dir():
        return None
    for candidate in (path, path / "ct2", path.parent / "ct2"):
        if (candidate / "model.bin").is_file():
            return candidate
    return None


def pick_backend(model_spec: str | None = None, backend: str = "auto", device: str = "auto",
                 options: InferenceOptions = InferenceOptions()) -> Transcriber:
    """Load the backend that serves `model_spec` (default: `default_model_spec`).

    ``backend="auto"`` prefers faster-whisper whenever a CTranslate2 folder exists for the spec;
    ``"transformers"`` forces the Transformers model (for the packaged base, its converted copy).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose one of {', '.join(BACKENDS)}")
    spec = model_spec or default_model_spec()
    started = time.perf_counter()
    ct2 = ct2_dir_for(spec) if backend != "transformers" else None
    if backend == "faster-whisper" and ct2 is None:
        raise ValueError(
            f"model {spec!r} has no CTranslate2 export (a folder with model.bin); run "
            "`whisper-sv export` first or use --backend transformers"
        )
    if ct2 is not None:
        chosen: Transcriber = FasterWhisperBackend(ct2, device=device, options=options, label=_label(spec))
    else:
        if backend == "transformers" and Path(spec).is_dir() and (Path(spec) / "model.bin").is_file():
            raise ValueError(f"{spec} is a CTranslate2 export; Transformers needs the run's final/ folder")
        torch_device = "cuda" if device == "auto" and _torch_cuda() else ("cpu" if device == "auto" else device)
        chosen = TransformersBackend(_transformers_spec(spec), device=torch_device, options=options)
    log.info("loaded %s in %.1f s", chosen.name, time.perf_counter() - started)
    return chosen


def _label(spec: str) -> str:
    """A spec as shown to users: Hub ids and packaged names as is, folders by their last two parts."""
    path = Path(spec).expanduser()
    return "/".join(path.parts[-2:]) if path.is_dir() else spec


def _transformers_spec(spec: str) -> str:
    """A run folder's ``final/`` when given the run folder; the spec itself otherwise."""
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "config.json").is_file() and (path / "final" / "config.json").is_file():
        return str(path / "final")
    return spec


def _torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
