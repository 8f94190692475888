"""The Trainer the runs use, and the memory its batches churn.

`trainer_class` is Transformers' Seq2SeqTrainer that reads cached-encoder batches (the rows the
collator named) into model inputs in the main process and keeps label smoothing working with
Whisper. `keep_freed_memory` is here because those batches are what make glibc's default of
returning big blocks to the kernel costly.
"""

from __future__ import annotations

import sys
from typing import Any

from .encoder_cache import EncoderCache, cached_inputs


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
