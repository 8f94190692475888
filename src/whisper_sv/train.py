"""Fine-tune Whisper on a feature store with Seq2SeqTrainer, resumable after a kill.

`train(cfg)` reads as the steps it takes:
1. open the feature stores and check them against the run folder (one feature config per run);
2. load the model with Swedish transcription forced, apply freezing and SpecAugment;
3. find the last *complete* checkpoint (a folder the process died inside is moved aside);
4. train, evaluating WER on the way and redrawing the curves at every evaluation;
5. save ``final/`` (model, processor, generation config, model card with the WER) and the metrics.

Run folder: ``config.json`` (resolved), ``feature_config.json``, ``checkpoint-N/`` (each with a
``whisper_sv_complete.json`` marker written after the Trainer finished it), ``metrics.jsonl`` (one
history, rewritten from the Trainer's state), ``train.png``, ``final/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .config import TrainConfig, load_config, parse_overrides
from .feature_store import commit_file
from .locks import folder_lock
from .logmel import collate_features
from .metrics import utterance_errors, wer_report
from .models import load_model

log = logging.getLogger(__name__)

COMPLETE_MARKER = "whisper_sv_complete.json"
EVALS_DIR = "evals"  # per-utterance errors of each evaluation, step-N.json
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# What a checkpoint needs to resume exactly: weights, optimizer, scheduler, RNG, trainer state.
CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json")


@dataclass
class SpeechCollator:
    """Batch feature-store rows for Seq2SeqTrainer.

    ``input_features``: (B, n_mels, 3000) float32, each clip padded with its own floor value,
    which reproduces WhisperFeatureExtractor. ``labels``: (B, L) int64, padding masked with -100;
    the leading ``<|startoftranscript|>`` is dropped because the model prepends it when it shifts
    the labels right (the transformers speech recipe does the same).

    Rows that carry a ``cache_row`` (training on a frozen encoder's cache, encoder_cache.py) give
    ``cache_rows`` instead of ``input_features``: the collator may run in a DataLoader worker, so
    it only names the rows (and starts reading them with `readahead`); the trainer turns them into
    model inputs in the main process (`with_cached_encoder`).
    """

    decoder_start_token_id: int
    readahead: Any = None  # encoder_cache.Readahead, or None

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        labels = [np.asarray(r["labels"], dtype=np.int64) for r in rows]
        batch = torch.full((len(labels), max(map(len, labels))), -100, dtype=torch.long)
        for i, ids in enumerate(labels):
            batch[i, : len(ids)] = torch.from_numpy(ids)
        if bool((batch[:, 0] == self.decoder_start_token_id).all()):
            batch = batch[:, 1:]
        if "cache_row" in rows[0]:
            cache_rows = [int(r["cache_row"]) for r in rows]
            if self.readahead is not None:
                self.readahead(cache_rows)
            return {"cache_rows": torch.tensor(cache_rows), "labels": batch}
        return {"input_features": collate_features(rows), "labels": batch}


def with_cached_encoder(batch: dict[str, Any], cache: np.ndarray, kind: str, device: Any = None) -> dict[str, Any]:
    """A collated batch with its ``cache_rows`` replaced by the cached encoder side (on `device`)."""
    from .encoder_cache import cached_inputs

    if "cache_rows" not in batch:
        return batch
    rest = {k: v for k, v in batch.items() if k != "cache_rows"}
    return {**cached_inputs(cache, batch["cache_rows"].tolist(), kind, device), **rest}


def _trainer_class(cache: np.ndarray | None, kind: str | None):
    """Seq2SeqTrainer, or one that feeds training batches from the encoder cache."""
    from transformers import Seq2SeqTrainer

    if cache is None:
        return Seq2SeqTrainer

    class CachedEncoderTrainer(Seq2SeqTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            return super().compute_loss(model, with_cached_encoder(inputs, cache, kind, self.args.device), *args, **kwargs)

    return CachedEncoderTrainer


# ---------------------------------------------------------------------------------------------
# Checkpoints


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of `run_dir` that were finished, oldest first."""
    found = []
    for p in run_dir.glob("checkpoint-*"):
        m = CHECKPOINT_RE.match(p.name)
        if m and p.is_dir() and _is_complete(p):
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def _is_complete(ckpt: Path) -> bool:
    if not (ckpt / COMPLETE_MARKER).is_file():
        return False
    try:
        marker = json.loads((ckpt / COMPLETE_MARKER).read_text())
    except ValueError:
        return False
    sizes = marker.get("sizes", {})
    return all((ckpt / f).is_file() and (ckpt / f).stat().st_size == sizes.get(f) for f in sizes) and bool(sizes)


def set_aside_incomplete(run_dir: Path) -> list[Path]:
    """Move checkpoint folders without a valid completion marker out of the Trainer's way.

    They are renamed to ``incomplete-checkpoint-N-<time>`` (not deleted: a user may want to look),
    so neither resuming nor the Trainer's checkpoint rotation ever picks them up.
    """
    moved = []
    for p in sorted(run_dir.glob("checkpoint-*")):
        if CHECKPOINT_RE.match(p.name) and p.is_dir() and not _is_complete(p):
            dest = run_dir / f"incomplete-{p.name}-{int(time.time())}"
            os.rename(p, dest)
            log.warning("%s was half-written when the last run died; moved to %s", p.name, dest.name)
            moved.append(dest)
    return moved


def _mark_complete(ckpt: Path) -> None:
    sizes = {f: (ckpt / f).stat().st_size for f in CHECKPOINT_FILES if (ckpt / f).is_file()}
    commit_file(ckpt / COMPLETE_MARKER, json.dumps({"sizes": sizes, "time": time.time()}).encode())


# ---------------------------------------------------------------------------------------------
# Metrics, curves, callbacks


def make_compute_metrics(tokenizer):
    """``compute_metrics`` for predict_with_generate: normalised WER, orthographic WER, CER."""

    def compute_metrics(pred) -> dict[str, float]:
        preds, labels = pred.predictions, pred.label_ids
        if isinstance(preds, tuple):
            preds = preds[0]
        preds = np.where(preds < 0, tokenizer.pad_token_id, preds)
        labels = np.where(labels < 0, tokenizer.pad_token_id, labels)
        hyps = tokenizer.batch_decode(preds, skip_special_tokens=True)
        refs = tokenizer.batch_decode(labels, skip_special_tokens=True)
        report = wer_report(refs, hyps)
        # Kept for the run folder's per-utterance record (evals/step-N.json): paired comparisons
        # between runs (the search's Wilcoxon pruner, the smoothing ablation) need more than the mean.
        compute_metrics.last = {"references": refs, "hypotheses": hyps}
        return {"wer": report["wer"], "wer_ortho": report["wer_ortho"], "cer": report["cer"]}

    compute_metrics.last = None
    return compute_metrics


def plot_curves(log_history: list[dict], out: str | Path) -> Path:
    """Training loss and eval WER against step, in one PNG (like the original notebook's plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h) for h in log_history if "eval_wer" in h]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    if evals:
        ax.plot([s for s, _ in evals], [h["eval_loss"] for _, h in evals], "o-", label="eval loss", color="tab:cyan")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    if evals:
        ax2.plot([s for s, _ in evals], [100 * h["eval_wer"] for _, h in evals], "s-", color="tab:red", label="eval WER (normalised)")
        ax2.plot([s for s, _ in evals], [100 * h["eval_wer_ortho"] for _, h in evals], "^--", color="tab:orange", label="eval WER (orthographic)")
    ax2.set_ylabel("WER (%)")
    # From 0 (an auto-zoomed axis makes a 1-point wobble look like a trend), with room above the top.
    top = max((100 * h[k] for _, h in evals for k in ("eval_wer", "eval_wer_ortho") if k in h), default=0)
    ax2.set_ylim(0, 1.15 * top if top > 0 else None)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    # Below the axes, so it never hides a curve (inside, it sat on the WER line at ~30 %).
    fig.legend(lines, [l.get_label() for l in lines], loc="lower center", ncol=4, frameon=False)
    ax.set_title("Whisper fine-tuning on Swedish")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_metrics(run_dir: Path, log_history: list[dict]) -> None:
    """``metrics.jsonl`` from the Trainer's log history: after a resume it is still one history."""
    commit_file(run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in log_history).encode())


def write_eval_utterances(run_dir: Path, step: int, references: list[str], hypotheses: list[str]) -> Path:
    """``evals/step-N.json``: each eval utterance's normalised word errors and reference words."""
    errors = utterance_errors(references, hypotheses)
    out = run_dir / EVALS_DIR / f"step-{step}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"step": step, "errors": [e for e, _ in errors], "words": [w for _, w in errors], "hypotheses": hypotheses}
    commit_file(out, json.dumps(record, ensure_ascii=False).encode())
    return out


def read_eval_utterances(run_dir: str | Path, step: int) -> dict[str, Any] | None:
    """What `write_eval_utterances` wrote for `step`, or None."""
    try:
        return json.loads((Path(run_dir) / EVALS_DIR / f"step-{step}.json").read_text())
    except (OSError, ValueError):
        return None


def _callbacks(cfg: TrainConfig, run_dir: Path, compute_metrics=None):
    from transformers import TrainerCallback

    class RunFolderCallback(TrainerCallback):
        """Marks finished checkpoints, keeps metrics.jsonl, the curves and evals/ current."""

        def on_save(self, args, state, control, **kwargs):
            ckpt = run_dir / f"checkpoint-{state.global_step}"
            if ckpt.is_dir() and state.is_world_process_zero:
                _mark_complete(ckpt)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero:
                write_metrics(run_dir, state.log_history)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if not state.is_world_process_zero:
                return
            last = getattr(compute_metrics, "last", None)
            if last is not None:
                write_eval_utterances(run_dir, state.global_step, last["references"], last["hypotheses"])
            _draw(cfg, run_dir, state.log_history)

    return [RunFolderCallback()]


def _draw(cfg: TrainConfig, run_dir: Path, history: list[dict]) -> None:
    plot_curves(history, run_dir / "train.png")
    if cfg.figure:
        plot_curves(history, cfg.figure)


# ---------------------------------------------------------------------------------------------
# The run


def pick_precision(precision: str) -> dict[str, bool]:
    """``{"bf16": ..., "fp16": ...}`` for Seq2SeqTrainingArguments; auto picks from the hardware."""
    import torch

    if precision == "auto":
        if torch.cuda.is_available():
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "fp32"
    if precision in ("bf16", "fp16") and not torch.cuda.is_available():
        raise ValueError(f"precision={precision!r} needs a CUDA GPU; use auto or fp32 on a CPU")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def open_stores(cfg: TrainConfig, run_dir: Path):
    """The train/eval datasets, after checking their feature configs against each other and the run."""
    from .features import FeatureStore

    train_store = FeatureStore(cfg.train_data)
    stores = {"train": train_store}
    if cfg.eval_data:
        stores["eval"] = FeatureStore(cfg.eval_data)
    wanted = comparable_feature_config(train_store.config.to_dict())
    for name, store in stores.items():
        found = comparable_feature_config(store.config.to_dict())
        if found != wanted:
            raise ValueError(
                f"{name} store {store.folder} was built with feature config "
                f"{found}, the train store with {wanted}; "
                "rebuild one of them with the same --config"
            )
    saved = run_dir / "feature_config.json"
    if saved.exists():
        before = comparable_feature_config(json.loads(saved.read_text()))
        if before != wanted:
            raise ValueError(
                f"{run_dir} was trained on features made with {before}, but {cfg.train_data} has {wanted}; "
                "resume with the original feature store or start a new output_dir"
            )
    else:
        saved.write_text(json.dumps(train_store.config.to_dict(), indent=2))
    train = train_store.dataset()
    if cfg.max_train_samples:
        train = train.select(range(min(cfg.max_train_samples, len(train))))
    evals = None
    if "eval" in stores:
        evals = stores["eval"].dataset()
        if cfg.max_eval_samples:
            evals = evals.select(range(min(cfg.max_eval_samples, len(evals))))
    return train, evals, wanted


# Keys of feature_config.json that say where the clips came from or how they were filed, not how
# they were turned into numbers: a train and an eval store may differ in them, and that is fine
# (shard_size only decides which clips share a Parquet file).
_SOURCE_KEYS = {"source", "split", "audio_column", "text_column", "shard_size"}


def comparable_feature_config(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a feature config that changes the numbers the model sees."""
    return {k: v for k, v in config.items() if k not in _SOURCE_KEYS}


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


def prepare_model(cfg: TrainConfig, feature_config: dict[str, Any]):
    """Model and processor with Swedish forced, freezing and SpecAugment applied."""
    model, processor = load_model(cfg.model)
    n_mels = feature_config.get("n_mels")
    if n_mels is not None and n_mels != model.config.num_mel_bins:
        raise ValueError(
            f"the features have {n_mels} mel bins but {cfg.model} expects {model.config.num_mel_bins}; "
            "rebuild the features with this model's --model"
        )
    model.config.apply_spec_augment = cfg.apply_spec_augment
    model.config.mask_time_prob = cfg.mask_time_prob
    model.config.mask_time_length = cfg.mask_time_length
    model.config.mask_feature_prob = cfg.mask_feature_prob
    model.config.mask_feature_length = cfg.mask_feature_length
    if cfg.dropout is not None:
        model.config.dropout = cfg.dropout
        stacks = (model.model.encoder, model.model.decoder)
        for module in (*stacks, *stacks[0].layers, *stacks[1].layers):  # they copied the rate at construction
            module.dropout = cfg.dropout
    model.config.use_cache = False  # the cache is for generation; training with it wastes memory
    if cfg.freeze_encoder:
        model.freeze_encoder()
    if cfg.freeze_embeddings:
        decoder = model.model.decoder
        for module in (decoder.embed_tokens, decoder.embed_positions):
            module.requires_grad_(False)
    if cfg.encoder_cache == "cross_kv":
        from .encoder_cache import freeze_cross_attention_kv

        freeze_cross_attention_kv(model)
    return model, processor


def train(cfg: TrainConfig, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Fine-tune as configured; resumes from the last complete checkpoint in ``cfg.output_dir``.

    `callbacks` are extra `TrainerCallback`s, run after the run folder's own (the search reports
    each evaluation to its trial with one). Returns ``{"final": path, "metrics": last eval
    metrics or {}, "resumed_from": path or None}``.
    """
    from transformers import EarlyStoppingCallback, Seq2SeqTrainingArguments

    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # 1. data, checked against the run folder
    train_ds, eval_ds, feature_config = open_stores(cfg, run_dir)
    _save_resolved_config(cfg, run_dir)
    # 2. model
    keep_freed_memory()
    model, processor = prepare_model(cfg, feature_config)
    cache = readahead = None
    if cfg.encoder_cache:
        from .encoder_cache import build_encoder_cache, cache_key, readahead_for
        from .features import FeatureStore

        shards = [r["sha256"] for r in FeatureStore(cfg.train_data).manifest]
        key = cache_key(cfg.model, shards, len(train_ds), cfg.encoder_cache)
        # One cache per (model, shards, rows, kind): runs that share encoder_cache_dir (the trials
        # of a search) build it once and all read it.
        folder = Path(cfg.encoder_cache_dir) / key if cfg.encoder_cache_dir else run_dir / "encoder_cache"
        with folder_lock(folder):
            cache = build_encoder_cache(model, train_ds, folder, key, cfg.encoder_cache)
        readahead = readahead_for(cache)
        train_ds = train_ds.remove_columns(["input_features"]).add_column("cache_row", list(range(len(train_ds))))
    # 3. where to start
    set_aside_incomplete(run_dir)
    done = complete_checkpoints(run_dir)
    resume = str(done[-1]) if done else None
    if resume:
        print(f"resuming from {resume}")
    # 4. train
    import torch

    defaults = {} if torch.cuda.is_available() else {"dataloader_pin_memory": False}
    if cache is not None:
        defaults["dataloader_num_workers"] = 1  # collates (and reads ahead) a batch or two early
    args = Seq2SeqTrainingArguments(**{**defaults, **cfg.training_arguments()}, **pick_precision(cfg.precision))
    compute_metrics = make_compute_metrics(processor.tokenizer) if eval_ds is not None else None
    all_callbacks = _callbacks(cfg, run_dir, compute_metrics)
    if cfg.early_stopping_patience is not None:
        all_callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    all_callbacks.extend(callbacks)
    trainer = _trainer_class(cache, cfg.encoder_cache)(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=SpeechCollator(model.config.decoder_start_token_id, readahead),
        compute_metrics=compute_metrics,
        processing_class=processor,
        callbacks=all_callbacks,
    )
    trainer.train(resume_from_checkpoint=resume)
    metrics = {}
    if eval_ds is not None:
        last = trainer.state.log_history[-2:] if trainer.state.log_history else []
        done_at_end = [h for h in last if "eval_wer" in h and h.get("step") == trainer.state.global_step]
        metrics = done_at_end[-1] if done_at_end else trainer.evaluate()
    # 5. final model and records
    final = run_dir / "final"
    model.config.use_cache = True  # off only for training; generation from final/ wants it
    trainer.save_model(str(final))
    processor.save_pretrained(final)
    # transformers 5 folds the feature extractor into processor_config.json; faster-whisper and
    # the CTranslate2 export read preprocessor_config.json, so write it too.
    processor.feature_extractor.save_pretrained(final)
    model.generation_config.save_pretrained(final)
    write_metrics(run_dir, trainer.state.log_history)
    if trainer.state.log_history:
        _draw(cfg, run_dir, trainer.state.log_history)
    write_model_card(final, cfg, metrics)
    if cfg.push_to_hub:
        push_final(final, cfg.hub_model_id)
    return {"final": final, "metrics": metrics, "resumed_from": resume}


def _save_resolved_config(cfg: TrainConfig, run_dir: Path) -> None:
    path = run_dir / "config.json"
    new = cfg.to_dict()
    if path.exists():
        old = json.loads(path.read_text())
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            log.warning("config changed since this run started (%s); the new values apply from here", ", ".join(changed))
            (run_dir / f"config.{int(time.time())}.json").write_text(json.dumps(old, indent=2))
    path.write_text(json.dumps(new, indent=2))


def write_model_card(final: Path, cfg: TrainConfig, metrics: dict[str, Any]) -> Path:
    """README.md with the Hub's model-index metadata carrying the eval WER (when there is one)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    results = []
    if "eval_wer" in metrics:
        for metric, name in (("eval_wer", "wer"), ("eval_wer_ortho", "wer_ortho"), ("eval_cer", "cer")):
            results.append(
                EvalResult(
                    task_type="automatic-speech-recognition", task_name="Speech Recognition",
                    dataset_type=cfg.eval_data or "", dataset_name=Path(cfg.eval_data or "").name,
                    metric_type=name, metric_name=name.upper().replace("_", " "),
                    metric_value=round(100 * float(metrics[metric]), 2),
                )
            )
    data = ModelCardData(
        language="sv", license="mit", library_name="transformers", base_model=_base_model_id(cfg.model),
        tags=["whisper", "automatic-speech-recognition", "whisper-sv"],
        model_name=cfg.hub_model_id or final.parent.name, eval_results=results or None,
    )
    wer_line = (
        f"Normalised WER {100 * metrics['eval_wer']:.2f} % (Whisper's basic normaliser keeping å/ä/ö), "
        f"orthographic WER {100 * metrics['eval_wer_ortho']:.2f} %, CER {100 * metrics['eval_cer']:.2f} %."
        if "eval_wer" in metrics else "No evaluation set was configured."
    )
    card = ModelCard(
        f"---\n{data.to_yaml()}\n---\n\n# {data.model_name}\n\nWhisper fine-tuned on Swedish with "
        f"whisper-sv from `{cfg.model}` on `{cfg.train_data}`.\n\n{wer_line}\n\n"
        "Served with Swedish forced (`language=\"sv\"`, `task=\"transcribe\"`) and without timestamps.\n"
    )
    card.save(final / "README.md")
    return final / "README.md"


def _base_model_id(spec: str) -> str | None:
    if spec.startswith("packaged:"):
        return "openai/whisper-base"
    return spec if spec.count("/") == 1 and not Path(spec).exists() else None


def push_final(final: Path, repo_id: str) -> None:
    """Upload ``final/`` (model, processor, card) to the Hub."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(final), repo_id=repo_id, commit_message="whisper-sv fine-tune")
    except Exception as err:  # no network, no token: say so, keep the local model
        raise RuntimeError(
            f"could not push {final} to {repo_id} ({err}); log in with `hf auth login` and re-run, "
            "or upload the folder later: the trained model is safe on disk"
        ) from err


def add_cli(sub) -> None:
    """Register ``whisper-sv train``."""
    p = sub.add_parser(
        "train", help="fine-tune Whisper on a feature store (resumes from the last complete checkpoint)",
        description="Keys: TrainConfig fields and any Seq2SeqTrainingArguments name, e.g. --max_steps 100.",
    )
    p.add_argument("config", help="JSON preset, e.g. configs/cpu-demo.json")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="--key value pairs that override the preset")
    p.set_defaults(func=_run_cli)


def _run_cli(args) -> int:
    result = train(load_config(args.config, parse_overrides(args.overrides)))
    print(json.dumps({"final": str(result["final"]), **{k: v for k, v in result["metrics"].items()}}, default=str))
    return 0
