"""Fine-tune Whisper on a feature store with Seq2SeqTrainer, resumable after a kill.

`train(cfg)` reads as the steps it takes:
0. check what needs no data (precision, LoRA against the model's config, the stores agree, the run
   folder may be resumed with these settings); a finished run returns its recorded result here;
1. open the feature stores and check them against the run folder (one feature config per run);
2. load the model with Swedish transcription forced, apply freezing and SpecAugment;
3. find the last *complete* checkpoint (a folder the process died inside is moved aside);
4. train, evaluating WER on the way and redrawing the curves at every evaluation;
5. save ``final/`` (model, processor, generation config, model card with the WER) and the metrics.

Run folder: ``config.json`` (resolved), ``feature_config.json``, ``checkpoint-N/`` (each with a
``whisper_sv_complete.json`` marker written after the Trainer finished it), ``metrics.jsonl`` (one
history, rewritten from the Trainer's state), ``train.png``, ``final/`` and, once it is whole,
``finished.json`` (what a re-run of the finished run returns without training).

A run folder that has trained resumes only with settings that keep its weights what they would
be (`config.HARMLESS_KEYS` may differ: logging, evaluation, paths, ...; a raised max_steps trains on).

The parts live by concern: batches and the cached-encoder trainer in collator.py, checkpoint
markers and resuming in checkpoints.py, metrics, curves, the model card and the Hub push in
run_report.py, which process of a ``torchrun`` / ``accelerate launch`` job writes them in
distributed.py (the main one; the others wait for it); this module wires them to the Trainer.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

from ..audio.io import N_FRAMES
from ..common.distributed import barrier, is_main_process, main_only, main_process_first, world_size
from ..common.distributed import setup as setup_distributed
from ..common.errors import UserError
from ..common.fileio import claim_folder, describe_keys, write_json
from ..common.locks import folder_lock
from ..common.options import add_options, options_from
from ..data.feature_config import FILING_KEYS, ORIGIN_KEYS
from ..data.feature_store import FeatureStore
from ..data.recipe import nospeech_token_id
from ..models.decoding import quiet_library_notices
from ..models.encoder_window import accept_short_windows, frames_for, record_window
from ..models.lora import LoraConfig, apply_lora, check_device, check_rank, merge_for_final, quantization_config, trainable_parameters
from ..models.specs import DEFAULT_LANGUAGE, force_language, load_model
from .checkpoints import (
    FINISHED_RECORD,
    checkpoint_step,
    complete_checkpoints,
    finished_record,
    forget_finished,
    mark_complete,
    record_finished,
    resume_checkpoint,
)
from .collator import SpeechCollator
from .config import TRAINING_DEFAULTS, TrainConfig, effective_values, load_config, parse_overrides, weight_changes
from .encoder_cache import build_encoder_cache, cache_key, freeze_cross_attention_kv, readahead_for
from .run_report import draw_curves, make_compute_metrics, push_final, write_eval_utterances, write_metrics, write_model_card
from .trainer import keep_freed_memory, trainer_class

log = logging.getLogger(__name__)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AMX or AVX512-BF16); without it bf16 is emulated,
    slower than float32."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def cache_in_bf16(requested: bool) -> bool:
    """Whether the encoder cache is computed under bfloat16 autocast: when asked, on a GPU or a CPU
    with bf16 units. Elsewhere emulated bf16 made the encoder ~7x slower than float32 (a 2-core
    AMD EPYC with AVX2 only: 157 s against 22 s for 8 clips at 30 s), so the cache is computed in
    float32, said in one line."""
    import torch

    if not requested or torch.cuda.is_available() or cpu_has_bf16():
        return requested
    print("encoder_cache_bf16: this CPU has no bfloat16 units (AMX, AVX512-BF16), where bf16 is emulated "
          "and slower than float32: the encoder cache is computed in float32", flush=True)
    return False


def pick_precision(precision: str) -> dict[str, bool]:
    """``{"bf16": ..., "fp16": ...}`` for Seq2SeqTrainingArguments (plus ``use_cpu`` for bf16 on a CPU);
    auto picks from the hardware.

    bf16 on a CPU is bfloat16 autocast, ~2x faster a step than float32 where the CPU has bf16 units;
    where it has none, training runs in float32 (said once), since emulated bf16 is slower still."""
    import torch

    cuda = torch.cuda.is_available()
    if precision == "auto":
        if cuda:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "fp32"
    if precision == "fp16" and not cuda:
        raise ValueError("precision='fp16' (or fp16=true) needs a CUDA GPU; use precision bf16, auto or fp32 on a CPU")
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ValueError("precision='bf16': this GPU has no bfloat16; use fp16 or auto")
    if precision == "bf16" and not cuda:
        if not cpu_has_bf16():
            print("precision bf16: this CPU has no bfloat16 units (AMX, AVX512-BF16); training in float32")
            return {"bf16": False, "fp16": False}
        return {"bf16": True, "fp16": False, "use_cpu": True}  # the Trainer asks for use_cpu to allow bf16 without a GPU
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def check_stores(cfg: TrainConfig) -> dict[str, FeatureStore]:
    """The train (and eval) feature stores, after checking that they exist and were built with one
    feature config (their config files are read, no data)."""
    train_store = FeatureStore(cfg.train_data)
    stores = {"train": train_store}
    if cfg.eval_data:
        stores["eval"] = FeatureStore(cfg.eval_data)
    # The training recipe (recipe.py) adds rows to the train store; it does not change how a clip
    # becomes numbers, so an eval store of plain clips matches a train store made with one.
    wanted = comparable_feature_config(train_store.config.to_dict(), recipe=False)
    for name, store in stores.items():
        found = comparable_feature_config(store.config.to_dict(), recipe=False)
        if found != wanted:
            raise ValueError(
                f"{name} store {store.folder} was built with feature config "
                f"{found}, the train store with {wanted}; "
                "rebuild one of them with the same --config"
            )
    return stores


def open_stores(cfg: TrainConfig, run_dir: Path):
    """The train/eval datasets, after checking their feature configs against each other and the run."""
    stores = check_stores(cfg)
    train_store = stores["train"]
    wanted = comparable_feature_config(train_store.config.to_dict())
    claim_folder(
        run_dir, "feature_config.json", train_store.config.to_dict(), "a run trained on features",
        comparable=comparable_feature_config,
        hint=f"the latter are {cfg.train_data}'s: resume with the original feature store or start a new output_dir",
    )
    train = train_store.dataset()
    if cfg.max_train_samples:
        train = train.select(range(min(cfg.max_train_samples, len(train))))
    evals = None
    if "eval" in stores:
        evals = stores["eval"].dataset()
        if cfg.max_eval_samples:
            evals = evals.select(range(min(cfg.max_eval_samples, len(evals))))
    return train, evals, wanted


# A train and an eval store may differ in where their clips came from and how their rows are filed
# (shard_size only decides which clips share a Parquet file; format_version only names and adds
# columns), not in how clips became numbers.
_NOT_NUMBERS = {*ORIGIN_KEYS, *FILING_KEYS}


def comparable_feature_config(config: dict[str, Any], recipe: bool = True) -> dict[str, Any]:
    """The part of a feature config that changes the numbers the model sees (with `recipe` false,
    without the rows a training recipe adds)."""
    return {k: v for k, v in config.items() if k not in _NOT_NUMBERS and (recipe or k != "recipe")}


def prepare_model(cfg: TrainConfig, feature_config: dict[str, Any], lora: LoraConfig | None = None):
    """Model and processor with Swedish forced, freezing and SpecAugment applied (a LoRA run's base
    in 8 or 4 bits when its settings ask)."""
    # The labels' language (the store's) is what the model is trained, saved and later decoded with.
    model, processor = load_model(cfg.model, quantization=quantization_config(lora) if lora else None,
                                  language=feature_config.get("language"))
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
    # Whisper's loss is the mean over its batch's tokens, whatever `num_items_in_batch` it is passed;
    # its forward takes **kwargs, so the Trainer would assume otherwise and scale the loss by the
    # process count (2x the loss and gradient under torchrun with 2 processes) and skip dividing it by
    # gradient_accumulation_steps. Saying so makes both the usual per-batch mean.
    model.accepts_loss_kwargs = False
    if cfg.freeze_encoder:
        model.freeze_encoder()
    if cfg.freeze_embeddings:
        decoder = model.model.decoder
        for module in (decoder.embed_tokens, decoder.embed_positions):
            module.requires_grad_(False)
    if cfg.encoder_cache == "cross_kv":
        freeze_cross_attention_kv(model)
    accept_short_windows(model)  # the encoder takes the run's window (encoder_window.py)
    record_window(model, cfg.encoder_window_s)  # saved with the model: evaluate's default window
    return model, processor


def train(cfg: TrainConfig, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Fine-tune as configured; resumes from the last complete checkpoint in ``cfg.output_dir``.

    `callbacks` are extra `TrainerCallback`s, run after the run folder's own (the search reports
    each evaluation to its trial with one). Returns ``{"final": path, "metrics": last eval
    metrics or {}, "resumed_from": path or None}``.
    """
    import torch
    from transformers import EarlyStoppingCallback, Seq2SeqTrainingArguments

    quiet_library_notices()  # the evaluation's generate (decoding.py says why)
    # 0. the checks that need no data: refused here in one line, not after the data has loaded
    lora = LoraConfig.parse(cfg.lora)
    if lora is not None:
        check_device(lora)  # a quantized base on a CPU
        check_rank(lora, cfg.model)  # a rank the model's layers cannot hold
    precision = pick_precision(cfg.precision)  # fp16 on a CPU, bf16 on a GPU without it
    check_stores(cfg)  # they exist and agree
    run_dir = Path(cfg.output_dir)
    finished = check_run_folder(cfg, run_dir)
    if finished is not None:
        return finished
    run_dir.mkdir(parents=True, exist_ok=True)
    # Under torchrun / accelerate launch: join the job; the main process writes the run folder (distributed.py).
    setup_distributed(cfg.training_arguments().get("ddp_timeout", 1800))
    # 1. data, checked against the run folder (claimed by the main process, then read by the others)
    with main_process_first():
        train_ds, eval_ds, feature_config = open_stores(cfg, run_dir)
    _save_resolved_config(cfg, run_dir)
    # 2. model
    keep_freed_memory()
    model, processor = prepare_model(cfg, feature_config, lora)
    cache = readahead = None
    if cfg.encoder_cache:
        frames = frames_for(cfg.encoder_window_s)
        train_ds = fit_to_window(train_ds, frames)
        shards = [r["sha256"] for r in FeatureStore(cfg.train_data).manifest]
        bf16 = cache_in_bf16(cfg.encoder_cache_bf16)
        key = cache_key(cfg.model, shards, len(train_ds), cfg.encoder_cache, frames, cfg.encoder_cache_dtype, bf16)
        # One cache per (model, shards, rows, kind): runs that share encoder_cache_dir (the trials
        # of a search) build it once and all read it.
        folder = Path(cfg.encoder_cache_dir) / key if cfg.encoder_cache_dir else run_dir / "encoder_cache"
        # Built by the main process while the others wait; then they call it too, find every row done
        # and get the cache read-only (distributed.py).
        with main_process_first(), folder_lock(folder):
            cache = build_encoder_cache(model, train_ds, folder, key, cfg.encoder_cache, frames=frames, dtype=cfg.encoder_cache_dtype,
                                        bf16=bf16)
        readahead = readahead_for(cache)
        train_ds = train_ds.remove_columns(["input_features"]).add_column("cache_row", list(range(len(train_ds))))
    if lora is not None:  # after the cache: it holds the base encoder's (and cross-attention's) outputs
        model = apply_lora(model, lora, cached_cross_kv=cfg.encoder_cache == "cross_kv",
                           seed=cfg.training_arguments()["seed"])
        trainable, total = trainable_parameters(model)
        log.info("LoRA: %d of %d parameters train (%.2f %%)", trainable, total, 100 * trainable / total)
    # 3. where to start
    resume = resume_checkpoint(run_dir)
    if resume:
        print(f"resuming from {resume}")
    # 4. train
    defaults = {} if torch.cuda.is_available() else {"dataloader_pin_memory": False}
    if world_size() > 1 and not torch.cuda.is_available():
        defaults["use_cpu"] = True  # else the Trainer, finding no GPU, trains each process alone on all the data
    if cache is not None:
        defaults["dataloader_num_workers"] = 1  # collates (and reads ahead) a batch or two early
    args = Seq2SeqTrainingArguments(**{**defaults, **cfg.training_arguments(), **precision})
    compute_metrics = make_compute_metrics(processor.tokenizer) if eval_ds is not None else None
    all_callbacks = _run_folder_callbacks(cfg, run_dir, compute_metrics)
    if cfg.early_stopping_patience is not None:
        all_callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    all_callbacks.extend(callbacks)
    trainer = _each_eval_clip_once(trainer_class(cache, cfg.encoder_cache))(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=SpeechCollator(model.config.decoder_start_token_id, readahead, cfg.encoder_window_s,
                                     nospeech_token_id=nospeech_token_id(processor.tokenizer),
                                     prev_token_id=processor.tokenizer.convert_tokens_to_ids("<|startofprev|>"),
                                     pad_token_id=model.config.pad_token_id),
        compute_metrics=compute_metrics,
        processing_class=processor,
        callbacks=all_callbacks,
    )
    if resume and 0 < args.max_steps <= checkpoint_step(resume):
        # Killed after its last checkpoint, before final/ was whole: the weights are trained, and
        # Trainer.train would take one more step past max_steps. Load them and write final/.
        from transformers import TrainerState

        print(f"{resume} is step max_steps={args.max_steps}: writing final/ from it, no more training")
        trainer._load_from_checkpoint(resume)
        trainer.state = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json"))
    else:
        trainer.train(resume_from_checkpoint=resume)
    metrics = {}
    if eval_ds is not None:
        last = trainer.state.log_history[-2:] if trainer.state.log_history else []
        done_at_end = [h for h in last if "eval_wer" in h and h.get("step") == trainer.state.global_step]
        metrics = done_at_end[-1] if done_at_end else trainer.evaluate()
    # 5. final model and records, written by the main process; the others wait for them
    final = run_dir / "final"
    if not is_main_process():
        barrier()
        return {"final": final, "metrics": metrics, "resumed_from": resume}
    forget_finished(run_dir)  # final/ is rewritten: not a finished run until it is whole again
    if lora is not None:  # final/ is a plain Whisper checkpoint; the adapter alone goes in final/adapter
        model = merge_for_final(model, final, cfg.model if lora.quantization else None)
    model.config.use_cache = True  # off only for training; generation from final/ wants it
    force_language(model, feature_config.get("language"))  # final/ decodes its labels' language (a merge may reset it)
    if lora is not None:
        model.save_pretrained(str(final))
    else:
        trainer.save_model(str(final))
    processor.save_pretrained(final)
    # transformers 5 folds the feature extractor into processor_config.json; faster-whisper and
    # the CTranslate2 export read preprocessor_config.json, so write it too.
    processor.feature_extractor.save_pretrained(final)
    model.generation_config.save_pretrained(final)
    write_metrics(run_dir, trainer.state.log_history)
    if trainer.state.log_history:
        draw_curves(run_dir, trainer.state.log_history, cfg.figure)
    write_model_card(final, cfg, metrics, feature_config.get("language") or DEFAULT_LANGUAGE)
    length = cfg.training_arguments()
    record_finished(run_dir, final, {"max_steps": length["max_steps"], "num_train_epochs": length.get("num_train_epochs"),
                                     "global_step": trainer.state.global_step, "metrics": metrics})
    barrier()  # final/ is whole: the other processes may return
    if cfg.push_to_hub:
        push_final(final, cfg.hub_model_id)
        _note_pushed(run_dir, cfg.hub_model_id)
    return {"final": final, "metrics": metrics, "resumed_from": resume}


def check_run_folder(cfg: TrainConfig, run_dir: Path) -> dict[str, Any] | None:
    """Before any work: may this config resume `run_dir`? The result of a run it already finished, or None.

    A run folder that has trained (a complete checkpoint or a finished final/) is refused, in one
    line, to a config that differs from its ``config.json`` in a key that changes the weights
    (`config.weight_changes`), and to a max_steps below the steps it has trained. A finished run
    (final/ whole, and max_steps reached or the same length asked) is not trained again: that is
    said in one line and its recorded result returned (pushed to the Hub first if asked and not yet).
    """
    saved = run_dir / "config.json"
    if not saved.is_file():
        return None
    checkpoints = complete_checkpoints(run_dir)
    finished = finished_record(run_dir)
    if not checkpoints and finished is None:
        return None  # nothing trained yet: the new values apply (the old config.json is kept, dated)
    way_out = f"start a new output_dir, or delete {run_dir} to train this one from the start"
    try:
        old = json.loads(saved.read_text())
    except ValueError:
        raise UserError(f"{saved} is not readable JSON, so this run folder cannot be resumed safely; {way_out}") from None
    new = cfg.to_dict()
    changed = weight_changes(old, new)
    if changed:
        raise UserError(
            f"{run_dir} was trained with {describe_keys(effective_values(old), changed)}, not "
            f"{describe_keys(effective_values(new), changed)}; resuming would mix the two in one model: {way_out}"
        )
    args = cfg.training_arguments()
    max_steps = args["max_steps"]
    trained = max([checkpoint_step(c) for c in checkpoints] + [finished["global_step"] if finished else 0])
    if 0 < max_steps < trained:
        raise UserError(f"{run_dir} has trained {trained} steps, more than max_steps={max_steps}; "
                        f"raise --max_steps to at least {trained} to train on, or {way_out}")
    if finished is None:
        return None
    same_length = (finished.get("max_steps"), finished.get("num_train_epochs")) == (max_steps, args.get("num_train_epochs"))
    if not same_length and not 0 < max_steps <= finished["global_step"]:
        return None  # asked to train longer: resume
    print(f"{run_dir} is finished ({finished['global_step']} steps, final/ whole): nothing to train; "
          "raise --max_steps to train longer")
    final = run_dir / "final"
    if cfg.push_to_hub and finished.get("pushed_to") != cfg.hub_model_id and is_main_process():
        push_final(final, cfg.hub_model_id)
        _note_pushed(run_dir, cfg.hub_model_id)
    return {"final": final, "metrics": finished.get("metrics") or {}, "resumed_from": None}


@main_only
def _note_pushed(run_dir: Path, hub_model_id: str) -> None:
    """Record in the finished-run record where final/ was uploaded, so a re-run does not upload it again."""
    path = run_dir / FINISHED_RECORD
    record = json.loads(path.read_text())
    write_json(path, {**record, "pushed_to": hub_model_id})


def fit_to_window(train_ds, frames: int):
    """The training rows that fit a fixed encoder window of `frames` with 1 s to spare (as the app
    encodes them: `decoding.window_frames`); a cache holds every clip at one window, so longer
    clips are left out, never cut, and their count is printed."""
    if frames >= N_FRAMES:
        return train_ds
    keep = [i for i, n in enumerate(train_ds["n_frames"]) if n + 100 <= frames]
    if len(keep) < len(train_ds):
        print(f"encoder window {frames / 100:g} s: {len(train_ds) - len(keep)} of {len(train_ds)} training clips "
              f"are longer than {frames / 100 - 1:g} s and are left out (use a longer encoder_window_s to keep them)")
        train_ds = train_ds.select(keep)
    return train_ds


def _each_eval_clip_once(base: type) -> type:
    """`base` (a Seq2SeqTrainer) scoring each eval clip once when several processes evaluate.

    Accelerate repeats eval clips so that every process gets a whole last batch, and
    Seq2SeqTrainer.evaluate gathers the predictions with plain ``gather``, which keeps the
    repeats: 6 clips on 2 processes at 8 a batch came back as 16 predictions, 4 clips counted three
    times in the WER, eval_loss and ``evals/step-N.json``. ``gather_for_metrics`` (what Trainer
    uses) drops them; with one process the two are the same.
    """
    import functools

    class EachEvalClipOnce(base):
        def evaluation_loop(self, *args, **kwargs):
            self.gather_function = functools.partial(self.accelerator.gather_for_metrics,
                                                     use_gather_object=self.args.eval_use_gather_object)
            return super().evaluation_loop(*args, **kwargs)

    return EachEvalClipOnce


def _run_folder_callbacks(cfg: TrainConfig, run_dir: Path, compute_metrics=None) -> list[Any]:
    """The callback that keeps the run folder current while the Trainer runs."""
    from transformers import TrainerCallback

    class RunFolderCallback(TrainerCallback):
        """Marks finished checkpoints, keeps metrics.jsonl, the curves and evals/ current."""

        def on_save(self, args, state, control, **kwargs):
            barrier()  # every process has saved its part (rng_state_<rank>.pth) before the marker is written
            ckpt = run_dir / f"checkpoint-{state.global_step}"
            if ckpt.is_dir() and state.is_world_process_zero:
                mark_complete(ckpt)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero:
                write_metrics(run_dir, state.log_history)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if not state.is_world_process_zero:
                return
            last = getattr(compute_metrics, "last", None)
            if last is not None:
                write_eval_utterances(run_dir, state.global_step, last["references"], last["hypotheses"])
            draw_curves(run_dir, state.log_history, cfg.figure)

    return [RunFolderCallback()]


@main_only
def _save_resolved_config(cfg: TrainConfig, run_dir: Path) -> None:
    """``config.json`` as resolved; a resume with other values keeps the old file beside it, dated."""
    path = run_dir / "config.json"
    new = cfg.to_dict()
    if path.exists():
        old = json.loads(path.read_text())
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            log.warning("config changed since this run started (%s); the new values apply from here", ", ".join(changed))
            write_json(run_dir / f"config.{int(time.time())}.json", old)
    write_json(path, new)


def add_cli(sub) -> None:
    """Register ``whisper-sv train``."""
    defaults = ", ".join(f"{k}={v}" for k, v in TRAINING_DEFAULTS.items())
    p = sub.add_parser(
        "train", help="fine-tune Whisper on a feature store (resumes from the last complete checkpoint)",
        description="Train with a JSON preset; a flag overrides the preset's key of the same name.",
        epilog="Any Seq2SeqTrainingArguments field is a key too (--max_steps 100, --learning_rate 1e-4); "
        f"this toolkit's defaults for them: {defaults}.",
    )
    p.add_argument("config", help="a JSON preset, or the name of one that ships: tiny, cpu-demo, colab-small, colab-large-lora")
    add_options(p, TrainConfig, skip=("training",), title="TrainConfig keys")
    p.set_defaults(func=_run_cli, takes_training_keys=True)


def _run_cli(args) -> int:
    result = train(load_config(args.config, {**parse_overrides(args.extra_keys), **options_from(args, TrainConfig)}))
    print(json.dumps({"final": str(result["final"]), **{k: v for k, v in result["metrics"].items()}}, default=str))
    return 0
