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

The cache is a memmap in the run folder plus ``cache.json`` (which model, rows, kind, window and
number type it holds, and how many rows are done); it is filled in batches and survives a kill:
rows past the recorded count are recomputed. A cache made for another model, store, kind, window,
number type or row count is rebuilt, never reused.

Its size is what limits a CPU fine-tune on a laptop: ``cross_kv`` of Whisper base is 18 MB per clip
in float16 at the 30 s window. Two settings shrink it: a shorter encoder window (encoder_window.py;
15 s halves the positions) and ``int8`` numbers (one byte per value plus a float16 scale per
head_dim-long vector, 2x smaller again: ~4.7 MB per clip at 15 s). Symmetric int8 with a scale per
64 values keeps each key and value to within 0.4 % of its vector's largest entry.
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

from ..audio.io import N_FRAMES
from ..audio.logmel import collate_features
from ..common.fileio import write_json

KINDS = ("states", "cross_kv")
DTYPES = ("float16", "int8")
DATA_NAMES = {"float16": "encoder_cache.f16", "int8": "encoder_cache.i8"}
SCALES_NAME = "encoder_cache.scale.f16"  # int8 only: one float16 scale per last-axis vector
META_NAME = "cache.json"


def cache_key(
    model_spec: str, shard_sha256s: list[str], n_rows: int, kind: str, frames: int = N_FRAMES, dtype: str = "float16",
    bf16: bool = False,
) -> str:
    """Identity of a cache: the model, the exact shards (their manifest sha256s), the rows, the kind,
    the encoder window, the number type and the precision it was computed in."""
    window = "" if frames == N_FRAMES else f"\nframes={frames}"  # 30 s float32 float16 keys stay as they were
    number = ("" if dtype == "float16" else f"\ndtype={dtype}") + ("\nbf16" if bf16 else "")
    h = hashlib.sha256(f"{model_spec}\n{kind}\n{n_rows}{window}{number}".encode())
    for digest in shard_sha256s:
        h.update(digest.encode())
    return h.hexdigest()[:16]


def cache_shape(config, n: int, kind: str, frames: int = N_FRAMES) -> tuple[int, ...]:
    """Memmap shape for `n` clips of a Whisper `config` at an encoder window of `frames` log-mel frames."""
    positions = config.max_source_positions * frames // N_FRAMES
    width = config.d_model
    if kind == "states":
        return (n, positions, width)
    heads = config.decoder_attention_heads
    return (n, config.decoder_layers, 2, heads, positions, width // heads)


def freeze_cross_attention_kv(model) -> None:
    """Stop training the decoder's cross-attention key/value projections (their outputs get cached)."""
    for layer in model.model.decoder.layers:
        for proj in (layer.encoder_attn.k_proj, layer.encoder_attn.v_proj):
            proj.requires_grad_(False)


def _encode(model, rows: list[dict], kind: str, frames: int = N_FRAMES, bf16: bool = False):
    """Cache rows for a batch: (B, *cache_shape[1:]) float32 torch tensor; `bf16` computes them
    under bfloat16 autocast (the matrix units of recent CPUs and GPUs: ~2x faster on this
    machine's AMX, ~1 % rms error, the size of the int8 rounding's error times three)."""
    import torch  # deferred (seconds): `config` imports this module for KINDS, and the CLI imports config

    with torch.no_grad(), torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
        features = collate_features(rows, frames).to(model.device, model.dtype)
        states = model.get_encoder()(features).last_hidden_state
        if kind == "states":
            return states.float().cpu()
        kv = []
        for layer in model.model.decoder.layers:
            attn = layer.encoder_attn
            b, t, _ = states.shape
            k = attn.k_proj(states).view(b, t, -1, attn.head_dim).transpose(1, 2)
            v = attn.v_proj(states).view(b, t, -1, attn.head_dim).transpose(1, 2)
            kv.append(torch.stack([k, v], dim=1))  # (B, 2, heads, T, head_dim)
        return torch.stack(kv, dim=1).float().cpu()


def quantize_int8(values) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 of a float32 tensor, one float16 scale per last-axis vector: (q, scales)."""
    import torch

    # At least float16's smallest normal number: a near-zero vector keeps a scale float16 can hold
    # (its values then round to within 3e-5); the reader's scale is the float16 one, so round with it.
    scales = (values.abs().amax(dim=-1) / 127.0).clamp_min(2.0**-14).half().float()
    q = torch.round(values / scales.unsqueeze(-1)).clamp_(-127, 127).to(torch.int8)
    return q.numpy(), scales.half().numpy()


class EncoderCache:
    """A filled cache, read-only: `read(rows)` gives float32 model inputs, whatever the number type."""

    def __init__(self, folder: Path, shape: tuple[int, ...], kind: str, dtype: str = "float16"):
        self.folder, self.shape, self.kind, self.dtype = Path(folder), tuple(shape), kind, dtype
        # Read-only ("c", copy-on-write, would let torch wrap rows without a warning, but the kernel
        # counts a private writable mapping as committed memory and refuses one larger than RAM).
        self.data = np.memmap(self.folder / DATA_NAMES[dtype], dtype=np.dtype(dtype), mode="r", shape=self.shape)
        self.scales = None
        if dtype == "int8":
            self.scales = np.memmap(self.folder / SCALES_NAME, dtype=np.float16, mode="r", shape=self.shape[:-1])

    def __len__(self) -> int:
        return self.shape[0]

    def files(self) -> list[tuple[str, int]]:
        """(path, bytes per row) of each file the rows live in."""
        out = [(str(self.data.filename), int(np.prod(self.shape[1:])) * self.data.dtype.itemsize)]
        if self.scales is not None:
            out.append((str(self.scales.filename), int(np.prod(self.shape[1:-1])) * 2))
        return out

    def read(self, rows: list[int]):
        """(len(rows), *shape[1:]) float32 torch tensor of those rows."""
        import torch

        # One pass per row, stored numbers straight into the float32 batch: np.stack + astype made
        # two extra copies (a cross_kv batch of 16 is ~290 MB of float16 at 30 s): ~0.55 -> ~0.10 s
        # a batch on 2 cores, with trainer.keep_freed_memory.
        block = torch.empty((len(rows), *self.shape[1:]), dtype=torch.float32)
        with warnings.catch_warnings():
            # torch warns that it cannot protect a read-only array from writes; it is only read here.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for j, i in enumerate(rows):
                block[j].copy_(torch.from_numpy(np.asarray(self.data[i])))
                if self.scales is not None:
                    block[j].mul_(torch.from_numpy(np.asarray(self.scales[i])).unsqueeze(-1))
        return block


def build_encoder_cache(
    model, dataset, folder: Path, key: str, kind: str = "states", batch_size: int = 8, frames: int = N_FRAMES,
    dtype: str = "float16", bf16: bool = False,
) -> EncoderCache:
    """Fill (or finish) the cache of `dataset` at an encoder window of `frames`; returns it, read-only.
    `bf16`: compute it under bfloat16 autocast (`_encode`)."""
    if kind not in KINDS:
        raise ValueError(f"encoder_cache={kind!r}: use one of {KINDS} (or null for none)")
    if dtype not in DTYPES:
        raise ValueError(f"encoder_cache_dtype={dtype!r}: use one of {DTYPES}")
    folder.mkdir(parents=True, exist_ok=True)
    shape = cache_shape(model.config, len(dataset), kind, frames)
    meta_path, data_path, scales_path = folder / META_NAME, folder / DATA_NAMES[dtype], folder / SCALES_NAME
    meta = _read_meta(meta_path)
    if meta.get("key") != key or meta.get("shape") != list(shape) or not data_path.exists():
        for stale in (*(folder / name for name in DATA_NAMES.values()), scales_path):
            stale.unlink(missing_ok=True)  # a cache of another number type is never read again
        meta = {"key": key, "kind": kind, "shape": list(shape), "frames": frames, "dtype": dtype, "done": 0}
        np.memmap(data_path, dtype=np.dtype(dtype), mode="w+", shape=shape).flush()
        if dtype == "int8":
            np.memmap(scales_path, dtype=np.float16, mode="w+", shape=shape[:-1]).flush()
        _write_meta(meta_path, meta)
    data = np.memmap(data_path, dtype=np.dtype(dtype), mode="r+", shape=shape)
    scales = np.memmap(scales_path, dtype=np.float16, mode="r+", shape=shape[:-1]) if dtype == "int8" else None
    encoder = model.get_encoder()
    was_training = encoder.training
    encoder.eval()
    gib = np.prod(shape) * data.dtype.itemsize / 2**30
    desc = f"encoder cache ({kind}, {frames / 100:g} s, {dtype}, {gib:.1f} GiB)"
    with tqdm(total=len(dataset), initial=meta["done"], desc=desc, unit="clip") as bar:
        for start in range(meta["done"], len(dataset), batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            values = _encode(model, rows, kind, frames, bf16)
            if scales is None:
                data[start : start + len(rows)] = values.numpy().astype(np.float16)
            else:
                data[start : start + len(rows)], scales[start : start + len(rows)] = quantize_int8(values)
                scales.flush()
            data.flush()
            meta["done"] = start + len(rows)
            _write_meta(meta_path, meta)  # after the flush: a recorded row is a written row
            bar.update(len(rows))
    encoder.train(was_training)
    del data, scales
    return EncoderCache(folder, shape, kind, dtype)


class Readahead:
    """Ask the kernel to start reading cache rows that a coming step will use.

    A cross_kv cache of more clips than the page cache holds is read from disk at every epoch
    (~290 MB per batch of 16 in float16 at 30 s). The train collator runs in a DataLoader worker, a
    batch or two ahead of the step, and calls this with its rows: the reads then overlap the step
    before. Picklable (paths and row sizes), so it works with any worker start method.
    """

    def __init__(self, files: list[tuple[str, int]]):
        self.files = [(str(path), int(row_bytes)) for path, row_bytes in files]
        self._fds: list[int] | None = None

    def __call__(self, rows: list[int]) -> None:
        if not hasattr(os, "posix_fadvise"):
            return  # not on this OS: the step reads the rows itself
        if self._fds is None:
            self._fds = [os.open(path, os.O_RDONLY) for path, _ in self.files]
        for fd, (_, row_bytes) in zip(self._fds, self.files):
            for i in rows:
                os.posix_fadvise(fd, int(i) * row_bytes, row_bytes, os.POSIX_FADV_WILLNEED)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": None}

    def __del__(self):
        for fd in self._fds or ():
            os.close(fd)


def readahead_for(cache: EncoderCache) -> Readahead:
    """A `Readahead` over the files behind `cache` (as `build_encoder_cache` returns it)."""
    return Readahead(cache.files())


def cached_inputs(cache: EncoderCache, rows: list[int], kind: str, device: Any = None) -> dict[str, Any]:
    """Model inputs for a batch of cache rows, in place of ``input_features`` (on `device`)."""
    block = cache.read(rows)
    if device is not None:
        block = block.to(device)
    if kind == "states":
        # A tuple, as the model takes it: a bare tensor would be indexed as [0] = the first clip.
        return {"encoder_outputs": (block,)}
    import torch  # deferred, as in _encode
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
    return {"encoder_outputs": (stand_in,), "cache": past, "use_cache": True}


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_meta(path: Path, meta: dict) -> None:
    write_json(path, meta, indent=None)
