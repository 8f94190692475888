"""The feature store on disk: the manifest, who may write, and reading it all back.

Layout::

    OUT/feature_config.json           the resolved FeatureConfig (written before any work)
    OUT/manifest.jsonl                one line per committed shard: the truth about what is done
                                      (manifest-{i}-of-{n}.jsonl when n machines share a source,
                                      and manifest-{i}-of-{n}.done.json once run i has finished;
                                      `shard_merge` turns the n runs into one manifest.jsonl).
                                      Appended to, one fsynced line per shard; a resumed run first
                                      checks each committed shard's files against the line's sha256s
                                      and redoes a shard whose file is missing or changed
                                      (`check_committed`, `restore_shard_order`)
    OUT/{split}-{k:05d}.parquet       one `shard_format.ShardRow` per kept clip: clip_id, sentence,
                                      duration (s, float32), input_features (float16, n_mels x
                                      n_frames: only the frames that hold audio), n_frames (int32),
                                      pad_value (float32: the clip's floor), labels (int32),
                                      speaker (the source's speaker id; format 3 on)
    OUT/{split}-{k:05d}.rejects.jsonl the shard's dropped clips: id, reason, detail
    OUT/rejects.tsv                   every reject of the committed shards, rebuilt at the end of a run
    OUT/.manifest.lock                held by the run writing manifest.jsonl (.manifest-{i}-of-{n}.lock
                                      for a shared source); holds its PID, host and start time
    OUT/.claim.lock                   held for a moment while a run checks the folder and takes its lock

One writer per manifest, and one layout per folder: the shards of a plain run and of an
``--num-shards n`` run (or of runs with two different n) overlap, so the store refuses the mix
rather than doubling rows.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

from ..common.errors import UserError
from ..common.fileio import sha256_file, write_atomic
from ..common.locks import FileLock
from .feature_config import FeatureConfig
from .shard_format import ShardRow, with_current_columns

CONFIG_NAME = "feature_config.json"
MANIFEST_NAME = "manifest.jsonl"
CLAIM_LOCK_NAME = ".claim.lock"
_SHARDED_MANIFEST = re.compile(r"manifest-(\d+)-of-(\d+)\.jsonl")


class StoreBusy(UserError):
    """Another live process is writing this manifest of the store."""


class LayoutMismatch(UserError):
    """The folder holds (or is being filled by) runs that split the source another way."""


class FeatureStore:
    """A feature store folder: its config, its manifest(s), and its rows as a `datasets.Dataset`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not (self.folder / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{self.folder} is not a feature store (no {CONFIG_NAME}); run `whisper-sv features`")
        self.config = FeatureConfig.from_json(self.folder / CONFIG_NAME)

    @property
    def manifest(self) -> list[dict[str, Any]]:
        """The committed shards of every manifest in the folder, in shard order, each once.

        A store filled before second writers and mixed layouts were refused can list a shard twice
        (two runs at once, or a plain and a ``--num-shards`` run). Shard k is the same clips under
        the same config, so both lines name one file with one hash: it is read once, not twice. Two
        different hashes for one shard cannot be told apart, so that store is refused.
        """
        rows: dict[int, dict[str, Any]] = {}
        for m in sorted(self.folder.glob("manifest*.jsonl")):
            for row in read_manifest(m):
                seen = rows.setdefault(row["index"], row)
                if (seen["shard"], seen["sha256"]) != (row["shard"], row["sha256"]):
                    raise LayoutMismatch(
                        f"{self.folder}: shard {row['index']} is committed twice with different contents "
                        f"({seen['sha256'][:12]} and {row['sha256'][:12]}); rebuild the store into a new folder"
                    )
        return [rows[k] for k in sorted(rows)]

    @property
    def files(self) -> list[Path]:
        return [self.folder / r["shard"] for r in self.manifest]

    def __len__(self) -> int:
        return sum(r["rows"] for r in self.manifest)

    def dataset(self, **kwargs):
        """The committed rows as a `datasets.Dataset` (``load_dataset("parquet")``), columns named as
        `ShardRow`'s fields whichever format wrote the store; kwargs go to ``load_dataset``."""
        import datasets  # ~2 s to import: only the readers of a store pay it, not the pipeline's workers

        files = [str(self.folder / r["shard"]) for r in self.manifest if r["rows"] > 0]  # pyarrow cannot batch 0 rows
        if not files:
            raise ValueError(f"{self.folder}: no committed shards yet; run `whisper-sv features` first")
        return with_current_columns(datasets.load_dataset("parquet", data_files=files, split="train", **kwargs))

    def rows(self) -> Iterator[ShardRow]:
        """The committed rows, in shard order, as typed rows."""
        for record in self.dataset():
            yield ShardRow.from_record(record)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.folder)!r}, rows={len(self)}, shards={len(self.manifest)})"


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


def _manifest_entries(path: Path) -> list[tuple[bytes, dict[str, Any]]]:
    """The manifest's complete lines as (their bytes, with the newline; the parsed line)."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    good = data[: data.rfind(b"\n") + 1]
    return [(line, json.loads(line)) for line in good.splitlines(keepends=True) if line.strip()]


def damaged_files(folder: Path, line: dict[str, Any]) -> list[str]:
    """What is wrong with the files of committed shard `line` in `folder`: ``"NAME missing"`` or
    ``"NAME changed"`` for its shard file, and for its rejects file where the line records that
    file's sha256 (older manifests do not); empty when both match the hashes the line records."""
    checks = [(line["shard"], line["sha256"])]
    if line.get("rejects_file") and line.get("rejects_sha256"):
        checks.append((line["rejects_file"], line["rejects_sha256"]))
    wrong = []
    for name, sha256 in checks:
        path = folder / name
        if not path.is_file():
            wrong.append(f"{name} missing")
        elif sha256_file(path) != sha256:
            wrong.append(f"{name} changed")
    return wrong


def check_committed(folder: Path, manifest: Path, progress: bool = False) -> tuple[list[dict[str, Any]], dict[int, list[str]]]:
    """Check every shard committed in `manifest` against the sha256s its line records, before a
    resumed run skips it; returns (the lines of the shards that match, ``{index: what is wrong}``
    for the others).

    Only the manifest's writer calls this (it holds the manifest's lock): a torn last line is cut
    off (`read_manifest` with ``repair``), and when a shard's file is missing or differs (bytes
    changed, truncated, deleted after it was committed), the manifest is rewritten atomically
    (`write_atomic`: the old file or the new one, never a mix) without that shard's line(s), every
    other line byte for byte. The shard then counts as never committed: the run redoes it and
    appends its line again, and a run killed before that redoes it on its next resume. The redone
    line lands after later shards' lines; `restore_shard_order` puts it back once the run ends.
    Hashing reads every committed file once: about 0.1 s for the 105 MB of 3,000 synthetic clips
    from the page cache, a disk read of the store when it is not cached; with `progress` a bar
    shows it.
    """
    read_manifest(manifest, repair=True)
    entries = _manifest_entries(manifest)
    if not entries:
        return [], {}
    from tqdm.auto import tqdm  # only a resumed run gets here

    wrong: dict[int, list[str]] = {}
    with tqdm(total=len(entries), desc="check committed shards", unit="shard", disable=not progress, leave=False) as bar:
        for _, line in entries:
            if found := damaged_files(folder, line):
                wrong.setdefault(line["index"], []).extend(found)
            bar.update(1)
    if wrong:
        write_atomic(manifest, b"".join(raw for raw, line in entries if line["index"] not in wrong))
    return [line for _, line in entries if line["index"] not in wrong], wrong


def restore_shard_order(manifest: Path) -> bool:
    """Rewrite `manifest` atomically with its lines in shard order (a stable sort, each line's bytes
    kept) if a redone shard's line was appended after later ones, so the store's manifest is the
    one a run that never needed a redo writes; True if it was rewritten. Only the manifest's
    writer calls this, after closing the file it appends to."""
    entries = _manifest_entries(manifest)
    order = [line["index"] for _, line in entries]
    if order == sorted(order):
        return False
    write_atomic(manifest, b"".join(raw for raw, _ in sorted(entries, key=lambda e: e[1]["index"])))
    return True


def write_rejects_table(out: Path) -> None:
    """``rejects.tsv``: every reject of the committed shards (id, reason, detail), in shard order."""
    lines = ["id\treason\tdetail"]
    for row in FeatureStore(out).manifest:
        for line in (out / row["rejects_file"]).read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            lines.append("\t".join(str(r[k]).replace("\t", " ").replace("\n", " ") for k in ("id", "reason", "detail")))
    write_atomic(out / "rejects.tsv", "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# Who may write: one process per manifest, one layout per folder.


def manifest_name(shard_index: int = 0, num_shards: int = 1) -> str:
    """``manifest.jsonl`` for a plain run, ``manifest-{i}-of-{n}.jsonl`` for one of n machines."""
    return MANIFEST_NAME if num_shards == 1 else f"manifest-{shard_index}-of-{num_shards}.jsonl"


def manifest_layout(name: str) -> int | None:
    """The ``--num-shards`` a manifest file name belongs to (1 for ``manifest.jsonl``), else None."""
    if name == MANIFEST_NAME:
        return 1
    m = _SHARDED_MANIFEST.fullmatch(name)
    return int(m.group(2)) if m else None


def writer_lock_path(out: Path, manifest: str) -> Path:
    return out / f".{manifest.removesuffix('.jsonl')}.lock"


# The store's locks are the package's one file lock (`common.locks`): an exclusive ``flock`` whose
# file names its holder, dropped by the kernel however the holder dies, so a dead run's is taken over.


def take_writer_lock(out: Path, shard_index: int = 0, num_shards: int = 1) -> FileLock:
    """Become the one writer of this run's manifest in `out`, or raise `StoreBusy` / `LayoutMismatch`.

    Call it holding the folder's claim lock (``FileLock(out / CLAIM_LOCK_NAME)``), so two runs never
    check the layout at the same time. A layout is claimed by a manifest with committed shards or
    by a live writer: a folder whose only other runs were killed before committing anything takes
    any layout.
    """
    own = manifest_name(shard_index, num_shards)
    others = set()
    for path in sorted(out.glob("manifest*.jsonl")) + sorted(out.glob(".manifest*.lock")):
        name = path.name.lstrip(".").removesuffix(".lock").removesuffix(".jsonl") + ".jsonl"
        layout = manifest_layout(name)
        if layout is None or layout == num_shards:
            continue
        committed = path.suffix == ".jsonl" and bool(read_manifest(path))
        if committed or (path.suffix == ".lock" and FileLock(path).is_held()):
            others.add((name, layout))
    if others:
        names = ", ".join(sorted(n for n, _ in others))
        layouts = sorted({f"--num-shards {n}" if n > 1 else "a plain run (no --num-shards)" for _, n in others})
        asked = f"--num-shards {num_shards}" if num_shards > 1 else "a plain run"
        raise LayoutMismatch(
            f"{out} is filled by {' and '.join(layouts)} ({names}); {asked} would write the same shards "
            "again and double their rows. Continue with the same --num-shards, or use another --out"
        )
    lock = FileLock(writer_lock_path(out, own))
    if not lock.acquire():
        who = lock.holder() or {}
        raise StoreBusy(
            f"{out} is being written by PID {who.get('pid', '?')} on {who.get('host', '?')} "
            f"(since {who.get('since', '?')}, {own}); wait for it to finish, or use another --out. "
            "A second writer would process the same shards again"
        )
    return lock
