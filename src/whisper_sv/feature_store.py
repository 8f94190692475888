"""The feature store on disk: atomic files, the manifest, Parquet shards, and reading it all back.

Layout (DESIGN.md, Feature store)::

    OUT/feature_config.json           the resolved FeatureConfig (written before any work)
    OUT/manifest.jsonl                one line per committed shard: the truth about what is done
                                      (manifest-{i}-of-{n}.jsonl when n machines share a source)
    OUT/{split}-{k:05d}.parquet       path, sentence, duration (s, float32), input_features (float16,
                                      n_mels x n_frames: only the frames that hold audio), n_frames
                                      (int32), pad_value (float32: the clip's floor), labels (int32)
    OUT/{split}-{k:05d}.rejects.jsonl the shard's dropped clips: id, reason, detail
    OUT/rejects.tsv                   every reject of the committed shards, rebuilt at the end of a run
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

CONFIG_NAME = "feature_config.json"
MANIFEST_NAME = "manifest.jsonl"


class FeatureStore:
    """A feature store folder: its config, its manifest(s), and its rows as a `datasets.Dataset`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not (self.folder / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{self.folder} is not a feature store (no {CONFIG_NAME}); run `whisper-sv features`")
        from .features import FeatureConfig  # the config lives with the pipeline that writes it

        self.config = FeatureConfig.from_json(self.folder / CONFIG_NAME)

    @property
    def manifest(self) -> list[dict[str, Any]]:
        """The committed shards of every manifest in the folder, in shard order."""
        rows = [r for m in sorted(self.folder.glob("manifest*.jsonl")) for r in read_manifest(m)]
        return sorted(rows, key=lambda r: r["index"])

    @property
    def files(self) -> list[Path]:
        return [self.folder / r["shard"] for r in self.manifest]

    def __len__(self) -> int:
        return sum(r["rows"] for r in self.manifest)

    def dataset(self, **kwargs):
        """The committed rows as a `datasets.Dataset` (``load_dataset("parquet")``); kwargs go to it."""
        import datasets

        files = [str(self.folder / r["shard"]) for r in self.manifest if r["rows"] > 0]  # pyarrow cannot batch 0 rows
        if not files:
            raise ValueError(f"{self.folder}: no committed shards yet; run `whisper-sv features` first")
        return datasets.load_dataset("parquet", data_files=files, split="train", **kwargs)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.folder)!r}, rows={len(self)}, shards={len(self.manifest)})"


def commit_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically: a temp name, fsync, rename, fsync the folder."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def shard_bytes(rows: list[tuple], n_mels: int) -> bytes:
    """The Parquet bytes of a shard: same rows in, same bytes out (no timestamps, fixed options)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n_frames = np.array([r[4] for r in rows], dtype=np.int32)
    flat = np.concatenate([r[3].reshape(-1) for r in rows]) if rows else np.zeros(0, np.float16)
    inner_offsets = np.concatenate([[0], np.cumsum(np.repeat(n_frames, n_mels), dtype=np.int64)]).astype(np.int32)
    inner = pa.ListArray.from_arrays(pa.array(inner_offsets), pa.array(flat, type=pa.float16()))
    features = pa.ListArray.from_arrays(pa.array(np.arange(len(rows) + 1, dtype=np.int32) * n_mels), inner)
    label_offsets = np.concatenate([[0], np.cumsum([len(r[6]) for r in rows], dtype=np.int64)]).astype(np.int32)
    label_values = np.array([t for r in rows for t in r[6]], dtype=np.int32)
    table = pa.table(
        {
            "path": pa.array([r[0] for r in rows], pa.string()),
            "sentence": pa.array([r[1] for r in rows], pa.string()),
            "duration": pa.array(np.array([r[2] for r in rows], dtype=np.float32)),
            "input_features": features,
            "n_frames": pa.array(n_frames),
            "pad_value": pa.array(np.array([r[5] for r in rows], dtype=np.float32)),
            "labels": pa.ListArray.from_arrays(pa.array(label_offsets), pa.array(label_values, pa.int32())),
        }
    )
    sink = io.BytesIO()
    # zstd: fp16 log-mels compress by a further ~20 %; 64 rows per group keeps random reads cheap.
    pq.write_table(table, sink, compression="zstd", row_group_size=64, write_statistics=["duration", "n_frames"])
    return sink.getvalue()


def read_manifest(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """The manifest's complete lines. A torn last line (a run killed mid-write) is ignored, and with
    `repair` (only the process about to append) cut off the file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    good = data[: data.rfind(b"\n") + 1]
    if repair and len(good) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(good))
            os.fsync(f.fileno())
    return [json.loads(line) for line in good.decode().splitlines() if line.strip()]


def remove_temp_files(out: Path) -> None:
    """Delete the temp files of writes that never finished (a killed run's litter)."""
    for tmp in out.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def write_rejects_table(out: Path) -> None:
    """``rejects.tsv``: every reject of the committed shards (id, reason, detail), in shard order."""
    lines = ["id\treason\tdetail"]
    for row in FeatureStore(out).manifest:
        for line in (out / row["rejects_file"]).read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            lines.append("\t".join(str(r[k]).replace("\t", " ").replace("\n", " ") for k in ("id", "reason", "detail")))
    commit_file(out / "rejects.tsv", ("\n".join(lines) + "\n").encode())
