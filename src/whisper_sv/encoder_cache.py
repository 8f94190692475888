"""Cache what does not change: a frozen encoder's work, computed once per training clip.

With the encoder frozen and SpecAugment off, each clip maps to the same encoder states at every
epoch. On a CPU that encoder is most of a step (a 30 s window costs ~85 GFLOP for Whisper base,
whatever the clip's length), so computing it once makes a CPU fine-tune feasible. Two levels:

``states``
    the encoder output, (1500, d_model) per clip; the decoder trains as usual on it.
``cross_kv``
    also freezes the cross-attention key/value projections and caches their output per decoder
    layer, (layers, 2, heads, 1500, head_dim) per clip. A step then skips projecting 1500
    positions per layer (2/3 of a Whisper base decoder step at batch 16) and trains everything
    else in the decoder, cross-attention queries and outputs included. 12x the disk of ``states``.

The cache is a float16 memmap in the run folder plus ``cache.json`` (which model, rows and kind
it holds, and how many rows are done); it is filled in batches and survives a kill: rows past the
recorded count are recomputed. A cache made for another model, store, kind or row count is
rebuilt, never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .fileio import write_json
from .logmel import collate_features

KINDS = ("states", "cross_kv")
CACHE_NAME = "encoder_cache.f16"
META_NAME = "cache.json"


def cache_key(model_spec: str, shard_sha256s: list[str], n_rows: int, kind: str) -> str:
    """Identity of a cache: the model, the exact shards (their manifest sha256s), the rows, the kind."""
    h = hashlib.sha256(f"{model_spec}\n{kind}\n{n_rows}".encode())
    for digest in shard_sha256s:
        h.update(digest.encode())
    return h.hexdigest()[:16]


def cache_shape(config, n: int, kind: str) -> tuple[int, ...]:
    """Memmap shape for `n` clips of a Whisper `config`."""
    positions, width = config.max_source_positions, config.d_model
    if kind == "states":
        return (n, positions, width)
    heads = config.decoder_attention_heads
    return (n, config.decoder_layers, 2, heads, positions, width // heads)


def freeze_cross_attention_kv(model) -> None:
    """Stop training the decoder's cross-attention key/value projections (their outputs get cached)."""
    for layer in model.model.decoder.layers:
        for proj in (layer.encoder_attn.k_proj, layer.encoder_attn.v_proj):
            proj.requires_grad_(False)


def _encode(model, rows: list[dict], kind: str) -> np.ndarray:
    """Cache rows for a batch: (B, *cache_shape[1:]) float16."""
    import torch  # deferred (seconds): `config` imports this module for KINDS, and the CLI imports config

    with torch.no_grad():
        states = model.get_encoder()(collate_features(rows).to(model.device, model.dtype)).last_hidden_state
        if kind == "states":
            return states.float().cpu().numpy().astype(np.float16)
        kv = []
        for layer in model.model.decoder.layers:
            attn = layer.encoder_attn
            b, t, _ = states.shape
            k = attn.k_proj(states).view(b, t, -1, attn.head_dim).transpose(1, 2)
            v = attn.v_proj(states).view(b, t, -1, attn.head_dim).transpose(1, 2)
            kv.append(torch.stack([k, v], dim=1))  # (B, 2, heads, T, head_dim)
        return torch.stack(kv, dim=1).float().cpu().numpy().astype(np.float16)


def build_encoder_cache(model, dataset, folder: Path, key: str, kind: str = "states", batch_size: int = 8) -> np.memmap:
    """Fill (or finish) the cache of `dataset`; returns it as a read-only float16 memmap."""
    if kind not in KINDS:
        raise ValueError(f"encoder_cache={kind!r}: use one of {KINDS} (or null for none)")
    folder.mkdir(parents=True, exist_ok=True)
    shape = cache_shape(model.config, len(dataset), kind)
    meta_path, data_path = folder / META_NAME, folder / CACHE_NAME
    meta = _read_meta(meta_path)
    if meta.get("key") != key or meta.get("shape") != list(shape) or not data_path.exists():
        meta = {"key": key, "kind": kind, "shape": list(shape), "done": 0}
        np.memmap(data_path, dtype=np.float16, mode="w+", shape=shape).flush()
        _write_meta(meta_path, meta)
    cache = np.memmap(data_path, dtype=np.float16, mode="r+", shape=shape)
    encoder = model.get_encoder()
    was_training = encoder.training
    encoder.eval()
    gib = np.prod(shape) * 2 / 2**30
    with tqdm(total=len(dataset), initial=meta["done"], desc=f"encoder cache ({kind}, {gib:.1f} GiB)", unit="clip") as bar:
        for start in range(meta["done"], len(dataset), batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            cache[start : start + len(rows)] = _encode(model, rows, kind)
            cache.flush()
            meta["done"] = start + len(rows)
            _write_meta(meta_path, meta)  # after the flush: a recorded row is a written row
            bar.update(len(rows))
    encoder.train(was_training)
    del cache
    # Read-only ("c", copy-on-write, would let torch wrap rows without a warning, but the kernel
    # counts a private writable mapping as committed memory and refuses one larger than RAM).
    return np.memmap(data_path, dtype=np.float16, mode="r", shape=shape)


class Readahead:
    """Ask the kernel to start reading cache rows that a coming step will use.

    A cross_kv cache of more clips than the page cache holds is read from disk at every epoch
    (~290 MB per batch of 16). The train collator runs in a DataLoader worker, a batch or two
    ahead of the step, and calls this with its rows: the reads then overlap the step before.
    Picklable (a path and a row size), so it works with any worker start method.
    """

    def __init__(self, path: str | Path, row_bytes: int):
        self.path, self.row_bytes, self._fd = str(path), int(row_bytes), None

    def __call__(self, rows: list[int]) -> None:
        if not hasattr(os, "posix_fadvise"):
            return  # not on this OS: the step reads the rows itself
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        for i in rows:
            os.posix_fadvise(self._fd, int(i) * self.row_bytes, self.row_bytes, os.POSIX_FADV_WILLNEED)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}

    def __del__(self):
        if self._fd is not None:
            os.close(self._fd)


def readahead_for(cache: np.memmap) -> Readahead:
    """A `Readahead` over the file behind `cache` (as `build_encoder_cache` returns it)."""
    return Readahead(cache.filename, int(np.prod(cache.shape[1:])) * cache.dtype.itemsize)


def cached_inputs(cache: np.ndarray, rows: list[int], kind: str, device: Any = None) -> dict[str, Any]:
    """Model inputs for a batch of cache rows, in place of ``input_features`` (on `device`)."""
    import torch  # deferred, as in _encode

    # One pass per row, float16 straight into the float32 batch: np.stack + astype made two extra
    # copies (a cross_kv batch of 16 is ~290 MB of float16): ~0.55 -> ~0.10 s a batch on 2 cores,
    # with train.keep_freed_memory.
    block = torch.empty((len(rows), *cache.shape[1:]), dtype=torch.float32)
    with warnings.catch_warnings():
        # torch warns that it cannot protect a read-only array from writes; it is only read here.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for j, i in enumerate(rows):
            block[j].copy_(torch.from_numpy(np.asarray(cache[i])))
    if device is not None:
        block = block.to(device)
    if kind == "states":
        # A tuple, as the model takes it: a bare tensor would be indexed as [0] = the first clip.
        return {"encoder_outputs": (block,)}
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache  # deferred, as torch; cross_kv only

    cross = DynamicCache()
    for layer in range(block.shape[1]):
        cross.update(block[:, layer, 0], block[:, layer, 1], layer)
    past = EncoderDecoderCache(DynamicCache(), cross)
    for layer in range(block.shape[1]):
        past.is_updated[layer] = True  # cross-attention reads the cached keys/values as they are
    # The decoder needs *some* encoder states to know it cross-attends; with the keys and values
    # cached it never reads them, so one zero position per clip stands in.
    width = block.shape[2] * block.shape[-1]
    stand_in = torch.zeros(len(rows), 1, width, device=block.device)
    return {"encoder_outputs": (stand_in,), "past_key_values": past, "use_cache": True}


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_meta(path: Path, meta: dict) -> None:
    write_json(path, meta, indent=None)
