"""Batches for the trainer: the collator, the cached-encoder trainer, and the memory they churn.

A batch is either log-mel features (the usual path) or rows of a frozen encoder's cache
(encoder_cache.py). The cache rows are only *named* by the collator, which may run in a DataLoader
worker; the trainer reads them into model inputs in the main process. `keep_freed_memory` is here
because those batches are what make glibc's default of returning big blocks to the kernel costly.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..audio.io import CHUNK_LENGTH
from ..audio.logmel import collate_features
from ..models.decoding import window_frames
from .encoder_cache import EncoderCache, Readahead, cached_inputs


@dataclass
class SpeechCollator:
    """Batch feature-store rows for Seq2SeqTrainer.

    ``input_features``: (B, n_mels, 3000) float32, each clip padded with its own floor value,
    which reproduces WhisperFeatureExtractor. With an encoder window under 30 s (`window_s`,
    encoder_window.py) the batch is as wide as the app's backend would encode its longest clip:
    that clip + 1 s, at least `window_s` (`decoding.window_frames`). ``labels``: (B, L) int64, padding masked with -100;
    the leading ``<|startoftranscript|>`` is dropped because the model prepends it when it shifts
    the labels right (the transformers speech recipe does the same).

    A non-speech row of the recipe (recipe.py) is stored as ``sot, nospeech, lang, task,
    notimestamps, eot`` and trained on two targets at once: ``<|nospeech|>`` after
    ``<|startoftranscript|>`` (what the no-speech probability reads) and an empty transcript after
    the forced ``lang, task, notimestamps`` prompt. For a batch holding one, the collator gives
    ``decoder_input_ids`` (``sot, lang, task, notimestamps``) beside the labels (``nospeech, task,
    notimestamps, eot``); other rows' decoder inputs are their labels shifted right, as the model
    would make them.

    Rows that carry a ``cache_row`` (training on a frozen encoder's cache, encoder_cache.py) give
    ``cache_rows`` instead of ``input_features``: the collator may run in a DataLoader worker, so
    it only names the rows (and starts reading them with `readahead`); the trainer turns them into
    model inputs in the main process (`with_cached_encoder`).
    """

    decoder_start_token_id: int
    readahead: Readahead | None = None
    window_s: float = CHUNK_LENGTH
    nospeech_token_id: int | None = None  # rows whose first target is this are non-speech rows
    pad_token_id: int = 50257  # what -100 becomes in decoder inputs (Whisper pads with <|endoftext|>)

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        labels = [np.asarray(r["labels"], dtype=np.int64) for r in rows]
        batch = torch.full((len(labels), max(map(len, labels))), -100, dtype=torch.long)
        for i, ids in enumerate(labels):
            batch[i, : len(ids)] = torch.from_numpy(ids)
        if bool((batch[:, 0] == self.decoder_start_token_id).all()):
            batch = batch[:, 1:]
        targets = self._nospeech_targets(batch)
        if "cache_row" in rows[0]:
            cache_rows = [int(r["cache_row"]) for r in rows]
            if self.readahead is not None:
                self.readahead(cache_rows)
            return {"cache_rows": torch.tensor(cache_rows), **targets}
        frames = window_frames(max(int(r["n_frames"]) for r in rows), self.window_s)
        features = collate_features(rows, frames)
        # Every frame is input (past the audio, the clip's floor is Whisper's padding); an explicit
        # mask keeps the evaluation's `generate` from warning that the batch has none.
        mask = torch.ones(features.shape[0], features.shape[-1], dtype=torch.long)
        return {"input_features": features, "attention_mask": mask, **targets}

    def _nospeech_targets(self, labels):
        """``{"labels"}``, or with non-speech rows ``{"labels", "decoder_input_ids"}`` (see the class)."""
        import torch

        silent = (labels[:, 0] == self.nospeech_token_id) if self.nospeech_token_id is not None else None
        if silent is None or not bool(silent.any()) or labels.shape[1] < 3:
            return {"labels": labels}
        labels = labels.clone()
        language = labels[silent, 1].clone()
        # nospeech, lang, task, notimestamps, eot -> nospeech, task, notimestamps, eot (-100 after)
        labels[silent, 1:-1] = labels[silent, 2:].clone()
        labels[silent, -1] = -100
        start = torch.full((labels.shape[0], 1), self.decoder_start_token_id, dtype=labels.dtype)
        decoder = torch.cat([start, labels[:, :-1]], dim=1)
        decoder = decoder.masked_fill(decoder == -100, self.pad_token_id)
        decoder[silent, 1] = language  # the forced prompt: sot, lang, task, notimestamps
        return {"labels": labels, "decoder_input_ids": decoder}


def with_cached_encoder(batch: dict[str, Any], cache: EncoderCache, kind: str, device: Any = None) -> dict[str, Any]:
    """A collated batch with its ``cache_rows`` replaced by the cached encoder side (on `device`)."""
    if "cache_rows" not in batch:
        return batch
    rest = {k: v for k, v in batch.items() if k != "cache_rows"}
    return {**cached_inputs(cache, batch["cache_rows"].tolist(), kind, device), **rest}


def trainer_class(cache: EncoderCache | None, kind: str | None) -> type:
    """Seq2SeqTrainer that feeds training batches from the encoder cache (when there is one) and
    keeps `label_smoothing_factor` working."""
    from transformers import Seq2SeqTrainer
    from transformers.models.whisper.modeling_whisper import shift_tokens_right

    class SpeechTrainer(Seq2SeqTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            inputs = with_cached_encoder(inputs, cache, kind, self.args.device) if cache is not None else inputs
            if self.label_smoother is not None and "labels" in inputs and "decoder_input_ids" not in inputs:
                # With label smoothing the Trainer takes `labels` out of the inputs before the forward
                # pass, and Whisper builds its decoder inputs only from labels: give them here, the
                # same right shift the model would make.
                config = self.model.config  # the Trainer's own model: never the DDP wrapper
                shifted = shift_tokens_right(inputs["labels"], config.pad_token_id, config.decoder_start_token_id)
                inputs = {**inputs, "decoder_input_ids": shifted}
            return super().compute_loss(model, inputs, *args, **kwargs)

    return SpeechTrainer


def keep_freed_memory() -> bool:
    """Let glibc keep big freed blocks for reuse instead of returning them to the kernel.

    A CPU step allocates and frees the same few hundred MB (a cached cross_kv batch is ~580 MB);
    by default each block above 32 MB is a fresh mmap, so every step pays page faults to zero it
    again. Raising the mmap and trim thresholds cut reading a cached batch from ~0.55 to ~0.15 s
    and, with that, a cpu-demo step from ~2.3 to ~1.3 s on 2 cores (docs/benchmarks.md). The
    process's resident memory stays at its peak instead of breathing. A no-op (False) where the C library is not glibc.
    """
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))
