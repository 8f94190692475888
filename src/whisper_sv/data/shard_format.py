"""One clip as a feature store holds it (`ShardRow`), and the only code that names a shard's columns.

A shard is one Parquet file of rows. `shard_bytes` writes them; `read_shard` (an Arrow table) and
`with_current_columns` (the `datasets.Dataset` that `FeatureStore.dataset` loads) read them back
under today's column names, whichever format wrote the file.

Format history (`FORMAT_VERSION`, saved in each store's ``feature_config.json``):

1. the clip id column was named ``path``, though it holds the source's id of the clip (a Common
   Voice file name, a Hub audio path or row id), not a path. Such stores are still read (the
   column renamed to ``clip_id``), and the pipeline finishes one in its own format, so a store
   never mixes the two names.
2. the same column is ``clip_id``.
3. a last column, ``speaker``: the source's speaker id (`sources.Example.speaker`), so
   evaluation can score per speaker and voice family. Stores of formats 1 and 2 read with
   speaker "" in every row, and are finished in their own format (no ``speaker`` column), as
   format 1 stores are.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FORMAT_VERSION = 3  # bump when the shard layout changes, and say above how the old one is read
FORMATS = (1, 2, 3)  # the formats this code reads and finishes
RENAMED_COLUMNS = {"path": "clip_id"}  # format-1 name -> today's
ADDED_COLUMNS = {"speaker": (3, "")}  # column -> (the format that added it, its value in older stores)


@dataclass(frozen=True)
class ShardRow:
    """One kept clip: its id, transcript, compact log-mel and label ids."""

    clip_id: str  # the source's id of the clip: a Common Voice file name, a Hub audio path or row id
    sentence: str  # the transcript, as the source gives it
    duration: float  # seconds of audio (stored as float32)
    input_features: np.ndarray  # float16 (n_mels, n_frames): only the frames that hold audio
    n_frames: int  # log-mel frames kept (100 per second; smoothing may keep them all)
    pad_value: float  # the clip's floor: every frame past n_frames of the 3000-frame window
    labels: list[int]  # <|startoftranscript|><|sv|><|transcribe|><|notimestamps|> text <|endoftext|>
    speaker: str = ""  # the source's speaker id (a voice id, a Common Voice client_id hash); "": unknown

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "ShardRow":
        """A row from a record of `FeatureStore.dataset()` (features as nested lists)."""
        return cls(
            clip_id=record["clip_id"],
            sentence=record["sentence"],
            duration=float(record["duration"]),
            input_features=np.asarray(record["input_features"], dtype=np.float16).reshape(-1, record["n_frames"]),
            n_frames=int(record["n_frames"]),
            pad_value=float(record["pad_value"]),
            labels=list(record["labels"]),
            speaker=record.get("speaker") or "",
        )


COLUMNS = tuple(f.name for f in dataclasses.fields(ShardRow))


def shard_bytes(rows: Sequence[ShardRow], n_mels: int, format_version: int = FORMAT_VERSION) -> bytes:
    """The Parquet bytes of a shard: same rows in, same bytes out (no timestamps, fixed options).

    `format_version` 1 or 2 writes the columns as that format did, for a store started in it.
    """
    if format_version not in FORMATS:
        raise ValueError(f"format_version={format_version}: this version writes shard formats {FORMATS}")
    for r in rows:  # a wrong shape would shift every later clip's frames, silently
        if r.input_features.shape != (n_mels, r.n_frames):
            raise ValueError(f"{r.clip_id}: input_features {r.input_features.shape}, expected ({n_mels}, {r.n_frames})")
    n_frames = np.array([r.n_frames for r in rows], dtype=np.int32)
    flat = np.concatenate([r.input_features.reshape(-1) for r in rows]) if rows else np.zeros(0, np.float16)
    inner_offsets = np.concatenate([[0], np.cumsum(np.repeat(n_frames, n_mels), dtype=np.int64)]).astype(np.int32)
    inner = pa.ListArray.from_arrays(pa.array(inner_offsets), pa.array(flat, type=pa.float16()))
    features = pa.ListArray.from_arrays(pa.array(np.arange(len(rows) + 1, dtype=np.int32) * n_mels), inner)
    label_offsets = np.concatenate([[0], np.cumsum([len(r.labels) for r in rows], dtype=np.int64)]).astype(np.int32)
    label_values = np.array([t for r in rows for t in r.labels], dtype=np.int32)
    columns = {
        "clip_id": pa.array([r.clip_id for r in rows], pa.string()),
        "sentence": pa.array([r.sentence for r in rows], pa.string()),
        "duration": pa.array(np.array([r.duration for r in rows], dtype=np.float32)),
        "input_features": features,
        "n_frames": pa.array(n_frames),
        "pad_value": pa.array(np.array([r.pad_value for r in rows], dtype=np.float32)),
        "labels": pa.ListArray.from_arrays(pa.array(label_offsets), pa.array(label_values, pa.int32())),
        "speaker": pa.array([r.speaker for r in rows], pa.string()),
    }
    assert tuple(columns) == COLUMNS, "a shard's columns are ShardRow's fields, in order"
    columns = {name: column for name, column in columns.items() if ADDED_COLUMNS.get(name, (0,))[0] <= format_version}
    if format_version == 1:
        old_name = {new: old for old, new in RENAMED_COLUMNS.items()}
        columns = {old_name.get(name, name): column for name, column in columns.items()}
    sink = io.BytesIO()
    # zstd: fp16 log-mels compress by a further ~20 %; 64 rows per group keeps random reads cheap.
    pq.write_table(pa.table(columns), sink, compression="zstd", row_group_size=64, write_statistics=["duration", "n_frames"])
    return sink.getvalue()


def read_shard(path: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """The shard file at `path` as an Arrow table with today's columns (`columns`: only these), in
    today's order; a column an older format lacks holds its `ADDED_COLUMNS` value."""
    stored = set(pq.read_schema(path).names)
    stored_name = {new: old for old, new in RENAMED_COLUMNS.items() if old in stored}
    wanted = list(COLUMNS if columns is None else columns)
    table = pq.read_table(path, columns=[stored_name.get(c, c) for c in wanted if stored_name.get(c, c) in stored])
    table = table.rename_columns([RENAMED_COLUMNS.get(n, n) for n in table.column_names])
    for name in wanted:
        if name not in table.column_names and name in ADDED_COLUMNS:
            table = table.append_column(name, pa.array([ADDED_COLUMNS[name][1]] * table.num_rows, pa.string()))
    return table.select(wanted)


def with_current_columns(dataset):
    """`dataset` (a `datasets.Dataset` loaded from shards) with today's column names, and the
    columns an older format lacks filled with their `ADDED_COLUMNS` value."""
    for old, new in RENAMED_COLUMNS.items():
        if old in dataset.column_names:
            dataset = dataset.rename_column(old, new)
    for name, (_, value) in ADDED_COLUMNS.items():
        if name not in dataset.column_names:
            dataset = dataset.add_column(name, [value] * len(dataset))
    return dataset
