"""Serving backends: one `Transcriber` protocol, faster-whisper (CTranslate2) and Transformers,
and ``whisper-sv transcribe``, which serves audio files with them.

Both backends share the same front and back ends:

1. `speech_chunks` finds speech with Silero VAD (the ONNX model that ships inside the
   faster-whisper wheel, so it works offline) after a cheap energy gate. Silence and noise give no
   chunks, and the answer is `NO_SPEECH` instead of a sentence Whisper invents for empty input.
2. Speech spans are merged into chunks of at most 30 s (one encoder window), cut in pauses, so
   long audio is transcribed in pieces and nothing is truncated.
3. Each chunk gets the log-mel training uses (`logmel.log_mel`) and is decoded with Swedish forced
   and no timestamps (the fine-tuned models are trained without them; DESIGN.md).

The CTranslate2 backend also drops chunks Whisper itself marks as non-speech (``no_speech_prob``
high *and* ``avg_logprob`` low, openai/whisper's rule). Every chunk's text, in both backends, then
gets the compression-ratio check: a chunk that compresses like a repetition loop (zlib ratio over
``max_compression_ratio``) is cut at the loop by `decoding.cut_repetitions`, each run of a repeated word
group kept once (177 s of speech came back with runs of ~300 repeated words). Cutting
costs no second decode and keeps transcripts deterministic; re-decoding at higher temperatures
(``temperatures``) still runs first when configured. The backends differ in the encoder window:
Transformers' Whisper encoder accepts only the full 30 s (3,000 frames), so a 2 s clip costs as
much as a 30 s one. The CTranslate2 backend encodes a window fitted to the chunk (`decoding.window_frames`:
the chunk + 1 s, at least ``min_window_s``, 15 s by default): on 2 CPU cores that makes the encoder
3-4x cheaper on a 5 s request and left WER on the synthetic test set unchanged (docs/benchmarks.md,
`make bench-window`). ``min_window_s=30`` restores Whisper's own window.

`pick_backend` turns a model spec into a backend: a CTranslate2 folder (``model.bin``), a training
run with ``ct2/`` beside ``final/``, or ``packaged:whisper-base`` go to CTranslate2 through
faster-whisper (int8 on CPU, float16 on CUDA); anything else to Transformers. The decode helpers
both backends share with evaluation (token budget, encoder window, loop cutting) are in `decoding`.

faster-whisper, CTranslate2 and torch are imported where a backend needs them: the app serves with
one of the two and should not pay for the other (torch alone takes seconds to import).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from ..audio.io import CHUNK_LENGTH, SAMPLE_RATE, AudioError, load_audio
from ..audio.logmel import log_mel, pad_features
from ..common.options import add_options, build, option, options_from
from ..models.decoding import (
    MAX_COMPRESSION_RATIO,
    DecodeConfig,
    compression_ratio,
    ct2_max_length,
    cut_repetitions,
    token_budget,
    transcribe_arrays,
    window_frames,
)
from ..models.packaged import packaged_ct2_dir
from ..models.specs import DEFAULT_LANGUAGE, PACKAGED_BASE, TASK, load_model, whisper_language

log = logging.getLogger(__name__)

NO_SPEECH = "no speech detected"
DEMO_RUN = Path("runs/cpu-demo")  # what the training issue's `make demo` writes (final/ and ct2/)
BACKENDS = ("auto", "faster-whisper", "transformers")
# Energy gate: a clip whose loudest 30 ms frame is below this is silence; no VAD or model needed.
SILENCE_DBFS = -60.0
_FRAME = SAMPLE_RATE * 30 // 1000  # 480 samples = 30 ms


@dataclass(frozen=True)
class InferenceConfig:
    """How a backend decodes and what it counts as speech; change with `dataclasses.replace`."""

    beam_size: int = option(1, "1 = greedy: the setting the project's WER figures and the benchmark use")
    temperatures: tuple[float, ...] = option((0.0,), (
        "Temperatures tried in turn while a decode looks bad (compression ratio over "
        "`max_compression_ratio` or mean log-probability under `min_avg_logprob`), e.g. [0, 0.2, "
        "0.4]. 0 only by default: deterministic, one decode per chunk; faster-whisper's default "
        "fallback (0.2 ... 1.0) re-decodes weak audio up to five times, which made a 2 s clip take "
        "1-7 s on 2 cores."
    ))
    max_compression_ratio: float = option(MAX_COMPRESSION_RATIO, "zlib ratio above which a decode is a repetition loop")
    min_window_s: float = option(15.0, (
        "CTranslate2 encoder window (seconds): the chunk + 1 s, at least this. 30 = Whisper's own "
        "window; shorter is cheaper on short clips (the encoder is most of the cost on a CPU)."
    ))
    decode_threads: int | None = option(1, (
        "CPU threads for CTranslate2's decoder (None: as many as the encoder). One step of the "
        "decoder is too small to split: on 2 cores one thread decoded 2-3x faster than two for base "
        "and 1.1-1.6x for a small-shaped model (`make bench-threads`). A second copy of the model "
        "(int8 base: 75 MB) runs the decoder with this many threads; on many cores and a large model,"
        " try None."
    ))
    vad_threshold: float = option(0.5, "Silero speech probability above which a 32 ms frame is speech")
    min_silence_ms: int = option(500, "a pause this long separates two speech spans")
    speech_pad_ms: int = option(200, "kept either side of each span so word edges are not clipped")
    max_chunk_s: float = option(float(CHUNK_LENGTH), (
        "longest speech chunk decoded at once, s (30: one Whisper window)"
    ))
    no_speech_prob: float = option(0.6, (
        "a chunk is silence above this no-speech probability (openai/whisper's no_speech_threshold) "
        "..."
    ))
    min_avg_logprob: float = option(-1.0, (
        "... when its mean log-probability is also below this (its logprob_threshold)"
    ))
    language: str | None = option(None, (
        "The language forced in every decode (sv, nb, en, ...); null: the model's own (the one a "
        "fine-tune was trained on, recorded in its export and generation config), else sv."
    ))

    def __post_init__(self):
        if self.language is not None:
            whisper_language(self.language)  # a typo fails before a model loads
        if self.beam_size < 1:
            raise ValueError(f"beam_size={self.beam_size}: use 1 (greedy) or more")
        if not 0 < self.max_chunk_s <= CHUNK_LENGTH:
            raise ValueError(f"max_chunk_s={self.max_chunk_s}: Whisper windows hold at most {CHUNK_LENGTH} s")
        if not 1 <= self.min_window_s <= CHUNK_LENGTH:
            raise ValueError(f"min_window_s={self.min_window_s}: use 1 to {CHUNK_LENGTH} s ({CHUNK_LENGTH} = Whisper's own window)")
        if self.decode_threads is not None and self.decode_threads < 1:
            raise ValueError(f"decode_threads={self.decode_threads}: use 1 or more, or None for the encoder's")
        object.__setattr__(self, "temperatures", tuple(self.temperatures))  # a JSON list from a flag or preset
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise ValueError(f"temperatures={self.temperatures}: give one or more values >= 0, 0 first for greedy")


class Transcriber(Protocol):
    """What the app, the CLI and the benchmark need from a backend.

    Both backends also split and decode separately: ``chunks(audio)`` (the speech chunks, at most
    30 s each) and ``decode(chunks)`` (one text per chunk, "" for a chunk without speech), with
    ``transcribe(audio) == join_texts(decode(chunks(audio)))``. The app's scheduler uses them to
    interleave requests chunk by chunk (`whisper_sv.serving.scheduler.FairScheduler`).
    """

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


def speech_chunks(audio: np.ndarray, options: InferenceConfig = InferenceConfig()) -> list[np.ndarray]:
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


def join_texts(texts: Sequence[str]) -> str:
    """The transcript of a request from its chunks' texts; `NO_SPEECH` when none holds any."""
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
    """A CTranslate2 Whisper export loaded by faster-whisper; int8 on CPU, float16 on CUDA.

    faster-whisper provides the model, its tokenizer and the VAD; the decode loop is ours because
    `WhisperModel.transcribe` always encodes 30 s (and zero-pads the log-mel, unlike training).
    Chunks of one request are encoded and decoded as one batch in a window fitted to the longest;
    on a CPU the encoder uses every core and the decoder ``decode_threads`` (`InferenceConfig`).
    """

    batch_size = 8  # chunks per encoder call: 8 x 30 s of float32 log-mel is 7.7 MB

    def __init__(self, ct2_dir: str | Path, device: str = "auto", compute_type: str | None = None,
                 options: InferenceConfig = InferenceConfig(), cpu_threads: int | None = None,
                 label: str | None = None, language: str | None = None):
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        if device == "auto":
            device = "cuda" if _cuda_available() else "cpu"
        compute_type = compute_type or ("float16" if device == "cuda" else "int8")
        self.ct2_dir, self.options = Path(ct2_dir), options
        window = "30 s window" if options.min_window_s >= CHUNK_LENGTH else f"{options.min_window_s:g}-30 s window"
        # `label` (the model spec) names the model on the page without showing server paths.
        self.name = f"faster-whisper {compute_type} on {device}, {window} ({label or self.ct2_dir.name})"
        cpu_threads = cpu_threads or os.cpu_count() or 1
        self.model = WhisperModel(
            str(self.ct2_dir), device=device, compute_type=compute_type, cpu_threads=cpu_threads,
            local_files_only=True,
        )
        self.ct2 = self.decoder = self.model.model  # ctranslate2.models.Whisper: encode and generate
        if device == "cpu" and options.decode_threads not in (None, cpu_threads):
            import ctranslate2

            self.decoder = ctranslate2.models.Whisper(str(self.ct2_dir), device="cpu", compute_type=compute_type,
                                                      intra_threads=options.decode_threads)
        self.language = whisper_language(language or options.language or export_language(self.ct2_dir))
        self.tokenizer = Tokenizer(self.model.hf_tokenizer, self.ct2.is_multilingual, task=TASK, language=self.language)
        self.prompt = [*self.tokenizer.sot_sequence, self.tokenizer.no_timestamps]

    def transcribe(self, audio: np.ndarray) -> str:
        chunks = self.chunks(audio)
        texts = []
        for start in range(0, len(chunks), self.batch_size):
            texts += self.decode(chunks[start : start + self.batch_size])
        return join_texts(texts)

    def chunks(self, audio: np.ndarray) -> list[np.ndarray]:
        """The speech in `audio` as chunks of at most 30 s (`speech_chunks`); [] for silence."""
        return speech_chunks(audio, self.options)

    def decode(self, chunks: Sequence[np.ndarray], prefix: str = "") -> list[str]:
        """One text per chunk (each <= 30 s); "" where Whisper says the chunk holds no speech.

        `prefix`: what the start of every chunk says, forced as the decoder's first words (openai/
        whisper's ``prefix``); the texts returned are what follows it. Live transcription passes
        the words already committed for the audio before the utterance in progress."""
        mels = [log_mel(chunk, self.ct2.n_mels) for chunk in chunks]
        longest = max(n_frames for _, n_frames, _ in mels)
        frames = window_frames(longest, self.options.min_window_s)
        features = np.stack([pad_features(*mel)[:, :frames] for mel in mels])
        forced = self.tokenizer.encode(" " + prefix.strip()) if prefix.strip() else []
        prompt = self.prompt + forced
        max_length = ct2_max_length(token_budget(longest), len(prompt))
        temperatures = self.options.temperatures
        texts = []
        for i, decoded in enumerate(self._generate(features, temperatures[0], max_length, prompt, len(forced))):
            if len(temperatures) > 1 and self._needs_fallback(*decoded):
                decoded = self._fallback(features[i : i + 1], decoded, max_length, prompt, len(forced))
            text, avg_logprob, no_speech_prob = decoded
            silent = self._is_silence(avg_logprob, no_speech_prob)
            texts.append("" if silent else cut_repetitions(text, self.options.max_compression_ratio))
        return texts

    def _fallback(self, features: np.ndarray, first: tuple[str, float, float], max_length: int,
                  prompt: list[int], forced: int) -> tuple[str, float, float]:
        """Re-decode one chunk at each higher temperature until a decode passes (openai/whisper's
        rule); when none does, the likeliest decode that is not a repetition loop."""
        tries = [first]
        for temperature in self.options.temperatures[1:]:
            decoded = self._generate(features, temperature, max_length, prompt, forced)[0]
            if not self._needs_fallback(*decoded):
                return decoded
            tries.append(decoded)
        fine = [t for t in tries if compression_ratio(t[0]) <= self.options.max_compression_ratio]
        return max(fine or tries, key=lambda t: t[1])

    def _generate(self, features: np.ndarray, temperature: float, max_length: int, prompt: list[int],
                  forced: int = 0) -> list[tuple[str, float, float]]:
        """(text, mean log-probability per token, no-speech probability) for each row of `features`,
        decoded after `prompt`; the result's first `forced` tokens (a forced prefix, which
        CTranslate2 returns with what it generated) are left out of the text."""
        import ctranslate2

        encoded = self.ct2.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)))
        sampling = (dict(beam_size=1, sampling_topk=0, sampling_temperature=temperature) if temperature > 0
                    else dict(beam_size=self.options.beam_size))
        results = self.decoder.generate(
            encoded, [prompt] * len(features), max_length=max_length, return_scores=True,
            return_no_speech_prob=True, suppress_blank=True, suppress_tokens=[-1], **sampling,
        )
        out = []
        for result in results:
            tokens = result.sequences_ids[0][forced:]
            # CTranslate2 returns the cumulative log-probability divided by the length (length
            # penalty 1); openai/whisper averages over the tokens plus the end token.
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
            out.append((self.tokenizer.decode(tokens).strip(), avg_logprob, result.no_speech_prob))
        return out

    def _is_silence(self, avg_logprob: float, no_speech_prob: float) -> bool:
        return no_speech_prob > self.options.no_speech_prob and avg_logprob < self.options.min_avg_logprob

    def _needs_fallback(self, text: str, avg_logprob: float, no_speech_prob: float) -> bool:
        if self._is_silence(avg_logprob, no_speech_prob):
            return False  # silence: a hotter decode would only invent words
        return (compression_ratio(text) > self.options.max_compression_ratio
                or avg_logprob < self.options.min_avg_logprob)


class TransformersBackend:
    """`WhisperForConditionalGeneration` through `decoding.transcribe_arrays`."""

    def __init__(self, model_spec: str, device: str = "cpu", options: InferenceConfig = InferenceConfig()):
        self.model, self.processor = load_model(model_spec, device=device, language=options.language)
        self.options = options
        self.name = f"transformers on {device} ({_label(model_spec)})"
        self._lock = threading.Lock()  # generate() on one model is not safe from two threads

    def transcribe(self, audio: np.ndarray) -> str:
        chunks = self.chunks(audio)
        return join_texts(self.decode(chunks)) if chunks else NO_SPEECH

    def chunks(self, audio: np.ndarray) -> list[np.ndarray]:
        """The speech in `audio` as chunks of at most 30 s (`speech_chunks`); [] for silence."""
        return speech_chunks(audio, self.options)

    def decode(self, chunks: Sequence[np.ndarray]) -> list[str]:
        """One text per chunk (each <= 30 s), repetition loops cut."""
        with self._lock:  # every chunk is <= 30 s, so transcribe_arrays batches them
            texts = transcribe_arrays(self.model, self.processor, list(chunks), DecodeConfig(beam_size=self.options.beam_size))
        return [cut_repetitions(t, self.options.max_compression_ratio) for t in texts]


# ---------------------------------------------------------------------------------------------
# Which backend a model spec gets
# ---------------------------------------------------------------------------------------------


def warm_up(transcriber: Transcriber) -> float:
    """Decode a second of near-silence and run the VAD once; returns the seconds it took.

    A server calls this at start: a backend's first call pays one-off costs (CTranslate2's kernels
    and buffers, Silero's session), about 3 s on a 2-core CPU against 0.4 s for the next, and the
    first upload or live session would wait for them."""
    started = time.perf_counter()
    quiet = (1e-3 * np.random.default_rng(0).standard_normal(SAMPLE_RATE)).astype(np.float32)
    transcriber.decode([quiet])
    speech_chunks(quiet)
    return time.perf_counter() - started


def export_language(ct2_dir: str | Path) -> str:
    """The language an export was fine-tuned for (`whisper_sv_export.json`), else `DEFAULT_LANGUAGE`."""
    record = Path(ct2_dir) / "whisper_sv_export.json"
    try:
        return json.loads(record.read_text(encoding="utf-8")).get("language") or DEFAULT_LANGUAGE
    except (OSError, ValueError, AttributeError):
        return DEFAULT_LANGUAGE


def default_model_spec() -> str:
    """The app's default: the demo run's CTranslate2 export when it exists, else the packaged base."""
    return str(DEMO_RUN / "ct2") if (DEMO_RUN / "ct2" / "model.bin").is_file() else PACKAGED_BASE


def ct2_dir_for(model_spec: str) -> Path | None:
    """The CTranslate2 folder that serves `model_spec`, or None when only Transformers can.

    ``packaged:whisper-base`` -> the packaged CT2 folder; a folder with ``model.bin`` -> itself; a
    run folder, or its ``final/``, with ``ct2/model.bin`` beside -> that ``ct2/``.
    """
    if model_spec == PACKAGED_BASE:
        return packaged_ct2_dir()
    path = Path(model_spec).expanduser()
    if not path.is_dir():
        return None
    for candidate in (path, path / "ct2", path.parent / "ct2"):
        if (candidate / "model.bin").is_file():
            return candidate
    return None


def pick_backend(model_spec: str | None = None, backend: str = "auto", device: str = "auto",
                 options: InferenceConfig = InferenceConfig()) -> Transcriber:
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


# ---------------------------------------------------------------------------------------------
# ``whisper-sv transcribe``: files through the app's backend
# ---------------------------------------------------------------------------------------------


def add_cli(sub) -> None:
    """Register ``whisper-sv transcribe``."""
    p = sub.add_parser("transcribe", help="transcribe Swedish audio files")
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files (any format ffmpeg or libsndfile reads)")
    p.add_argument("--model", default=None,
                   help="model spec: Hub id, folder, CTranslate2 export or packaged:whisper-base "
                        "(default: runs/cpu-demo/ct2 when exported, else packaged:whisper-base)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto (default): faster-whisper when the model has a CTranslate2 export, else transformers")
    p.add_argument("--json", action="store_true",
                   help='print one JSON line {"path": ..., "text": ...} per file ("text" is "" when no speech is found)')
    # --min-window: the flag's name before the flags were made from InferenceConfig.
    add_options(p, InferenceConfig, aliases={"min_window_s": "--min-window"}, title="decoding (InferenceConfig)")
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    options = build(InferenceConfig, options_from(args, InferenceConfig))
    backend = pick_backend(args.model, backend=args.backend, options=options)
    failed = False
    for path in args.files:
        try:
            text = backend.transcribe(load_audio(path))
        except AudioError as err:
            failed = True
            if args.json:
                print(json.dumps({"path": str(path), "error": str(err)}, ensure_ascii=False))
            else:
                print(f"{path}: ERROR {err}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps({"path": str(path), "text": "" if text == NO_SPEECH else text}, ensure_ascii=False), flush=True)
        else:
            print(f"{path}\t{text}", flush=True)
    return 1 if failed else 0
