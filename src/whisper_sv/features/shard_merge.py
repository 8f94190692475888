"""Merging the ``--num-shards`` runs of one source into the store a one-machine run writes.

n machines each run ``whisper-sv features --num-shards n --shard-index i``, into one shared folder
or each into its own. Shard k holds the same clips under the same config whichever machine made
it, its file is named by k alone (``{split}-{k:05d}.parquet``) and its bytes are deterministic
(`shard_format.shard_bytes`), so the runs' shards together already *are* a one-machine store: only
the bookkeeping is split, one ``manifest-{i}-of-{n}.jsonl`` per run. `merge_shards` checks that
the runs belong together and are finished, brings their files into one folder (copied, each
checked against its manifest's sha256), and writes a one-machine run's bookkeeping:
``manifest.jsonl`` (the lines in shard order, byte-equal to a plain run's) and ``rejects.tsv``.
Then it removes the per-run manifests, so the folder is a plain store that every reader reads and
a later plain run with the same command resumes (it finds nothing left to do).

A run is known to be finished by its completion record ``manifest-{i}-of-{n}.done.json``, written
as the run's last act (`write_done_record`) and deleted when a run starts. It holds the source's
shard count (each run streams the whole source, so each knows it), the config, and the sha256 of
the manifest: a run killed before its last shard, or a manifest copied halfway, is refused rather
than merged short.

Crash safety: every file is written atomically (`fileio`), ``manifest.jsonl`` before the per-run
files are removed. A folder holding ``manifest.jsonl`` whose lines include every per-run line is a
merge killed while cleaning up, and a re-run finishes it; a merge re-run after success does nothing
but check the hashes.
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from tqdm.auto import tqdm

from ..common.errors import UserError
from ..common.fileio import COPY_CHUNK, atomic_file, differing_keys, remove_dead_temp_files, sha256_file, write_atomic, write_json
from ..common.locks import FileLock
from ..data.feature_store import (
    CLAIM_LOCK_NAME,
    CONFIG_NAME,
    MANIFEST_NAME,
    LayoutMismatch,
    StoreBusy,
    manifest_name,
    read_manifest,
    write_rejects_table,
    writer_lock_path,
)

_RUN_MANIFEST = re.compile(r"manifest-(\d+)-of-(\d+)\.jsonl")


def done_record_path(out: Path, shard_index: int, num_shards: int) -> Path:
    """``manifest-{i}-of-{n}.done.json``: the record that run i of n finished (not a ``manifest*.jsonl``)."""
    return Path(out) / manifest_name(shard_index, num_shards).replace(".jsonl", ".done.json")


def write_done_record(out: Path, shard_index: int, num_shards: int, config: dict[str, Any], source_shards: int,
                      source_clips: int) -> Path:
    """Mark run `shard_index` of `num_shards` in `out` finished: every shard it owns is committed."""
    manifest = Path(out) / manifest_name(shard_index, num_shards)
    record = {
        "shard_index": shard_index, "num_shards": num_shards, "source_shards": source_shards, "source_clips": source_clips,
        "manifest_sha256": sha256_file(manifest) if manifest.is_file() else hashlib.sha256(b"").hexdigest(),
        "config": config,
    }
    return write_json(done_record_path(out, shard_index, num_shards), record, sort_keys=True)


@dataclass
class _Run:
    """One ``--shard-index`` run as found in one folder."""

    folder: Path
    index: int
    num_shards: int
    lines: list[dict[str, Any]]
    done: dict[str, Any] | None  # its completion record, None while unfinished

    @property
    def name(self) -> str:
        return str(self.folder / manifest_name(self.index, self.num_shards))


def merge_shards(out: str | Path, sources: Iterable[str | Path] = (), *, source: str | None = None,
                 split: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Merge the finished ``--num-shards`` runs in `out` and in the folders `sources` into the store `out`.

    Afterwards `out` holds what a one-machine run of the same source and config writes: the same
    ``manifest.jsonl`` bytes, the same shard files (names and sha256), ``rejects.tsv`` and
    ``feature_config.json``. The `sources` are only read. `source`/`split`, when given, must be
    the runs' own. Raises `UserError` (one line) when a run is missing, unfinished or still being
    written, when runs of different ``--num-shards`` or configs are mixed, or a file does not match
    its hash. Returns a summary (shards, clips, rejects, files copied).
    """
    out = Path(out)
    folders = list(dict.fromkeys(Path(f).resolve() for f in sources))
    for folder in folders:
        if not folder.is_dir():
            raise UserError(f"--merge {folder}: no such folder; name the folders the --num-shards runs wrote")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    folders = [out.resolve()] + [f for f in folders if f != out.resolve()]
    try:
        # The claim lock for the whole merge: a run starting meanwhile waits, then finds a plain store.
        with FileLock(out / CLAIM_LOCK_NAME):
            for folder in folders:
                _refuse_live_writers(folder)
            merger = FileLock(writer_lock_path(out, MANIFEST_NAME))
            if not merger.acquire():
                raise StoreBusy(f"{out} is being written by a plain run or another merge; wait for it to finish")
            try:
                remove_dead_temp_files(out)
                return _merge(out, folders, source, split, progress)
            finally:
                merger.release()
    except BaseException:
        # A refused merge into a new folder leaves no trace (files it copied stay, for the re-run).
        if created and {p.name for p in out.iterdir()} <= {CLAIM_LOCK_NAME, writer_lock_path(out, MANIFEST_NAME).name}:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _merge(out: Path, folders: list[Path], source: str | None, split: str | None, progress: bool) -> dict[str, Any]:
    runs = [run for folder in folders for run in _find_runs(folder)]
    merged = read_manifest(out / MANIFEST_NAME) if (out / MANIFEST_NAME).is_file() else None
    if not runs and merged is None:
        raise UserError(f"no --num-shards runs to merge in {', '.join(map(str, folders))} (no manifest-I-of-N.jsonl); "
                        "pass the folders the runs wrote after --merge")
    config = _common_config(out, folders, runs)
    for key, asked in (("source", source), ("split", split)):
        if asked and asked != config.get(key):
            raise UserError(f"the runs are of {key} {config.get(key)!r}, not {asked!r}; leave out --{key} or name other folders")
    if merged is None:
        merged = _merged_lines(runs, folders)
    else:  # merged before (killed while cleaning up, or re-run): every run must be part of it
        _check_part_of(out, runs, merged)

    copied = 0
    for line in tqdm(merged, desc="merge", unit="shard", disable=not progress):
        for name, sha in ((line["shard"], line["sha256"]), (line["rejects_file"], line["rejects_sha256"])):
            copied += _bring(name, sha, out, folders[1:])
    if not (out / CONFIG_NAME).is_file():
        write_json(out / CONFIG_NAME, config, sort_keys=True)  # as `features._claim_folder` writes it
    # A plain run writes each line as json.dumps(line, sort_keys=True): the same bytes here.
    text = "".join(json.dumps(line, sort_keys=True) + "\n" for line in merged)
    if not (out / MANIFEST_NAME).is_file() or (out / MANIFEST_NAME).read_text(encoding="utf-8") != text:
        write_atomic(out / MANIFEST_NAME, text)
    write_rejects_table(out)
    # Last, the runs' own files in `out`: until now a killed merge re-runs from them. The completion
    # record goes before its manifest, so a kill in between leaves a run that is part of the merge.
    for run in runs:
        if run.folder == out.resolve():
            done_record_path(out, run.index, run.num_shards).unlink(missing_ok=True)
            (out / manifest_name(run.index, run.num_shards)).unlink(missing_ok=True)
    for lock in out.glob(".manifest-*-of-*.lock"):  # none is held: checked under the claim lock we hold
        lock.unlink(missing_ok=True)
    rejected = collections.Counter()
    for line in merged:
        rejected.update(line["rejects"])
    return {
        "out": str(out),
        "num_shards": max((r.num_shards for r in runs), default=1),
        "shards": len(merged),
        "clips_written": sum(line["rows"] for line in merged),
        "rejected": dict(sorted(rejected.items())),
        "files_copied": copied,
    }


def _find_runs(folder: Path) -> list[_Run]:
    runs = []
    for path in sorted(folder.glob("manifest-*-of-*.jsonl")):
        m = _RUN_MANIFEST.fullmatch(path.name)
        if not m:
            continue
        i, n = int(m.group(1)), int(m.group(2))
        done_path = done_record_path(folder, i, n)
        done = json.loads(done_path.read_text(encoding="utf-8")) if done_path.is_file() else None
        if done is not None and done.get("manifest_sha256") != sha256_file(path):
            raise UserError(f"{path} is not the manifest its run finished with (its sha256 differs from {done_path.name}): "
                            "a partial copy? copy it again from the machine that wrote it")
        runs.append(_Run(folder, i, n, read_manifest(path), done))
    return runs


def _refuse_live_writers(folder: Path) -> None:
    for lock in sorted(folder.glob(".manifest*.lock")):
        if FileLock(lock).is_held():
            who = FileLock(lock).holder() or {}
            raise StoreBusy(
                f"{folder} is still being written by PID {who.get('pid', '?')} on {who.get('host', '?')} "
                f"({lock.name.lstrip('.').removesuffix('.lock')}.jsonl); wait for it to finish, then merge"
            )


def _common_config(out: Path, folders: list[Path], runs: list[_Run]) -> dict[str, Any]:
    """The one feature config of `out`, the folders holding runs, and every run's completion record."""
    found: list[tuple[str, dict[str, Any]]] = []
    for folder in folders:
        path = folder / CONFIG_NAME
        if path.is_file():
            found.append((str(path), json.loads(path.read_text(encoding="utf-8"))))
        elif folder != out.resolve() and any(r.folder == folder for r in runs):
            raise UserError(f"{folder} holds runs but no {CONFIG_NAME}; copy the whole folder the run wrote")
    found += [(f"{run.name} (finished with)", run.done["config"]) for run in runs if run.done]
    if not found:
        raise UserError(f"{out} has no {CONFIG_NAME}: copy the whole folders the runs wrote, not only their manifests")
    first_name, first = found[0]
    for name, config in found[1:]:
        keys = differing_keys(first, config)
        if keys:
            diff = {k: (first.get(k), config.get(k)) for k in keys}
            raise UserError(f"{first_name} and {name} are of different feature configs ({diff}); only runs of one source, "
                            f"split and config merge: re-run the odd one with --config {first_name}")
    return first


def _merged_lines(runs: list[_Run], folders: list[Path]) -> list[dict[str, Any]]:
    """Every run's lines in shard order, after checking the runs cover the source exactly once."""
    layouts = sorted({r.num_shards for r in runs})
    if len(layouts) > 1:
        names = ", ".join(sorted({Path(r.name).name for r in runs}))
        raise LayoutMismatch(f"runs of --num-shards {' and '.join(map(str, layouts))} are mixed ({names}); they split the "
                             "source differently: merge the runs of one --num-shards, each in its own --out")
    n = layouts[0]
    lines: dict[int, dict[str, Any]] = {}
    source_shards: dict[int, int] = {}
    for i in range(n):
        mine = [r for r in runs if r.index == i]
        if not mine:
            raise UserError(f"run {i} of {n} is missing (no manifest-{i}-of-{n}.jsonl in {', '.join(map(str, folders))}): "
                            f"run `whisper-sv features ... --shard-index {i} --num-shards {n}`, or name its folder after --merge")
        finished = [r for r in mine if r.done]
        if not finished:
            raise UserError(f"run {i} of {n} ({mine[0].name}) did not finish (no {done_record_path(mine[0].folder, i, n).name}): "
                            "re-run its command, which skips the shards it committed, then merge")
        run = finished[0]
        k_total = run.done["source_shards"]
        owned = [k for k in range(k_total) if k % n == i]
        if [line["index"] for line in run.lines] != owned:
            raise UserError(f"{run.name} lists shards {[line['index'] for line in run.lines]}, not the {owned} it owns; "
                            "rebuild this run's folder")
        source_shards[i] = k_total
        for line in (line for r in mine for line in r.lines):
            seen = lines.setdefault(line["index"], line)
            if seen != line:
                raise UserError(f"shard {line['index']} is committed with different contents by two copies of run {i} "
                                f"({seen['sha256'][:12]} and {line['sha256'][:12]}); keep one copy of the run")
    if len(set(source_shards.values())) > 1:
        raise UserError(f"the runs saw sources of different sizes (shards per run index: {source_shards}): the source changed "
                        "between runs; re-run them all into a new folder")
    total = next(iter(source_shards.values()))
    return [lines[k] for k in range(total)]


def _check_part_of(out: Path, runs: list[_Run], merged: list[dict[str, Any]]) -> None:
    by_index = {line["index"]: line for line in merged}
    for run in runs:
        for line in run.lines:
            if by_index.get(line["index"]) != line:
                raise LayoutMismatch(f"{out} already holds a one-machine store ({MANIFEST_NAME}) that {run.name} is not part of "
                                     f"(shard {line['index']} differs); merge into another --out")


def _bring(name: str, sha256: str, out: Path, others: list[Path]) -> int:
    """Make ``out/name`` the file of hash `sha256`, copying it from one of `others`; 1 if copied, else 0."""
    dest = out / name
    if dest.is_file() and sha256_file(dest) == sha256:
        return 0
    for folder in others:
        src = folder / name
        if src.is_file() and _copy_checked(src, dest, sha256):
            return 1
    places = [str(p) for p in [dest] + [f / name for f in others] if p.is_file()]
    if places:
        raise UserError(f"{' and '.join(places)} do not match the sha256 of {name} in its manifest (a partial copy?); "
                        "copy it again from the machine that wrote it, then merge")
    raise UserError(f"{name} is in none of {', '.join(str(f) for f in [out, *others])}; "
                    "copy it from the machine that wrote it (or name its folder after --merge), then merge")


class _HashMismatch(Exception):
    pass


def _copy_checked(src: Path, dest: Path, sha256: str) -> bool:
    """Copy `src` onto `dest` atomically if its bytes hash to `sha256`; False (and `dest` untouched) if not."""
    digest = hashlib.sha256()
    try:
        with open(src, "rb") as f, atomic_file(dest) as sink:
            while chunk := f.read(COPY_CHUNK):
                digest.update(chunk)
                sink.write(chunk)
            if digest.hexdigest() != sha256:
                raise _HashMismatch  # inside the block: the temporary file is deleted, `dest` kept as it was
    except _HashMismatch:
        return False
    return True


def format_merge_summary(summary: dict[str, Any]) -> str:
    """One line: what the merged store holds and what the merge copied."""
    rejected = ", ".join(f"{k} {v}" for k, v in summary["rejected"].items()) or "none"
    merged = (f"merged from --num-shards {summary['num_shards']} runs" if summary["num_shards"] > 1
              else "already one store, every file as its manifest says")
    return (
        f"{summary['out']}: one store of {summary['clips_written']} clips in {summary['shards']} shards, {merged} "
        f"({summary['files_copied']} files copied in); rejected: {rejected}"
    )
