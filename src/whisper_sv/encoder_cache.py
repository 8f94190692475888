"""Cache what does not change: a frozen encoder's outputs, computed once per training clip.

With the encoder frozen and SpecAugment off, the encoder maps each clip to the same
(1500, d_model) states at every epoch. On a CPU the encoder is most of a training step (a 30 s
window is ~85 GFLOP for Whisper base, whatever the clip's length), so computing it once and
training the decoder on the cached states makes a CPU fine-tune feasible.

The cache is a float16 memmap in the run folder plus a ``cache.json`` that says which model and
which rows it holds and how many rows are done; it is filled in batches and survives a kill (the
rows past the recorded count are recomputed). A cache made for another model, store or row count
is rebuilt, never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .logmel import collate_features

CACHE_NAME = "encoder_outputs.f16"
META_NAME = "cache.json"


def cache_key(model_spec: str, shard_sha256s: list[str], n_rows: int) -> str:
    """Identity of a cache: the model, the exact shards (their manifest sha256s), the rows used."""
    h = hashlib.sha256(model_spec.encode())
    for digest in shard_sha256s:
        h.update(digest.encode())
    h.update(str(n_rows).encode())
    return h.hexdigest()[:16]


def build_encoder_cache(model, dataset, folder: Path, key: str, batch_size: int = 8) -> np.memmap:
    """Fill (or finish) the cache of `dataset`'s encoder outputs; returns the read-only memmap.

    Shape (len(dataset), max_source_positions, d_model), float16: the encoder's output rounded
    once, as a bf16/fp16 GPU run would see it.
    """
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    shape = (n, model.config.max_source_positions, model.config.d_model)
    meta_path, data_path = folder / META_NAME, folder / CACHE_NAME
    meta = _read_meta(meta_path)
    if meta.get("key") != key or meta.get("shape") != list(shape) or not data_path.exists():
        meta = {"key": key, "shape": list(shape), "done": 0}
        np.memmap(data_path, dtype=np.float16, mode="w+", shape=shape).flush()
        _write_meta(meta_path, meta)
    cache = np.memmap(data_path, dtype=np.float16, mode="r+", shape=shape)
    encoder = model.get_encoder()
    was_training = encoder.training
    encoder.eval()
    with tqdm(total=n, initial=meta["done"], desc="encoder cache", unit="clip") as bar:
        for start in range(meta["done"], n, batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, n))]
            with torch.no_grad():
                states = encoder(collate_features(rows).to(model.device, model.dtype)).last_hidden_state
            cache[start : start + len(rows)] = states.float().cpu().numpy().astype(np.float16)
            cache.flush()
            meta["done"] = start + len(rows)
            _write_meta(meta_path, meta)  # after the flush: a recorded row is a written row
            bar.update(len(rows))
    encoder.train(was_training)
    del cache
    return np.memmap(data_path, dtype=np.float16, mode="r", shape=shape)


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_meta(path: Path, meta: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, path)
