"""Batches for the trainer: log-mel features padded to the window, labels and decoder inputs.

A batch is either log-mel features (the usual path) or rows of a frozen encoder's cache
(encoder_cache.py). The cache rows are only *named* by the collator, which may run in a DataLoader
worker; the trainer (trainer.py) reads them into model inputs in the main process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..audio.io import CHUNK_LENGTH
from ..audio.logmel import collate_features
from ..models.decoding import window_frames
from .encoder_cache import Readahead


# Labels are padded to a multiple of this many tokens (the padding is -100, never a target). On a
# CPU, oneDNN keeps the kernels (and weight layouts) it made for each new input shape: with the
# recipe's stitched clips (up to ~200 tokens) nearly every batch had a new label length, and a
# 30 s-window training grew by ~170 MB a step until Linux's out-of-memory killer stopped it at step
# 287. A few widths keep a few sets of kernels.
LABEL_MULTIPLE = 32


@dataclass
class SpeechCollator:
    """Batch feature-store rows for Seq2SeqTrainer.

    ``input_features``: (B, n_mels, 3000) float32, each clip padded with its own floor value,
    which reproduces WhisperFeatureExtractor. With an encoder window under 30 s (`window_s`,
    encoder_window.py) the batch is as wide as the app's backend would encode its longest clip:
    that clip + 1 s, at least `window_s` (`decoding.window_frames`). ``labels``: (B, L) int64, L the longest row rounded up to `LABEL_MULTIPLE`, padding masked with -100;
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
        if all(len(ids) and ids[0] == self.decoder_start_token_id for ids in labels):
            labels = [ids[1:] for ids in labels]
        width = -(-max(map(len, labels)) // LABEL_MULTIPLE) * LABEL_MULTIPLE
        batch = torch.full((len(labels), width), -100, dtype=torch.long)
        for i, ids in enumerate(labels):
            batch[i, : len(ids)] = torch.from_numpy(ids)
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
