"""The feature pipeline (issue #3): any source -> a crash-safe store of compact Whisper inputs.

A source is streamed and cut into deterministic shards of `shard_size` consecutive examples
(shard k = examples [k * size, (k + 1) * size)). A pool of workers, one math thread each, turns a
shard into one Parquet file: decode and resample (libsndfile + soxr), `log_mel` over the frames
that hold audio, optional OpenCV smoothing, Swedish/transcribe labels. Each file is written under a
temporary name, fsynced and renamed; only then does the parent append its line (name, rows, sha256,
rejects) to the manifest, so a killed run is resumed by redoing the shards that were in flight and
nothing else. ``feature_config.json`` (everything that changes the numbers) is written before any
work and compared on resume: a different config is refused, never mixed in.

The store's layout and the code that reads it back are in `feature_store`.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from . import logmel
from .audio import SAMPLE_RATE, AudioError, load_audio
from .feature_store import (  # noqa: F401 (FeatureStore is re-exported: the training side imports it from here)
    CONFIG_NAME,
    MANIFEST_NAME,
    FeatureStore,
    commit_file,
    read_manifest,
    remove_temp_files,
    shard_bytes,
    write_rejects_table,
)
from .logmel import Smoothing, collate_features, log_mel, pad_features, smooth_log_mel  # noqa: F401 (re-exported)
from .models import DEFAULT_MODEL, LANGUAGE, TASK, resolve_model
from .sources import iter_examples

__all__ = [
    "FeatureConfig", "ConfigMismatch", "build_features", "push_store", "process_shard", "load_tokenizer",
    "format_summary", "add_cli", "FeatureStore", "Smoothing", "log_mel", "pad_features", "collate_features",
]

FORMAT_VERSION = 1  # bump when the shard layout changes: old stores are then refused, not mixed
REJECT_REASONS = ("too_long", "empty", "undecodable", "missing", "empty_text", "labels_too_long")


@dataclass(frozen=True)
class FeatureConfig:
    """Everything that changes the stored numbers; saved as ``feature_config.json``.

    `n_mels` None means "what the model's feature extractor uses" (80, or 128 for large-v3) and is
    resolved before the config is saved. `shard_size` decides which clips share a file, so it is
    part of the config too; the number of workers and machines is not.
    """

    source: str = ""
    split: str = "train"
    model: str = DEFAULT_MODEL  # tokenizer (and n_mels) source: any model spec
    language: str = LANGUAGE
    task: str = TASK
    n_mels: int | None = None
    max_seconds: float = 30.0  # Whisper's window; longer clips are dropped, never truncated
    max_label_tokens: int = 448  # decoder positions, prefix and <|endoftext|> included
    shard_size: int = 500
    smoothing: Smoothing | None = None
    audio_column: str = "audio"
    text_column: str | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        object.__setattr__(self, "smoothing", Smoothing.parse(self.smoothing))
        if not 0 < self.max_seconds <= 30:
            raise ValueError(f"max_seconds={self.max_seconds}: Whisper sees at most 30 s; use a value in (0, 30]")
        if not 0 < self.max_label_tokens <= 448:
            raise ValueError(f"max_label_tokens={self.max_label_tokens}: the decoder has 448 positions; use 1..448")
        if self.shard_size < 1:
            raise ValueError(f"shard_size={self.shard_size}: use a positive number of clips per shard (e.g. 500)")
        if self.n_mels is not None and self.n_mels not in (80, 128):
            raise ValueError(f"n_mels={self.n_mels}: Whisper uses 80 (128 for large-v3); leave it unset to follow the model")
        if self.task not in ("transcribe", "translate"):
            raise ValueError(f"task={self.task!r}: use 'transcribe' or 'translate'")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["smoothing"] = None if self.smoothing is None else self.smoothing.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FeatureConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown feature config keys {sorted(unknown)}; known: {[f.name for f in dataclasses.fields(cls)]}")
        return cls(**d)

    @classmethod
    def from_json(cls, path: str | Path) -> "FeatureConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


class ConfigMismatch(ValueError):
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
    k with ``k % n == shard_index`` and writes ``manifest-{i}-of-{n}.jsonl``, so n machines can
    fill one folder. Shards already in the manifest are skipped; a config different from the one
    saved in `out` raises `ConfigMismatch`.
    """
    config = config or FeatureConfig()
    config = dataclasses.replace(config, source=source or config.source, split=split or config.split)
    if not config.source:
        raise ValueError("no source: pass --source cv:PATH (or hf:ID[:CONFIG])")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index={shard_index} must be in [0, num_shards={num_shards})")
    out = Path(out)
    model_dir = resolve_model(config.model)  # converts the packaged model once, here, not per worker
    if config.n_mels is None:
        config = dataclasses.replace(config, n_mels=_model_n_mels(model_dir))
    config = _claim_folder(out, config)
    remove_temp_files(out)
    manifest = out / (MANIFEST_NAME if num_shards == 1 else f"manifest-{shard_index}-of-{num_shards}.jsonl")
    done = {row["index"] for row in read_manifest(manifest, repair=True)}
    workers = max(1, workers or os.cpu_count() or 1)

    total = _count_examples(config) if config.source.startswith("cv:") or Path(config.source, "clips").is_dir() else None
    owned = ((k, exs) for k, exs in _shards(config) if k % num_shards == shard_index and k not in done)
    todo = _with_labels(owned, model_dir, config)
    started, written, rejected, n_shards = time.perf_counter(), 0, collections.Counter(), 0
    bar = _progress(total, progress, skipped=sum(r["clips"] for r in read_manifest(manifest)))
    with manifest.open("a", encoding="utf-8") as log:
        for line in _run_shards(todo, out, config, workers):
            log.write(json.dumps(line, sort_keys=True) + "\n")
            log.flush()
            os.fsync(log.fileno())
            written += line["rows"]
            rejected.update(line["rejects"])
            n_shards += 1
            bar.update(line["clips"])
    bar.close()
    remove_temp_files(out)
    write_rejects_table(out)
    seconds = time.perf_counter() - started
    summary = {
        "out": str(out),
        "shards_written": n_shards,
        "shards_skipped": len(done),
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
        from huggingface_hub import HfApi

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

def _init_worker(n_mels: int, bank: np.ndarray) -> None:
    """One math thread per worker (the pool supplies the parallelism), and the mel bank from the parent.

    Workers import neither transformers nor the tokenizer (the parent tokenizes), so they start in
    about a second.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    logmel.use_mel_filters(n_mels, bank)


def load_tokenizer(model: str, language: str = LANGUAGE, task: str = TASK):
    """The model's tokenizer set to prefix <|startoftranscript|><|sv|><|transcribe|><|notimestamps|>."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
    tokenizer.set_prefix_tokens(language=language, task=task, predict_timestamps=False)
    return tokenizer


def process_shard(index: int, examples: list, labels: list[list[int]], out: Path, config: FeatureConfig) -> dict[str, Any]:
    """Turn one shard of examples (and their label ids) into ``{split}-{index:05d}.parquet`` + rejects.

    Returns the shard's manifest line.
    """
    rows, rejects = [], []
    for ex, ids in zip(examples, labels):
        reason, detail = None, ""
        if not ex.sentence.strip():
            reason, detail = "empty_text", "the transcript is empty"
        elif len(ids) > config.max_label_tokens:
            reason, detail = "labels_too_long", f"{len(ids)} label tokens > {config.max_label_tokens}"
        else:
            try:
                audio = load_audio(ex.audio, max_seconds=config.max_seconds)
            except AudioError as err:
                reason, detail = err.reason, str(err)
            except Exception as err:  # a decoder crash must not take the shard down with it
                reason, detail = "undecodable", f"{type(err).__name__}: {err}"
        if reason:
            rejects.append({"id": ex.id, "reason": reason, "detail": detail})
            continue
        compact, n_frames, pad_value = log_mel(audio, config.n_mels)
        compact, n_frames = smooth_log_mel(compact, n_frames, pad_value, config.smoothing)
        rows.append((ex.id, ex.sentence, len(audio) / SAMPLE_RATE, compact.astype(np.float16), n_frames, pad_value, ids))

    name = f"{config.split}-{index:05d}"
    rejects_name = f"{name}.rejects.jsonl"
    reject_bytes = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rejects).encode()
    commit_file(out / rejects_name, reject_bytes)
    data = shard_bytes(rows, config.n_mels)
    commit_file(out / f"{name}.parquet", data)
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


# ---------------------------------------------------------------------------------------------
# Orchestration in the parent.


def _shards(config: FeatureConfig) -> Iterator[tuple[int, list]]:
    examples = iter_examples(
        config.source, config.split, audio_column=config.audio_column, text_column=config.text_column
    )
    for k in range(1 << 62):
        chunk = list(islice(examples, config.shard_size))
        if not chunk:
            return
        yield k, chunk


def _with_labels(shards, model_dir: str, config: FeatureConfig) -> Iterator[tuple[int, list, list[list[int]]]]:
    """Add label ids to each shard. The parent tokenizes (a batch of sentences takes milliseconds), so
    workers never import transformers; the tokenizer loads on the first shard, while the pool starts."""
    tokenizer = load_tokenizer(model_dir, config.language, config.task)
    for k, examples in shards:
        yield k, examples, tokenizer([ex.sentence for ex in examples]).input_ids if examples else []


def _run_shards(todo, out: Path, config: FeatureConfig, workers: int) -> Iterator[dict]:
    """Process shards, yielding manifest lines in shard order with at most 2 x workers in flight."""
    if workers == 1:
        for k, examples, labels in todo:
            yield process_shard(k, examples, labels, out, config)
        return
    ctx = get_context("forkserver" if "forkserver" in _start_methods() else "spawn")
    bank = logmel.mel_filters(config.n_mels)
    # concurrent.futures rather than multiprocessing.Pool: a worker killed by the OS (OOM, a decoder
    # segfault) raises BrokenProcessPool here instead of hanging the run forever.
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(config.n_mels, bank)) as pool:
        pending: collections.deque = collections.deque()
        for k, examples, labels in todo:
            pending.append(pool.submit(process_shard, k, examples, labels, out, config))
            if len(pending) >= 2 * workers:  # bounded: a streamed source never piles up in memory
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _start_methods() -> list[str]:
    from multiprocessing import get_all_start_methods

    return get_all_start_methods()


def _claim_folder(out: Path, config: FeatureConfig) -> FeatureConfig:
    """Write ``feature_config.json`` before any work, or check that the saved one matches."""
    path = out / CONFIG_NAME
    wanted = config.to_dict()
    if path.is_file():
        found = json.loads(path.read_text())
        if found != wanted:
            diff = {k: (found.get(k), wanted.get(k)) for k in sorted(set(found) | set(wanted)) if found.get(k) != wanted.get(k)}
            raise ConfigMismatch(
                f"{out} holds features made with another config (saved vs asked: {diff}); "
                "use another --out, delete the folder, or pass the saved config with --config " + str(path)
            )
        return config
    out.mkdir(parents=True, exist_ok=True)
    commit_file(path, (json.dumps(wanted, indent=2, sort_keys=True) + "\n").encode())
    return config


def _model_n_mels(model_dir: str) -> int:
    folder = Path(model_dir)
    if (folder / "preprocessor_config.json").is_file():
        return int(json.loads((folder / "preprocessor_config.json").read_text())["feature_size"])
    if (folder / "processor_config.json").is_file():  # transformers 5 nests it in the processor's
        extractor = json.loads((folder / "processor_config.json").read_text()).get("feature_extractor", {})
        if "feature_size" in extractor:
            return int(extractor["feature_size"])
    from transformers import WhisperFeatureExtractor

    return int(WhisperFeatureExtractor.from_pretrained(model_dir).feature_size)


def _count_examples(config: FeatureConfig) -> int:
    return sum(1 for _ in iter_examples(config.source, config.split))


def _progress(total: int | None, enabled: bool, skipped: int):
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=skipped, desc="features", unit="clip", disable=not enabled, smoothing=0.1)
    return bar


# ---------------------------------------------------------------------------------------------
# CLI.


def add_cli(sub) -> None:
    """Register ``whisper-sv features``."""
    p = sub.add_parser("features", help="audio -> exact Whisper log-mel feature store (Parquet), resumable")
    p.add_argument("--source", required=True, help="cv:PATH (Common Voice layout, or the synthetic corpus) or hf:ID[:CONFIG]")
    p.add_argument("--split", required=True, help="split name: train, dev, test, validated (cv) or the Hub split")
    p.add_argument("--out", required=True, help="feature store folder (created; resumed if it exists)")
    p.add_argument("--config", help="JSON file of FeatureConfig fields (flags below override it)")
    p.add_argument("--model", help=f"model spec whose tokenizer and n_mels to use (default {DEFAULT_MODEL})")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--shard-size", type=int, default=None, help="clips per shard (default 500)")
    p.add_argument("--shard-index", type=int, default=0, help="this machine's index when several share a source")
    p.add_argument("--num-shards", type=int, default=1, help="how many machines share the source")
    p.add_argument("--audio-column", help="audio column of a Hub dataset (default audio)")
    p.add_argument("--text-column", help="transcript column of a Hub dataset (default: sentence, text, ...)")
    p.add_argument("--smoothing", choices=["none", "gaussian", "median", "bilateral"], help="OpenCV filter with default parameters (use --config for others)")
    p.add_argument("--push-to-hub", metavar="REPO", help="upload the finished store to this Hub dataset repo")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    config = FeatureConfig.from_json(args.config) if args.config else FeatureConfig()
    overrides = {
        "model": args.model,
        "shard_size": args.shard_size,
        "audio_column": args.audio_column,
        "text_column": args.text_column,
        "smoothing": args.smoothing,
    }
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    try:
        summary = build_features(
            args.source, args.split, args.out, config, workers=args.workers, shard_index=args.shard_index,
            num_shards=args.num_shards, push_to_hub=args.push_to_hub, progress=not args.no_progress,
        )
    except ConfigMismatch as err:  # a user error, not a crash: say what to do, no traceback
        print(f"whisper-sv features: {err}", file=sys.stderr)
        return 2
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
