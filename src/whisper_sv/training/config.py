"""One JSON preset plus ``--key value`` overrides: the whole configuration of a training run.

A preset is flat JSON. Keys that `TrainConfig` declares belong to the toolkit (model, data, run
folder, freezing, SpecAugment, ...); every other key must be a `Seq2SeqTrainingArguments` field
(``max_steps``, ``learning_rate``, ...) and is passed through. A typo is an error that names the
closest real key, not a silently ignored setting. The CLI, the notebooks and the search all build
their config here, and the resolved config is written into every run folder.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.errors import check_field_types, check_value_types, with_closest
from ..common.options import option
from ..common.presets import preset_path
from ..models.encoder_window import check_window_s
from ..models.lora import LoraConfig
from ..models.specs import DEFAULT_MODEL, check_model_spec
from .encoder_cache import DTYPES as CACHE_DTYPES
from .encoder_cache import KINDS as CACHE_KINDS

PRECISIONS = ("auto", "bf16", "fp16", "fp32")

# Defaults this toolkit sets on Seq2SeqTrainingArguments unless the preset says otherwise.
TRAINING_DEFAULTS: dict[str, Any] = {
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 16,
    "learning_rate": 1e-5,
    "warmup_steps": 500,
    "max_steps": 4000,
    "eval_strategy": "steps",
    "eval_steps": 1000,
    "save_strategy": "steps",
    "save_steps": 1000,
    "save_total_limit": 3,
    "logging_steps": 25,
    "predict_with_generate": True,
    "generation_max_length": 225,
    "metric_for_best_model": "wer",
    "greater_is_better": False,
    "report_to": "none",
    "remove_unused_columns": False,  # the collator needs n_frames and pad_value
    "label_names": ["labels"],
    "seed": 42,
}


# The keys a run folder may be resumed with other values of: none of them changes a weight, so the
# checkpoint trained so far is what it would have been with the new values. Any other key (model,
# data, freezing, LoRA, precision, seed, batch size, learning rate and its schedule, SpecAugment, the
# encoder cache's numbers, a key this list does not know) changes the weights, and `train` refuses
# to resume a run folder trained with another value of it (`weight_changes`).
HARMLESS_KEYS = frozenset({
    # where the run folder and the figure are (a moved folder is the same run), and the Hub upload
    "output_dir", "figure", "push_to_hub", "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo",
    "hub_always_push", "hub_revision",
    # logging: what is written down, not what is trained
    "logging_steps", "logging_strategy", "logging_first_step", "logging_nan_inf_filter", "report_to", "run_name",
    "project", "trackio_space_id", "disable_tqdm", "log_level", "log_level_replica", "log_on_each_node",
    "skip_memory_metrics", "include_num_input_tokens_seen",
    # checkpoints kept, and on which processes: a resume restores the weights, optimizer and RNG exactly
    "save_total_limit", "save_on_each_node", "save_only_model",
    # speed, not numbers: the batches' order is drawn in the main process from the seed, whoever loads them
    "dataloader_num_workers", "dataloader_prefetch_factor", "dataloader_pin_memory", "dataloader_persistent_workers",
    "encoder_cache_dir", "ddp_timeout", "torch_empty_cache_steps",
    # how long to train: raising max_steps (or the epochs) is how a finished run trains longer
    "max_steps", "num_train_epochs",
})
# Evaluation and the checkpoints' rhythm read the weights and write none, unless the run keeps the
# best evaluation's weights (early_stopping_patience, load_best_model_at_end): then which
# evaluations happen, on what, and how they are scored decide the final model, and these count too.
EVAL_KEYS = frozenset({
    "eval_data", "max_eval_samples", "eval_strategy", "eval_steps", "eval_delay", "eval_on_start",
    "per_device_eval_batch_size", "eval_accumulation_steps", "eval_do_concat_batches", "eval_use_gather_object",
    "batch_eval_metrics", "prediction_loss_only", "predict_with_generate", "generation_max_length",
    "generation_num_beams", "metric_for_best_model", "greater_is_better", "save_steps", "save_strategy",
})
# Keys holding a path: two spellings of one folder (relative, absolute) are the same value.
PATH_KEYS = frozenset({"model", "train_data", "eval_data"})


@dataclass
class TrainConfig:
    """The toolkit's own keys; `training` holds the Seq2SeqTrainingArguments keys."""

    output_dir: str = option(help="the run folder: checkpoints, final/, metrics.json, curves, the resolved config")
    train_data: str = option(help="feature store folder (whisper-sv features --out)")
    eval_data: str | None = option(None, "feature store folder; no evaluation when None")
    model: str = option(DEFAULT_MODEL, "Hub id, folder, packaged:whisper-base or random:tiny")
    freeze_encoder: bool = option(False, "train the decoder only: faster, and enough to adapt to a domain")
    freeze_embeddings: bool = option(False, (
        "Keep the decoder's token and position embeddings (the token table is tied to the output "
        "projection: 26.5M of base's 52M decoder parameters) as they are: less to memorise on a small"
        " corpus and a cheaper step (no gradient for the vocabulary-wide table)."
    ))
    encoder_cache: str | None = option(None, (
        "With the encoder frozen (and no SpecAugment), compute its work once per training clip: "
        "\"states\" caches its outputs, \"cross_kv\" also freezes and caches the decoder's "
        "cross-attention keys/values (encoder_cache.py). The encoder is most of a CPU step."
    ))
    encoder_cache_dir: str | None = option(None, (
        "Where that cache lives: None = the run folder; a folder shared by several runs (a search's "
        "trials) holds one cache per model, store and kind, built once and read by all."
    ))
    encoder_window_s: float = option(30.0, (
        "Seconds of audio the encoder sees per clip, in training and in evaluation during training "
        "(Whisper's own window is 30). 15 is the window the app serves with: it halves the encoder's "
        "work and a cross_kv cache. Saved in the model's config; `evaluate` scores on it by default."
    ))
    encoder_cache_dtype: str = option("float16", (
        "Numbers the encoder cache holds: \"float16\", or \"int8\" (half the disk; a scale per 64 "
        "values)."
    ))
    encoder_cache_bf16: bool = option(False, (
        "Compute the cache under bfloat16 autocast: 2-3x faster where the CPU has bf16 matrix units "
        "(AMX, AVX512-BF16) or on a GPU, at ~1 % rms error in the cached numbers. Off by default "
        "(exact unless asked); the cpu-demo preset turns it on: on the demo's dev clips it is no "
        "worse than a float32 cache, and it saves ~2 of the demo's minutes (docs/benchmarks.md)."
    ))
    apply_spec_augment: bool = option(False, (
        "SpecAugment, Whisper's own implementation (WhisperConfig mask_time_*/mask_feature_*)."
    ))
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    dropout: float | None = option(None, "WhisperConfig.dropout for the layers that train; None keeps the model's")
    precision: str = option("auto", (
        "auto: bf16 where the GPU has it, else fp16 on CUDA, fp32 on CPU. bf16 on a CPU is bfloat16 "
        "autocast, ~2x faster a step where the CPU has bf16 units (AMX, AVX512-BF16); float32 where "
        "not."
    ))
    early_stopping_patience: int | None = option(None, "evaluations without a better WER before stopping")
    max_train_samples: int | None = option(None, "use the first N rows of the train store")
    max_eval_samples: int | None = option(None, "use the first N rows of the eval store")
    figure: str | None = option("img/train.png", "loss/WER curves; also written into the run folder")
    lora: dict[str, Any] | None = option(None, (
        "LoRA through peft instead of training every weight: a JSON object of LoraConfig keys (r, "
        "alpha, dropout, target_modules, part, quantization), {} for the defaults (r 32, alpha 64 on "
        "the decoder's q_proj/v_proj); null trains the weights themselves. final/ holds the merged "
        "model."
    ))
    push_to_hub: bool = option(False, "upload final/ with a model card carrying the WER (model-index)")
    hub_model_id: str | None = None
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        # Types first: `--learning_rate abc` is refused here, not as a TypeError after loading data.
        check_field_types(self)
        unknown = set(self.training) - training_argument_names()
        if unknown:
            raise ValueError(_unknown_message(sorted(unknown)))
        check_value_types(self.training, training_argument_types())
        check_model_spec(self.model)  # a path typo fails here, not after the data has loaded
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: use one of {PRECISIONS}")
        self._fold_precision_flags()
        if not 0 <= self.mask_time_prob <= 1 or not 0 <= self.mask_feature_prob <= 1:
            raise ValueError("mask_time_prob and mask_feature_prob are probabilities in [0, 1]")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout}: use a probability in [0, 1)")
        if self.encoder_cache is not None and self.encoder_cache not in CACHE_KINDS:
            raise ValueError(f"encoder_cache={self.encoder_cache!r}: use null, \"states\" or \"cross_kv\"")
        check_window_s(self.encoder_window_s)
        if self.encoder_cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"encoder_cache_dtype={self.encoder_cache_dtype!r}: use one of {CACHE_DTYPES}")
        if self.encoder_cache and (not self.freeze_encoder or self.apply_spec_augment):
            raise ValueError(
                "encoder_cache needs freeze_encoder=true and apply_spec_augment=false: "
                "only a frozen encoder fed the same features gives the same outputs every epoch"
            )
        if self.lora is not None:
            settings = LoraConfig.parse(self.lora)
            self.lora = settings.to_dict()
            if self.encoder_cache and settings.part != "decoder":
                raise ValueError(f"lora part={settings.part!r} trains the encoder, so its outputs change: "
                                 "use part \"decoder\" with encoder_cache, or encoder_cache null")
        if self.early_stopping_patience is not None and not self.eval_data:
            raise ValueError("early_stopping_patience needs eval_data: early stopping watches the eval WER")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id (e.g. your-name/whisper-small-sv)")

    def _fold_precision_flags(self) -> None:
        """Read the Trainer's own ``fp16``/``bf16`` keys as `precision`, which decides them (`train.pick_precision`).

        ``fp16: true`` under precision auto is precision fp16 (refused on a CPU, like ``--precision
        fp16``); a flag that contradicts `precision` (``bf16: true`` with precision fp32, both
        flags true, ``fp16: false`` with precision fp16) is refused, never silently overruled."""
        flags = {k: self.training[k] for k in ("fp16", "bf16") if k in self.training}
        on = [k for k, v in flags.items() if v]
        said = ", ".join(f"{k}={str(v).lower()}" for k, v in flags.items())
        fix = "set only precision (auto, bf16, fp16 or fp32): it sets the Trainer's fp16 and bf16"
        if len(on) > 1 or (on and self.precision not in ("auto", on[0])):
            raise ValueError(f"{said} contradicts precision={self.precision!r}; {fix}")
        if any(not v and k == self.precision for k, v in flags.items()):
            raise ValueError(f"{said} contradicts precision={self.precision!r}; {fix}")
        if on:
            self.precision = on[0]
        # said once, as precision: the resolved config has one way to spell it
        self.training = {k: v for k, v in self.training.items() if k not in flags}

    def training_arguments(self) -> dict[str, Any]:
        """The Seq2SeqTrainingArguments kwargs: toolkit defaults, then the preset's values."""
        args = {**TRAINING_DEFAULTS, **self.training, "output_dir": self.output_dir}
        if not self.eval_data:
            args["eval_strategy"] = "no"
            args.pop("metric_for_best_model", None)
        if self.early_stopping_patience is not None:
            args["load_best_model_at_end"] = True
        return args

    def to_dict(self) -> dict[str, Any]:
        """Flat form, as in a preset file."""
        flat = {k: v for k, v in dataclasses.asdict(self).items() if k != "training"}
        return {**flat, **self.training}


def weight_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys, sorted, in which two resolved configs (a run folder's ``config.json``, `to_dict`)
    differ in a way that changes the weights trained: every key but `HARMLESS_KEYS` (and
    `EVAL_KEYS` unless either keeps its best evaluation's weights). A key one of them lacks has
    its default there (a config.json written before the key existed)."""
    old, new = effective_values(old), effective_values(new)
    picks_by_eval = any(r.get("early_stopping_patience") is not None or r.get("load_best_model_at_end") for r in (old, new))
    ignored = HARMLESS_KEYS | (frozenset() if picks_by_eval else EVAL_KEYS)
    return [k for k in differing_keys(old, new) if k not in ignored and not (k in PATH_KEYS and _same_folder(old.get(k), new.get(k)))]


def effective_values(record: dict[str, Any]) -> dict[str, Any]:
    """`record` (flat, as `to_dict` writes it) with the defaults it leaves out: the toolkit's
    fields and `TRAINING_DEFAULTS` (a Seq2SeqTrainingArguments key of no preset has its own
    default, which `differing_keys` compares with)."""
    values = {f.name: f.default for f in dataclasses.fields(TrainConfig)
              if f.name != "training" and f.default is not dataclasses.MISSING}
    values.update(TRAINING_DEFAULTS)
    values.update(json.loads(json.dumps(record)))  # as config.json reads back: tuples are lists
    return values


def differing_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys whose values differ; a key only one side names is compared with its default."""
    return sorted(k for k in set(old) | set(new) if old.get(k, _default(k)) != new.get(k, _default(k)))


def _default(key: str) -> Any:
    from transformers import Seq2SeqTrainingArguments

    for f in dataclasses.fields(Seq2SeqTrainingArguments):
        if f.name == key:
            return None if f.default is dataclasses.MISSING else f.default
    return None


def _same_folder(a: Any, b: Any) -> bool:
    """Whether two path values name one existing folder (``runs/x`` and ``/home/me/runs/x``)."""
    try:
        return isinstance(a, str) and isinstance(b, str) and Path(a).exists() and Path(b).exists() and Path(a).samefile(b)
    except OSError:
        return False


def toolkit_keys() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig)} - {"training"}


def training_argument_names() -> set[str]:
    from transformers import Seq2SeqTrainingArguments

    return {f.name for f in dataclasses.fields(Seq2SeqTrainingArguments) if f.init}


@functools.cache
def training_argument_types() -> dict[str, Any]:
    """The annotations of the Seq2SeqTrainingArguments fields (``{"learning_rate": float, ...}``)."""
    from transformers import Seq2SeqTrainingArguments

    try:
        return typing.get_type_hints(Seq2SeqTrainingArguments)
    except Exception:  # an annotation this Python cannot evaluate: check none rather than crash
        return {}


def _unknown_message(unknown: list[str]) -> str:
    known = toolkit_keys() | training_argument_names()
    hints = [with_closest(key, known) for key in unknown]
    return (
        f"unknown config key(s): {', '.join(hints)}; keys are TrainConfig fields or "
        "Seq2SeqTrainingArguments names"
    )


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["--max_steps", "10", "--freeze-encoder", "true"]`` -> ``{"max_steps": 10, "freeze_encoder": True}``.

    Values are read as JSON when they parse (numbers, true/false, null, lists) and as strings
    otherwise; dashes in keys become underscores.
    """
    out: dict[str, Any] = {}
    it = iter(pairs)
    for key in it:
        if not key.startswith("--"):
            raise ValueError(f"expected --key value, got {key!r}")
        name, eq, value = key[2:].partition("=")
        if not eq:
            value = next(it, None)
            if value is None:
                raise ValueError(f"--{name} needs a value")
        try:
            out[name.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[name.replace("-", "_")] = value
    return out


def build_config(values: dict[str, Any]) -> TrainConfig:
    """A `TrainConfig` from flat preset values; missing required keys are named."""
    own = {k: v for k, v in values.items() if k in toolkit_keys()}
    missing = [k for k in ("output_dir", "train_data") if k not in own]
    if missing:
        raise ValueError(f"config lacks {missing}: set them in the preset or with --{missing[0]} VALUE")
    return TrainConfig(**own, training={k: v for k, v in values.items() if k not in toolkit_keys()})


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a preset (a JSON file or the name of one that ships, `common.presets`; or none) and apply overrides on top."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = json.loads(preset_path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a preset is one JSON object of keys and values, not a {type(values).__name__}")
    values.update(overrides or {})
    return build_config(values)
