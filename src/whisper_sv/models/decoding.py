"""The decode step every path shares: token budgets, encoder windows, `generate`, and loop cutting.

Evaluation (`evaluate`) and both serving backends (`inference`) decode through these helpers, so a
WER figure and a served transcript come from the same token budget and the same rules. This module
imports no stage: only the audio constants, the log-mel and the language settings.

`transcribe_arrays` is the Transformers path: clips up to 30 s are batched on the same log-mel
training uses; longer arrays go through Transformers' sequential long-form decoding (timestamps
on, one 30 s window after another), so nothing is cut off silently.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..audio.io import N_FRAMES, N_SAMPLES, SAMPLE_RATE
from ..audio.logmel import log_mel, pad_features
from .specs import TASK, model_language

BATCH_SIZE = 8
DECODER_POSITIONS = 448  # Whisper's decoder positions, prompt included
MAX_NEW_TOKENS = DECODER_POSITIONS - 8  # 440: room for the prefix
# Generation budget: no real speech reaches 10 tokens a second, so this cuts only runaway loops
# (a hallucinating clip would otherwise hold its whole batch for 440 decoder steps); a clipped
# loop still counts as the insertions it made.
TOKENS_PER_SECOND = 10
MIN_NEW_TOKENS = 16

# A word group said this many times in a row, in a chunk that compresses like a loop, is a
# repetition loop: `cut_repetitions` keeps one. Groups up to MAX_LOOP_WORDS words are found.
MIN_LOOP_REPEATS = 3
MAX_LOOP_WORDS = 40


def token_budget(n_frames: int) -> int:
    """``max_new_tokens`` for a clip of `n_frames` mel frames (100 per second); evaluation and
    the app's CTranslate2 backend both decode with it."""
    return min(MAX_NEW_TOKENS, MIN_NEW_TOKENS + -(-TOKENS_PER_SECOND * n_frames // 100))


def window_frames(n_frames: int, min_window_s: float) -> int:
    """Encoder input length, in log-mel frames (100 per second), for a chunk of `n_frames` frames.

    The chunk plus 1 s of its floor, rounded up to a whole second, at least `min_window_s` and at
    most Whisper's 3,000. A window fitted tightly to the clip costs several WER points (Whisper
    always saw at least a few seconds of padding in training); 15 s cost nothing measurable on the
    synthetic test set, 10 s about one point.
    """
    need = -(-(n_frames + 100) // 100) * 100
    return int(min(N_FRAMES, max(round(min_window_s * 100), need)))


def ct2_max_length(new_tokens: int, prompt_length: int = 4) -> int:
    """The ``max_length`` that lets CTranslate2's Whisper `generate` emit `new_tokens` tokens.

    CTranslate2 generates at most ``max_length // 2`` tokens whatever the prompt (openai/whisper's
    ``sample_len = n_text_ctx // 2``; measured with the end token suppressed: 100 -> 50, 448 -> 224,
    888 -> 444), so passing prompt + budget, as for Transformers' ``max_length``, halves the budget.
    Capped so prompt and tokens fit the decoder's 448 positions.
    """
    return 2 * min(new_tokens, DECODER_POSITIONS - prompt_length)


@dataclass(frozen=True)
class DecodeConfig:
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
    """Greedy (or beam) transcripts of a (B, n_mels, frames) batch, the model's language forced (`model_language`)."""
    import torch  # the Transformers path only: the CTranslate2 backend serves without torch

    quiet_library_notices()
    inputs = torch.from_numpy(np.ascontiguousarray(features)).to(model.device, model.dtype)
    # Every frame is input (a clip's floor is Whisper's padding), and saying so is what keeps
    # `generate` from warning that the batch has no attention mask.
    mask = torch.ones(inputs.shape[0], inputs.shape[-1], dtype=torch.long, device=model.device)
    with torch.inference_mode():
        # Whisper's `generate` reads max_length as the tokens to generate after its prompt
        # (`_set_max_new_tokens_and_length` adds the prompt); max_new_tokens would sit beside the
        # model's max_length of 448 and warn at every batch that both are set.
        ids = model.generate(inputs, attention_mask=mask, language=model_language(model), task=TASK, num_beams=beam_size,
                             max_length=max_new_tokens)
    return [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]


class _HarmlessNotice(logging.Filter):
    """Drops a library notice that no caller can act on (see `quiet_library_notices`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "together with generation-related arguments" not in record.getMessage()


def quiet_library_notices() -> None:
    """Silence the one generation notice whose cause is inside Transformers (idempotent).

    Whisper's own `generate` calls the generic one with a generation config *and* the
    suppress_tokens it took out of it (generation_whisper.py), and the generic one then says that
    passing both "is deprecated": nothing a caller passes changes that, and decoding is unaffected.
    """
    logger = logging.getLogger("transformers.generation.utils")
    if not any(isinstance(f, _HarmlessNotice) for f in logger.filters):
        logger.addFilter(_HarmlessNotice())


def transcribe_arrays(model, processor, audios: Sequence[np.ndarray], options: DecodeConfig = DecodeConfig()) -> list[str]:
    """Transcribe 16 kHz mono float32 arrays; returns one stripped string per array, in order."""
    import torch  # as in generate_texts

    texts: list[str | None] = [None] * len(audios)
    short = [i for i, a in enumerate(audios) if len(a) <= N_SAMPLES]
    device, dtype = model.device, model.dtype
    gen = dict(language=model_language(model), task=TASK, num_beams=options.beam_size)
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


MAX_COMPRESSION_RATIO = 2.4  # openai/whisper's compression_ratio_threshold: text that compresses more is a loop


def compression_ratio(text: str) -> float:
    """zlib compression ratio of `text`: over `MAX_COMPRESSION_RATIO` means a repetition loop (openai/whisper)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def cut_repetitions(text: str, max_compression_ratio: float = MAX_COMPRESSION_RATIO) -> str:
    """`text` with each run of a repeated word group cut to its first occurrence, when `text`
    compresses like a repetition loop (zlib ratio over `max_compression_ratio`); else unchanged.

    Words are compared without case and surrounding punctuation ("Tack. tack, tack"); a group
    counts when it comes `MIN_LOOP_REPEATS` or more times in a row, the shortest group first.
    """
    if compression_ratio(text) <= max_compression_ratio:
        return text
    words = text.split()
    keys = [w.strip(".,!?;:…\"'»«-").lower() for w in words]
    kept, i, n = [], 0, len(words)
    while i < n:
        for size in range(1, min(MAX_LOOP_WORDS, (n - i) // MIN_LOOP_REPEATS) + 1):
            group, repeats = keys[i : i + size], 1
            while keys[i + repeats * size : i + (repeats + 1) * size] == group:
                repeats += 1
            if repeats >= MIN_LOOP_REPEATS:
                kept += words[i : i + size]
                i += repeats * size
                break
        else:
            kept.append(words[i])
            i += 1
    return " ".join(kept)
