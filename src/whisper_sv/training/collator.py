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

    A prompted row (the recipe's `prompt_share`) is stored as ``startofprev, prompt..., sot, lang,
    task, ..., eot``: its decoder inputs are all of it but the eot, and its targets start at the
    token after ``sot`` (-100 over ``startofprev`` and the prompt: the model learns to read a
    prompt, not to write one). A batch holding one also gives ``decoder_input_ids``.

    Rows that carry a ``cache_row`` (training on a frozen encoder's cache, encoder_cache.py) give
    ``cache_rows`` instead of ``input_features``: the collator may run in a DataLoader worker, so
    it only names the rows (and starts reading them with `readahead`); the trainer turns them into
    model inputs in the main process (`with_cached_encoder`).
    """

    decoder_start_token_id: int
    readahead: Readahead | None = None
    window_s: float = CHUNK_LENGTH
    nospeech_token_id: int | None = None  # rows whose first target is this are non-speech rows
    prev_token_id: int | None = None  # <|startofprev|>: rows that start with it are prompted
    pad_token_id: int = 50257  # what -100 becomes in decoder inputs (Whisper pads with <|endoftext|>)

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        labels = [np.asarray(r["labels"], dtype=np.int64) for r in rows]
        if any(self._explicit(ids) for ids in labels):
            targets = self._explicit_targets(labels)
        else:  # the usual batch: labels alone, and the model shifts them into its decoder inputs
            if all(len(ids) and ids[0] == self.decoder_start_token_id for ids in labels):
                labels = [ids[1:] for ids in labels]
            targets = {"labels": self._padded(labels, -100)}
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

    def _prompted(self, ids: np.ndarray) -> bool:
        """A prompted row: ``startofprev, prompt..., sot, ...``."""
        return self.prev_token_id is not None and len(ids) > 0 and ids[0] == self.prev_token_id

    def _silent(self, ids: np.ndarray) -> bool:
        """A non-speech row: ``sot, nospeech, lang, task, notimestamps, eot``."""
        return (self.nospeech_token_id is not None and len(ids) > 2 and ids[0] == self.decoder_start_token_id
                and ids[1] == self.nospeech_token_id)

    def _explicit(self, ids: np.ndarray) -> bool:
        """Whether a stored row needs decoder inputs other than its labels shifted right."""
        return self._prompted(ids) or self._silent(ids)

    def _explicit_targets(self, labels: list[np.ndarray]) -> dict[str, Any]:
        """``{"labels", "decoder_input_ids"}``, row by row (see the class)."""
        inputs, targets = [], []
        for ids in labels:
            if self._prompted(ids):
                sot = int(np.flatnonzero(ids == self.decoder_start_token_id)[0])
                inputs.append(ids[:-1])
                targets.append(np.concatenate([np.full(sot, -100, dtype=np.int64), ids[sot + 1 :]]))
            elif self._silent(ids):
                inputs.append(np.concatenate([ids[:1], ids[2:-1]]))  # the forced prompt: sot, lang, task, notimestamps
                targets.append(np.concatenate([ids[1:2], ids[3:]]))  # nospeech, then task, notimestamps, eot
            elif len(ids) and ids[0] == self.decoder_start_token_id:
                inputs.append(ids[:-1])
                targets.append(ids[1:])
            else:  # labels without their sot: the model would prepend it
                inputs.append(np.concatenate([[self.decoder_start_token_id], ids[:-1]]).astype(np.int64))
                targets.append(ids)
        return {"labels": self._padded(targets, -100), "decoder_input_ids": self._padded(inputs, self.pad_token_id)}

    @staticmethod
    def _padded(rows: list[np.ndarray], value: int):
        """(B, L) int64, L the longest row rounded up to `LABEL_MULTIPLE`, filled with `value`."""
        import torch

        width = -(-max(map(len, rows)) // LABEL_MULTIPLE) * LABEL_MULTIPLE
        batch = torch.full((len(rows), width), value, dtype=torch.long)
        for i, ids in enumerate(rows):
            batch[i, : len(ids)] = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        return batch
