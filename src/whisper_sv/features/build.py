"""The feature pipeline: any source -> a crash-safe store of compact Whisper inputs.

A source is streamed and cut into deterministic shards of `shard_size` consecutive examples
(shard k = examples [k * size, (k + 1) * size)). A pool of workers, one math thread each, turns a
shard into one Parquet file: decode and resample (libsndfile + soxr), `log_mel` over the frames
that hold audio, optional OpenCV smoothing, Swedish/transcribe labels. Each file is written under a
temporary name, fsynced and renamed; only then does the parent append its line (name, rows, sha256,
rejects) to the manifest, so a killed run is resumed by redoing the shards that were in flight and
nothing else. ``feature_config.json`` (everything that changes the numbers) is written before any
work and compared on resume: a different config is refused, never mixed in. Before anything is
written the source is opened and its first row read, so a mistyped ``--source`` leaves no trace.
One process writes a manifest at a time (a lock file naming its PID; the lock of a dead run is
taken over), and plain and ``--num-shards`` runs are never mixed in one folder; the finished
``--num-shards`` runs merge into the store a plain run writes (``--merge``, `shard_merge`). Workers
watch the parent and exit when it dies, however it dies.

The store's layout and the code that reads it back are in `feature_store`, the row type and the
shard files in `shard_format`, the config in `feature_config`.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm.auto import tqdm

from ..audio import logmel
from ..audio.io import SAMPLE_RATE, AudioError
from ..audio.logmel import log_mel, smooth_log_mel
from ..common.errors import UserError
from ..common.fileio import differing_keys, pid_is_alive, remove_dead_temp_files, write_atomic, write_json
from ..common.locks import FileLock
from ..common.options import add_options, options_from
from ..data.feature_config import ORIGIN_KEYS, RUN_KEYS, FeatureConfig
from ..data.feature_store import (
    CLAIM_LOCK_NAME,
    CONFIG_NAME,
    check_committed,
    manifest_name,
    read_manifest,
    restore_shard_order,
    take_writer_lock,
    write_rejects_table,
)
from ..data.recipe import ExtraRow, ShardExtras, Tokens, nonspeech_rows, replay_plan, stitched_rows
from ..data.shard_format import FORMATS, ShardRow, shard_bytes
from ..data.sources import Example, decode_example, iter_examples, open_source
from ..models.specs import DEFAULT_LANGUAGE, TASK, model_errors, resolve_model, whisper_language
from .shard_merge import done_record_path, format_merge_summary, merge_shards, write_done_record

log = logging.getLogger(__name__)

REJECT_REASONS = (
    "too_long", "empty", "undecodable", "missing", "truncated",  # the audio
    "empty_text", "labels_too_long",  # the transcript
    "bad_encoding", "bad_row",  # the source row itself (a TSV line that is not UTF-8 or has too few fields)
)
PARENT_POLL_S = 0.5  # how often a worker checks that the run that started it is still alive


class ConfigMismatch(UserError):
    """The output folder holds features made with another config."""


# ---------------------------------------------------------------------------------------------
# The library call.


def build_features(
    source: str | None = None,
    split: str | None = None,
    out: str | Path = "features",
    config: FeatureConfig | None = None,
    workers: int | None = None,
    shard_index: int = 0,
    num_shards: int = 1,
    push_to_hub: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write (or finish) the feature store of `source`/`split` in `out`; returns the run summary.

    `source` and `split` override the config's. With ``num_shards=n`` this process owns the shards
    k with ``k % n == shard_index`` and writes ``manifest-{i}-of-{n}.jsonl`` (and, once finished,
    its completion record), so n machines fill one folder, or n folders that `merge_shards` turns
    into one plain store. Shards already in the manifest are skipped once their files are checked
    against its sha256s (one whose file is missing or changed is redone, `check_committed`); a
    config different from the one saved in `out` raises `ConfigMismatch`.
    """
    config = config or FeatureConfig()
    config = dataclasses.replace(config, source=source or config.source, split=split or config.split)
    if not config.source:
        raise UserError("no source: pass --source cv:PATH (or hf:ID[:CONFIG])")
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise UserError(f"--shard-index {shard_index} --num-shards {num_shards}: use 0 <= shard-index < num-shards")
    out = Path(out)
    # 1. Check everything the run reads before writing anything: the model, then the source.
    model_dir = resolve_model(config.model)  # converts the packaged model once, here, not per worker
    if config.n_mels is None:
        config = dataclasses.replace(config, n_mels=_model_n_mels(model_dir))
    tokenizer = load_tokenizer(model_dir, config.language, config.task)
    # The first row is read now: a mistyped --source or --split fails before the folder exists.
    examples = open_source(config.source, config.split, audio_column=config.audio_column, text_column=config.text_column)
    total = _count_examples(config) if config.source.startswith("cv:") or Path(config.source, "clips").is_dir() else None
    plan = _recipe_plan(config, model_dir, tokenizer)  # reads a replay source now: a typo fails before the folder exists
    # 2. Claim the folder: its config, its layout, and this manifest's writer lock.
    config, writer = _claim_folder(out, config, shard_index, num_shards)
    try:
        remove_dead_temp_files(out)
        if num_shards > 1:  # finished again only once this run ends
            done_record_path(out, shard_index, num_shards).unlink(missing_ok=True)
        manifest = out / manifest_name(shard_index, num_shards)
        # A committed shard is skipped only if its files still hash as its line says; one missing
        # or changed since is dropped from the manifest and redone.
        committed, damaged = check_committed(out, manifest, progress=progress)
        if damaged:
            log.warning("%s: redoing %d committed shard(s) whose files are missing or changed: %s", out, len(damaged),
                        "; ".join(f"shard {k} ({', '.join(what)})" for k, what in sorted(damaged.items())))
        done = {row["index"] for row in committed}
        workers = max(1, workers or os.cpu_count() or 1)
        # 3. The shards this run owns and has not committed, labelled, through the pool.
        seen = collections.Counter()  # the source's shards and clips, for the completion record
        shards = _shards(examples, config.shard_size, seen)
        owned = ((k, exs) for k, exs in shards if k % num_shards == shard_index and k not in done)
        todo = _with_labels(owned, tokenizer, plan)
        started, written, rejected, n_shards = time.perf_counter(), 0, collections.Counter(), 0
        bar = _progress(total, progress, skipped=sum(r["clips"] for r in committed))
        with manifest.open("a", encoding="utf-8") as log_file:
            for line in _run_shards(todo, out, config, workers):
                log_file.write(json.dumps(line, sort_keys=True) + "\n")
                log_file.flush()
                os.fsync(log_file.fileno())
                written += line["rows"]
                rejected.update(line["rejects"])
                n_shards += 1
                bar.update(line["clips"])
        bar.close()
        restore_shard_order(manifest)  # a redone shard's line back in its place, as a fresh run writes it
        remove_dead_temp_files(out)
        write_rejects_table(out)
        if num_shards > 1:
            write_done_record(out, shard_index, num_shards, config.to_dict(), seen["shards"], seen["clips"])
    finally:
        writer.release()
    seconds = time.perf_counter() - started
    summary = {
        "out": str(out),
        "shards_written": n_shards,
        "shards_skipped": len(done),
        "shards_redone": len(damaged),
        "clips_written": written,
        "rejected": dict(sorted(rejected.items())),
        "seconds": round(seconds, 2),
        "clips_per_s": round((written + sum(rejected.values())) / seconds, 1) if seconds > 0 else None,
    }
    if push_to_hub:
        summary["pushed_to"] = push_store(out, push_to_hub)
    return summary


def push_store(out: str | Path, repo: str) -> str:
    """Upload the store's shards, config, manifests and rejects to the dataset repo `repo`."""
    try:
        from huggingface_hub import HfApi  # only --push-to-hub needs the Hub client

        api = HfApi()
        api.create_repo(repo, repo_type="dataset", exist_ok=True)
        api.upload_folder(
            folder_path=str(out),
            repo_id=repo,
            repo_type="dataset",
            allow_patterns=["*.parquet", CONFIG_NAME, "manifest*.jsonl", "*.rejects.jsonl", "rejects.tsv"],
        )
    except Exception as err:  # network, auth, permissions: say what to do, keep the local store
        raise RuntimeError(
            f"could not push {out} to the Hub dataset {repo!r} ({type(err).__name__}: {err}); the local store is "
            "complete - run `huggingface-cli login` (or set HF_TOKEN) and retry with --push-to-hub"
        ) from err
    return f"https://huggingface.co/datasets/{repo}"


# ---------------------------------------------------------------------------------------------
# One shard, in a worker.

def _init_worker(n_mels: int, bank: np.ndarray, parent: int | None = None) -> None:
    """One math thread per worker (the pool supplies the parallelism), and the mel bank from the parent.

    Workers import neither transformers nor the tokenizer (the parent tokenizes), so they start in
    about a second. With `parent` (the run's PID) a watchdog thread ends the worker when that
    process is gone: the pool's pipes do not (every worker holds both ends of the task queue, and
    the forkserver stays up while a worker holds its pipe), so after a ``kill -9`` of the run its
    workers would live on, each with a model's worth of memory, for as long as their shard lasts
    and then wait forever.
    """
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), name="watch-parent", daemon=True).start()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    import cv2  # after the variables above: the math libraries read them when first imported
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    logmel.use_mel_filters(n_mels, bank)


def _exit_with(pid: int) -> None:
    """Exit this process as soon as process `pid` has ended (a zombie counts as ended)."""
    while pid_is_alive(pid):
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def load_tokenizer(model: str, language: str = DEFAULT_LANGUAGE, task: str = TASK):
    """The model's tokenizer set to prefix <|startoftranscript|><|LANG|><|transcribe|><|notimestamps|>
    (LANG: Whisper's code of `language`, e.g. <|no|> for nb)."""
    from transformers import AutoTokenizer  # in the parent only: workers import this module, not transformers

    path = resolve_model(model)
    with model_errors(model, path):
        tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.set_prefix_tokens(language=whisper_language(language), task=task, predict_timestamps=False)
    return tokenizer


def process_shard(index: int, examples: list, labels: list[list[int]], out: Path, config: FeatureConfig,
                  extras: ShardExtras | None = None) -> dict[str, Any]:
    """Turn one shard of examples (and their label ids) into ``{split}-{index:05d}.parquet`` + rejects.

    With `extras` (a recipe, recipe.py) the shard also gets its stitched, non-speech and replayed
    rows, after its plain ones. Returns the shard's manifest line.
    """
    rows, rejects = [], []
    kept: list[tuple] = []  # (audio, sentence, labels, spaced text ids, speaker) of the plain rows, for stitching
    for i, (ex, ids) in enumerate(zip(examples, labels)):
        reason, detail = None, ""
        if ex.reject is not None:
            reason, detail = ex.reject
        elif not ex.sentence.strip():
            reason, detail = "empty_text", "the transcript is empty"
        elif len(ids) > config.max_label_tokens:
            reason, detail = "labels_too_long", f"{len(ids)} label tokens > {config.max_label_tokens}"
        else:
            try:
                audio = decode_example(ex, max_seconds=config.max_seconds)
            except AudioError as err:
                reason, detail = err.reason, str(err)
            except Exception as err:  # a decoder crash must not take the shard down with it
                reason, detail = "undecodable", f"{type(err).__name__}: {err}"
        if reason:
            rejects.append({"id": ex.id, "reason": reason, "detail": detail})
            continue
        rows.append(_row(ex.id, ex.sentence, audio, ids, ex.speaker, config))
        if extras is not None and extras.recipe.stitched_share:
            kept.append((audio, ex.sentence, ids, extras.spaced_text[i], ex.speaker))
    if extras is not None:
        extra_rows, extra_rejects = _recipe_rows(index, len(examples), kept, extras, config)
        rows += [_row(r.clip_id, r.sentence, r.audio, r.labels, r.speaker, config) for r in extra_rows]
        rejects += extra_rejects

    name = f"{config.split}-{index:05d}"
    rejects_name = f"{name}.rejects.jsonl"
    reject_bytes = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rejects).encode()
    write_atomic(out / rejects_name, reject_bytes)
    data = shard_bytes(rows, config.n_mels, config.format_version)
    write_atomic(out / f"{name}.parquet", data)
    return {
        "index": index,
        "shard": f"{name}.parquet",
        "rows": len(rows),
        "clips": len(examples),
        "sha256": hashlib.sha256(data).hexdigest(),
        "rejects": dict(sorted(collections.Counter(r["reason"] for r in rejects).items())),
        "rejects_file": rejects_name,
        "rejects_sha256": hashlib.sha256(reject_bytes).hexdigest(),
    }


def _row(clip_id: str, sentence: str, audio: np.ndarray, labels: list[int], speaker: str, config: FeatureConfig) -> ShardRow:
    compact, n_frames, pad_value = log_mel(audio, config.n_mels)
    compact, n_frames = smooth_log_mel(compact, n_frames, pad_value, config.smoothing)
    return ShardRow(
        clip_id=clip_id, sentence=sentence, duration=len(audio) / SAMPLE_RATE, input_features=compact.astype(np.float16),
        n_frames=n_frames, pad_value=pad_value, labels=labels, speaker=speaker,
    )


def _recipe_rows(index: int, n_plain: int, kept: list[tuple], extras: ShardExtras,
                 config: FeatureConfig) -> tuple[list[ExtraRow], list[dict]]:
    """The recipe's rows of one shard (stitched, non-speech, replayed) and the replayed clips that could not be used."""
    rows = stitched_rows(index, kept, extras) + nonspeech_rows(index, n_plain, extras)
    rejects = []
    for ex, ids in zip(extras.replay, extras.replay_labels):
        clip_id = f"replay:{ex.id}"
        try:
            if ex.reject is not None:
                raise AudioError(*ex.reject)
            if len(ids) > config.max_label_tokens:
                raise AudioError("labels_too_long", f"{len(ids)} label tokens > {config.max_label_tokens}")
            audio = decode_example(ex, max_seconds=config.max_seconds)
        except AudioError as err:
            rejects.append({"id": clip_id, "reason": err.reason, "detail": str(err)})
            continue
        except Exception as err:  # a decoder crash must not take the shard down with it
            rejects.append({"id": clip_id, "reason": "undecodable", "detail": f"{type(err).__name__}: {err}"})
            continue
        rows.append(ExtraRow(clip_id, ex.sentence, audio, list(ids), ex.speaker))
    rejects += [{"id": r.clip_id, "reason": "labels_too_long", "detail": f"{len(r.labels)} label tokens"}
                for r in rows if len(r.labels) > config.max_label_tokens]
    return [r for r in rows if len(r.labels) <= config.max_label_tokens], rejects


# ---------------------------------------------------------------------------------------------
# Orchestration in the parent.


def _shards(examples: Iterator[Example], shard_size: int, seen: collections.Counter) -> Iterator[tuple[int, list]]:
    for k in range(1 << 62):
        chunk = list(islice(examples, shard_size))
        if not chunk:
            return
        seen.update(shards=1, clips=len(chunk))
        yield k, chunk


def _with_labels(shards, tokenizer, plan: dict[str, Any] | None = None) -> Iterator[tuple[int, list, list[list[int]], ShardExtras | None]]:
    """Add label ids (and, with a recipe, what its rows need) to each shard. The parent tokenizes (a
    batch of sentences takes milliseconds), so workers never import transformers."""
    for k, examples in shards:
        labels = tokenizer([ex.sentence for ex in examples]).input_ids if examples else []
        extras = None
        if plan is not None:
            recipe = plan["recipe"]
            spaced = (tokenizer([" " + ex.sentence.strip() for ex in examples], add_special_tokens=False).input_ids
                      if recipe.stitched_share and examples else [])
            picks = replay_plan(len(plan["replay"]), k, len(examples), recipe)
            extras = ShardExtras(recipe, plan["tokens"], spaced, [plan["replay"][i] for i in picks],
                                 [plan["replay_labels"][i] for i in picks])
        yield k, examples, labels, extras


def _recipe_plan(config: FeatureConfig, model_dir: str, tokenizer) -> dict[str, Any] | None:
    """What every shard's recipe rows draw on: the token ids, and the replay source's rows (read once,
    undecoded) with their labels in the replay language. None without a recipe that adds rows."""
    recipe = config.recipe
    if recipe is None or not recipe.adds_rows:
        return None
    if recipe.nonspeech_share or recipe.stitched_share:
        if config.task != "transcribe":
            raise UserError("a recipe with stitched or non-speech clips labels transcripts: use task transcribe")
    replay, replay_labels = [], []
    if recipe.replay_share:
        replay = [ex for ex in iter_examples(recipe.replay_source, recipe.replay_split) if ex.reject is None and ex.sentence.strip()]
        if not replay:
            raise UserError(f"recipe replay_source {recipe.replay_source}:{recipe.replay_split} holds no usable clips")
        replay_labels = load_tokenizer(model_dir, recipe.replay_language, config.task)([ex.sentence for ex in replay]).input_ids
    tokens = Tokens.of(tokenizer, config.language, config.task, recipe.replay_language if recipe.replay_share else None)
    return {"recipe": recipe, "tokens": tokens, "replay": replay, "replay_labels": replay_labels}


def _run_shards(todo, out: Path, config: FeatureConfig, workers: int) -> Iterator[dict]:
    """Process shards, yielding manifest lines in shard order with at most 2 x workers in flight."""
    if workers == 1:
        for k, examples, labels, extras in todo:
            yield process_shard(k, examples, labels, out, config, extras)
        return
    ctx = get_context("forkserver" if "forkserver" in get_all_start_methods() else "spawn")
    bank = logmel.mel_filters(config.n_mels)
    # concurrent.futures rather than multiprocessing.Pool: a worker killed by the OS (OOM, a decoder
    # segfault) raises BrokenProcessPool here instead of hanging the run forever.
    initargs = (config.n_mels, bank, os.getpid())
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=initargs) as pool:
        pending: collections.deque = collections.deque()
        for k, examples, labels, extras in todo:
            pending.append(pool.submit(process_shard, k, examples, labels, out, config, extras))
            if len(pending) >= 2 * workers:  # bounded: a streamed source never piles up in memory
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _claim_folder(out: Path, config: FeatureConfig, shard_index: int, num_shards: int) -> tuple[FeatureConfig, FileLock]:
    """Become the writer of this run's manifest in `out` and check (or write) ``feature_config.json``.

    Under the folder's claim lock, so runs starting together take turns: the layout check and the
    writer lock (`take_writer_lock`), then the config. A saved config that differs is refused,
    unless no shard was ever committed and nobody is writing (a run started with a typo and
    stopped): then there is nothing it could be mixed with, and the new config replaces it. A
    store is finished in the shard format it was started in (`shard_format`), so an older store
    never mixes column names. Returns the config and the held writer lock; the caller releases it.
    """
    path = out / CONFIG_NAME
    wanted = config.to_dict()
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(out / CLAIM_LOCK_NAME):
        writer = take_writer_lock(out, shard_index, num_shards)
        try:
            if path.is_file():
                found = json.loads(path.read_text())
                if found.get("format_version") in FORMATS and found["format_version"] != config.format_version:
                    config = dataclasses.replace(config, format_version=found["format_version"])
                    wanted = config.to_dict()
                if found != wanted and (_has_commits(out) or _has_other_writers(out, writer)):
                    raise ConfigMismatch(_mismatch_message(out, found, wanted))
                if found != wanted:
                    log.warning("%s: no shard was committed with the saved config; replacing it", out)
                else:
                    return config, writer
            write_json(path, wanted, sort_keys=True)
            return config, writer
        except BaseException:
            writer.release()
            raise


def _has_commits(out: Path) -> bool:
    return any(read_manifest(m) for m in out.glob("manifest*.jsonl"))


def _has_other_writers(out: Path, mine: FileLock) -> bool:
    return any(FileLock(p).is_held() for p in out.glob(".manifest*.lock") if p != mine.path)


def _mismatch_message(out: Path, found: dict[str, Any], wanted: dict[str, Any]) -> str:
    if found.get("format_version") not in FORMATS:
        return (
            f"{out} holds a store of format {found.get('format_version')}, which this whisper-sv cannot finish "
            f"(it writes formats {FORMATS}): use the whisper-sv that started it, or another --out"
        )
    keys = differing_keys(found, wanted)
    diff = {k: (found.get(k), wanted.get(k)) for k in keys}
    if set(keys) <= set(ORIGIN_KEYS):
        # --config cannot help here: the command line's --source and --split override it.
        return (
            f"{out} holds features of {found.get('source')} split {found.get('split')!r} (saved vs asked: {diff}); "
            "one store holds one split of one source: use another --out, or delete the folder"
        )
    return (
        f"{out} holds features made with another config (saved vs asked: {diff}); "
        f"use another --out, delete the folder, or pass the saved config with --config {out / CONFIG_NAME}"
    )


def _model_n_mels(model_dir: str) -> int:
    folder = Path(model_dir)
    if (folder / "preprocessor_config.json").is_file():
        return int(json.loads((folder / "preprocessor_config.json").read_text())["feature_size"])
    if (folder / "processor_config.json").is_file():  # transformers 5 nests it in the processor's
        extractor = json.loads((folder / "processor_config.json").read_text()).get("feature_extractor", {})
        if "feature_size" in extractor:
            return int(extractor["feature_size"])
    from transformers import WhisperFeatureExtractor  # parent only, as in load_tokenizer

    with model_errors(model_dir, model_dir):
        return int(WhisperFeatureExtractor.from_pretrained(model_dir).feature_size)


def _count_examples(config: FeatureConfig) -> int:
    return sum(1 for _ in iter_examples(config.source, config.split))


def _progress(total: int | None, enabled: bool, skipped: int):
    bar = tqdm(total=total, initial=skipped, desc="features", unit="clip", disable=not enabled, smoothing=0.1)
    return bar


# ---------------------------------------------------------------------------------------------
# CLI.


# FeatureConfig fields that are not flags: where the clips come from is the run's --source/--split,
# and the shard format is the store's own.
NOT_FLAGS = RUN_KEYS


def add_cli(sub) -> None:
    """Register ``whisper-sv features``."""
    p = sub.add_parser("features", help="audio -> exact Whisper log-mel feature store (Parquet), resumable")
    p.add_argument("--source", help="cv:PATH (Common Voice layout, or the synthetic corpus) or hf:ID[:CONFIG] (required)")
    p.add_argument("--split", help="split name: train, dev, test, validated (cv) or the Hub split (required)")
    p.add_argument("--out", required=True, help="feature store folder (created; resumed if it exists)")
    p.add_argument("--config", help="JSON file of FeatureConfig fields (the flags below override it)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--shard-index", type=int, default=0, help="this machine's index when several share a source")
    p.add_argument("--num-shards", type=int, default=1, help="how many machines share the source")
    p.add_argument("--merge", nargs="*", metavar="FOLDER", help="instead of extracting: merge the finished --num-shards runs "
                   "in --out and in each FOLDER (copied in) into the store a one-machine run writes")
    p.add_argument("--push-to-hub", metavar="REPO", help="upload the finished store to this Hub dataset repo")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_options(p, FeatureConfig, skip=NOT_FLAGS, title="feature config (saved as feature_config.json)")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    if args.merge is not None:  # the runs' saved config is the config: feature flags play no part
        summary = merge_shards(args.out, args.merge, source=args.source, split=args.split, progress=not args.no_progress)
        if args.push_to_hub:
            summary["pushed_to"] = push_store(args.out, args.push_to_hub)
        print(format_merge_summary(summary))
        return 0
    if not args.source or not args.split:
        raise UserError("--source and --split are required (or --merge, to merge finished --num-shards runs)")
    config = FeatureConfig.from_json(args.config) if args.config else FeatureConfig()
    config = dataclasses.replace(config, **options_from(args, FeatureConfig, skip=NOT_FLAGS))  # checked by FeatureConfig
    # A user error (ConfigMismatch, StoreBusy, a bad --source, ...) is printed as one line by cli.main.
    summary = build_features(
        args.source, args.split, args.out, config, workers=args.workers, shard_index=args.shard_index,
        num_shards=args.num_shards, push_to_hub=args.push_to_hub, progress=not args.no_progress,
    )
    print(format_summary(summary))
    return 0


def format_summary(summary: dict[str, Any]) -> str:
    """One readable paragraph: clips written, rejected by reason, time and rate."""
    rejected = ", ".join(f"{k} {v}" for k, v in summary["rejected"].items()) or "none"
    return (
        f"{summary['out']}: wrote {summary['clips_written']} clips in {summary['shards_written']} shards "
        f"({summary['shards_skipped']} already done); rejected: {rejected}; "
        f"{summary['seconds']} s, {summary['clips_per_s']} clips/s"
    )
