"""Transcribe Swedish audio files with a Whisper model spec.

`transcribe_arrays` is the Transformers path (the app's Transformers backend uses it): clips up to
30 s are batched on the same log-mel training uses; longer arrays go through Transformers'
sequential long-form decoding (timestamps on, one 30 s window after another), so nothing is cut
off silently. `generate_texts` is the decode step it shares with `whisper-sv evaluate`.

``whisper-sv transcribe`` serves files with the app's backend (`whisper_sv.inference`):
faster-whisper on a CTranslate2 export when one exists, else Transformers; ``--backend`` picks.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .audio import N_SAMPLES, SAMPLE_RATE, AudioError, load_audio
from .logmel import log_mel, pad_features
from .models import LANGUAGE, TASK

BATCH_SIZE = 8
DECODER_POSITIONS = 448  # Whisper's decoder positions, prompt included
MAX_NEW_TOKENS = DECODER_POSITIONS - 8  # 440: room for the prefix
# Generation budget: no real speech reaches 10 tokens a second, so this cuts only runaway loops
# (a hallucinating clip would otherwise hold its whole batch for 440 decoder steps); a clipped
# loop still counts as the insertions it made.
TOKENS_PER_SECOND = 10
MIN_NEW_TOKENS = 16


def token_budget(n_frames: int) -> int:
    """``max_new_tokens`` for a clip of `n_frames` mel frames (100 per second); evaluation and
    the app's CTranslate2 backend both decode with it."""
    return min(MAX_NEW_TOKENS, MIN_NEW_TOKENS + -(-TOKENS_PER_SECOND * n_frames // 100))


@dataclass(frozen=True)
class DecodeOptions:
    """How `transcribe_arrays` decodes; change with `dataclasses.replace`."""

    beam_size: int = 1  # 1 = greedy, the setting WER figures in this project use
    batch_size: int = BATCH_SIZE
    max_new_tokens: int = MAX_NEW_TOKENS

    def __post_init__(self):
        if self.beam_size < 1:
            raise ValueError(f"beam_size={self.beam_size}: use 1 (greedy) or more")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}: use 1 or more")


def generate_texts(model, processor, features: np.ndarray, beam_size: int = 1, max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
    """Greedy (or beam) transcripts of a (B, n_mels, 3000) batch, Swedish forced."""
    import torch

    inputs = torch.from_numpy(np.ascontiguousarray(features)).to(model.device, model.dtype)
    with torch.inference_mode():
        ids = model.generate(inputs, language=LANGUAGE, task=TASK, num_beams=beam_size, max_new_tokens=max_new_tokens)
    return [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]


def transcribe_arrays(model, processor, audios: Sequence[np.ndarray], options: DecodeOptions = DecodeOptions()) -> list[str]:
    """Transcribe 16 kHz mono float32 arrays; returns one stripped string per array, in order."""
    import torch

    texts: list[str | None] = [None] * len(audios)
    short = [i for i, a in enumerate(audios) if len(a) <= N_SAMPLES]
    device, dtype = model.device, model.dtype
    gen = dict(language=LANGUAGE, task=TASK, num_beams=options.beam_size)
    n_mels = model.config.num_mel_bins
    for start in range(0, len(short), options.batch_size):
        idx = short[start : start + options.batch_size]
        # The same log-mel the feature store holds (logmel.py, pinned to WhisperFeatureExtractor).
        feats = np.stack([pad_features(*log_mel(audios[i], n_mels)) for i in idx])
        for i, text in zip(idx, generate_texts(model, processor, feats, options.beam_size, options.max_new_tokens)):
            texts[i] = text
    for i in (i for i, a in enumerate(audios) if len(a) > N_SAMPLES):
        inputs = processor.feature_extractor(
            audios[i], sampling_rate=SAMPLE_RATE, return_tensors="pt", truncation=False,
            padding="longest", return_attention_mask=True,
        )
        with torch.inference_mode():
            ids = model.generate(
                inputs.input_features.to(device, dtype), attention_mask=inputs.attention_mask.to(device),
                return_timestamps=True, condition_on_prev_tokens=False, **gen,
            )
        texts[i] = processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
    return [t or "" for t in texts]


def add_cli(sub) -> None:
    """Register ``whisper-sv transcribe``."""
    from .inference import BACKENDS, WINDOW_HELP, InferenceOptions

    p = sub.add_parser("transcribe", help="transcribe Swedish audio files")
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files (any format ffmpeg or libsndfile reads)")
    p.add_argument("--model", default=None,
                   help="model spec: Hub id, folder, CTranslate2 export or packaged:whisper-base "
                        "(default: runs/cpu-demo/ct2 when exported, else packaged:whisper-base)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto (default): faster-whisper when the model has a CTranslate2 export, else transformers")
    p.add_argument("--beam-size", type=int, default=1, help="beam size; 1 = greedy (default)")
    p.add_argument("--min-window", type=float, default=InferenceOptions.min_window_s, metavar="SECONDS", help=WINDOW_HELP)
    p.add_argument("--json", action="store_true",
                   help='print one JSON line {"path": ..., "text": ...} per file ("text" is "" when no speech is found)')
    p.set_defaults(func=_run_cli)


def _run_cli(args) -> int:
    from .inference import NO_SPEECH, InferenceOptions, pick_backend

    backend = pick_backend(args.model, backend=args.backend, options=InferenceOptions(beam_size=args.beam_size, min_window_s=args.min_window))
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
