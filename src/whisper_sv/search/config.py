"""What a search is: a training preset, the space to search, and how the study is run.

A search config (the JSON of ``whisper-sv search CONFIG``) names a training ``preset`` and
``train`` overrides, the ``space`` (a list of choices, or ``{"low", "high", "log"?, "step"?}``
per key), the sampler and pruner, the trial count, the study folder and storage, and optionally
a ``features`` section from which the search builds feature stores per feature config. Any
`TrainConfig` key, `Seq2SeqTrainingArguments` name, feature key, ``smoothing.FIELD`` or
``lora.FIELD`` can be searched; a typo names the closest key, and a value that cannot work with the
rest of the config is refused before any trial starts (`check_space`).

A ``lora.FIELD`` key (``lora.r``, ``lora.alpha``, ``lora.dropout``, ``lora.part``,
``lora.target_modules``, ``lora.quantization``) makes every trial a LoRA run: its ``lora`` object is
the preset's (or the defaults) with the trial's values. ``lora.target_modules`` choices are lists
(``[["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "out_proj"]]``); Optuna, which takes only
scalars, records each as its comma-joined names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..audio.logmel import Smoothing
from ..common.errors import UserError, check_field_types, is_user_error, one_line, with_closest
from ..common.fileio import write_json
from ..common.locks import folder_lock
from ..common.options import option
from ..common.presets import packaged_presets, preset_path
from ..data.feature_config import RUN_KEYS, FeatureConfig
from ..models.lora import LoraConfig
from ..training.config import build_config, toolkit_keys, training_argument_names

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "grid", "random")
PRUNERS = ("median", "wilcoxon", "none")
# Keys the search sets for each trial; searching them makes no sense.
FIXED_KEYS = {"output_dir", "train_data", "eval_data", "encoder_cache_dir", "figure", "push_to_hub", "hub_model_id"}
# Feature keys a run sets itself (from the `features` section), never searched.
FEATURE_SOURCE_KEYS = set(RUN_KEYS)
SMOOTHING_PREFIX = "smoothing."
LORA_PREFIX = "lora."
EXAMPLE_SPACE = '{"learning_rate": {"low": 1e-5, "high": 1e-3, "log": true}}'
# Keys of the `features` section besides the FeatureConfig keys.
FEATURE_SECTION_KEYS = {"source", "train_split", "eval_split", "workers"}
# Searched keys whose every value must be above 0 (the training config does not refuse them).
POSITIVE_KEYS = {"learning_rate": "a learning rate must be above 0"}
# The study's identity, written once when the study is created (`open_study`).
STUDY_RECORD = "study.json"
MIN_HEARTBEAT_S = 1.0


@dataclass(frozen=True)
class Param:
    """One searched key: a numeric range (linear or log) or a list of choices."""

    name: str
    kind: str  # "float", "int" or "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    @classmethod
    def parse(cls, name: str, spec: Any) -> "Param":
        """``[a, b, ...]`` (choices), ``{"low", "high", "log"?, "step"?, "type"?}`` or ``{"choices": [...]}``."""
        if isinstance(spec, list):
            spec = {"choices": spec}
        if not isinstance(spec, dict):
            raise UserError(f"space[{name!r}]: give a list of choices or {{\"low\": ..., \"high\": ...}}, not {spec!r}")
        unknown = set(spec) - {"type", "low", "high", "log", "step", "choices"}
        if unknown:
            hints = ", ".join(with_closest(k, ("type", "low", "high", "log", "step", "choices")) for k in sorted(unknown))
            raise UserError(f"space[{name!r}]: unknown field(s) {hints}; use low, high, log, step, type or choices")
        if "choices" in spec:
            if not isinstance(spec["choices"], list):
                raise UserError(f"space[{name!r}]: choices must be a list, not {spec['choices']!r}")
            choices = tuple(spec["choices"])
            if not choices:
                raise UserError(f"space[{name!r}]: choices is empty")
            bad = [c for c in choices if c is not None and not isinstance(c, (bool, int, float, str))]
            if bad:
                raise UserError(f"space[{name!r}]: choices must be numbers, strings, booleans or null, not {bad[0]!r}")
            return cls(name, "categorical", choices=choices)
        if "low" not in spec or "high" not in spec:
            raise UserError(f"space[{name!r}]: a range needs both low and high")
        low, high, step, log_ = spec["low"], spec["high"], spec.get("step"), spec.get("log", False)
        for key, value in (("low", low), ("high", high)) + ((("step", step),) if step is not None else ()):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"space[{name!r}]: {key}={value!r}: give a number")
        if not isinstance(log_, bool):
            raise UserError(f"space[{name!r}]: log={log_!r}: give true or false")
        kind = spec.get("type") or ("int" if isinstance(low, int) and isinstance(high, int) and not log_ else "float")
        if kind not in ("int", "float"):
            raise UserError(f"space[{name!r}]: type {kind!r}: use int or float (or give choices)")
        if kind == "int" and not all(float(v).is_integer() for v in (low, high, step or 1)):
            raise UserError(f"space[{name!r}]: type int needs whole numbers for low, high and step (got {low}, {high}, {step})")
        if not low < high:
            raise UserError(f"space[{name!r}]: low={low} must be below high={high}")
        if log_ and low <= 0:
            raise UserError(f"space[{name!r}]: a log range needs low > 0")
        if step is not None:
            if log_:
                raise UserError(f"space[{name!r}]: log and step cannot be combined (Optuna draws a log range without steps); drop one")
            if not 0 < step <= high - low:
                raise UserError(f"space[{name!r}]: step={step}: use a step above 0 and at most high - low ({high - low})")
        return cls(name, kind, low=low, high=high, log=log_, step=step)

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def probes(self) -> list[Any]:
        """Values that together exercise the range: its ends, or every choice."""
        if self.kind == "categorical":
            return list(self.choices)
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]

    def grid(self) -> list[Any]:
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int" or self.step:
            step = self.step or 1
            n = int(round((self.high - self.low) / step))
            cast = int if self.kind == "int" else float
            return [cast(self.low + i * step) for i in range(n + 1)]
        raise ValueError(f"space[{self.name!r}]: the grid sampler needs choices or a step for a float range")


@dataclass
class SearchConfig:
    """A training preset plus what to search and how (the JSON of ``whisper-sv search CONFIG``)."""

    train: dict[str, Any] = option(help="a flat training preset (TrainConfig and Seq2SeqTrainingArguments keys)")
    space: dict[str, Any] = option(help="key -> [choices] or {\"low\", \"high\", \"log\"?, \"step\"?}")
    study_dir: str = "runs/search"
    study_name: str | None = option(None, (
        "The study's name in the storage. Default: the one recorded in the folder's study.json, else "
        "(a new study) the folder's name, recorded then: a renamed or copied folder keeps its study."
    ))
    storage: str | None = option(None, "any Optuna storage URL; default: a journal file in study_dir")
    trials: int = option(20, "finished (COMPLETE or PRUNED) trials the study runs to")
    sampler: str = option("tpe", "tpe, grid (every combination of the space, for ablations) or random")
    seed: int = option(0, (
        "The sampler's seed is mixed with the worker's PID and the study's trial count, so a "
        "restarted worker, or a second one, never replays the first one's suggestions (two TPE "
        "samplers with one seed suggest the same parameters until their start-up trials are done). "
        "The grid sampler keeps it as it is: it shuffles the grid with it, and every worker must see "
        "one order."
    ))
    pruner: str = option("median", "median, wilcoxon (paired per-utterance errors) or none")
    pruner_args: dict[str, Any] = field(default_factory=dict, metadata={"help": "passed to the Optuna pruner"})
    features: dict[str, Any] | None = option(None, (
        "Build the feature stores per feature config instead of using the preset's train/eval_data: "
        "{\"source\": \"cv:PATH\", \"train_split\": \"train\", \"eval_split\": \"dev\", \"workers\": 2, "
        "**FeatureConfig keys}"
    ))
    heartbeat_s: float = option(30.0, (
        "how often a worker says its trial is alive (at least 1 s: each beat is a storage write)"
    ))
    stale_after_s: float = option(600.0, "silence after which a trial on another host counts as dead")
    max_retries: int = option(3, "re-runs of one trial whose worker died, before it is left failed")
    keep_encoder_cache: bool = option(True, (
        "False: delete the shared encoder caches after each trial, bounding the disk (a cross_kv "
        "cache of 1,400 clips is 25 GB) at the price of rebuilding one a later trial needs again."
    ))

    def __post_init__(self):
        # Every check here runs before any work, and each refusal is one line (a UserError).
        if not isinstance(self.space, dict):
            raise UserError(f"space must be an object of key -> range or choices, e.g. {EXAMPLE_SPACE}, not {type(self.space).__name__} {self.space!r}")
        check_field_types(self)
        if self.sampler not in SAMPLERS:
            raise UserError(f"sampler={self.sampler!r}: use one of {SAMPLERS}")
        if self.pruner not in PRUNERS:
            raise UserError(f"pruner={self.pruner!r}: use one of {PRUNERS}")
        if self.trials < 1:
            raise UserError(f"trials={self.trials}: ask for at least one trial")
        if not self.study_dir:
            raise UserError("study_dir is empty: name the study's folder, e.g. runs/search")
        if not self.heartbeat_s >= MIN_HEARTBEAT_S:
            raise UserError(f"heartbeat_s={self.heartbeat_s}: a worker stamps its trial in the storage every heartbeat_s "
                            f"seconds; use at least {MIN_HEARTBEAT_S:g} (default 30)")
        if not self.stale_after_s >= 2 * self.heartbeat_s:
            raise UserError(f"stale_after_s={self.stale_after_s}: a live worker on another host would be taken for dead "
                            f"between two heartbeats; use at least twice heartbeat_s ({2 * self.heartbeat_s:g})")
        if self.max_retries < 0:
            raise UserError(f"max_retries={self.max_retries}: use 0 or more")
        if not self.space:
            raise UserError(f"space is empty: name at least one key to search, e.g. {EXAMPLE_SPACE}")
        check_pruner_args(self)
        check_features_section(self)
        self.params = [Param.parse(name, _scalar_choices(name, spec)) for name, spec in self.space.items()]
        check_space(self)
        if self.sampler == "grid":
            size = math.prod(len(p.grid()) for p in self.params)
            if self.trials > size:
                log.info("the grid has %d points; running %d trials, not %d", size, size, self.trials)
                self.trials = size

    @property
    def feature_params(self) -> list[Param]:
        return [p for p in self.params if _is_feature_key(p.name)]

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _feature_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(FeatureConfig)} - FEATURE_SOURCE_KEYS


def _smoothing_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(Smoothing)}


def _is_feature_key(name: str) -> bool:
    return name.startswith(SMOOTHING_PREFIX) or name in _feature_fields()


def _lora_keys() -> set[str]:
    return {LORA_PREFIX + f.name for f in dataclasses.fields(LoraConfig)}


def _scalar_choices(name: str, spec: Any) -> Any:
    """``lora.target_modules`` choices as Optuna can store them: each list of names comma-joined."""
    if name != LORA_PREFIX + "target_modules":
        return spec
    choices = spec.get("choices") if isinstance(spec, dict) else spec
    if not isinstance(choices, list):
        raise ValueError(f"space[{name!r}]: give a list of choices, each a list of layer names, e.g. [[\"q_proj\", \"v_proj\"]]")
    joined = [",".join(c) if isinstance(c, (list, tuple)) and all(isinstance(m, str) for m in c) else c for c in choices]
    return {**spec, "choices": joined} if isinstance(spec, dict) else joined


def searchable_keys() -> set[str]:
    """Every key a space may name: training keys, feature keys, ``smoothing.FIELD`` and ``lora.FIELD``."""
    train = (toolkit_keys() | training_argument_names()) - FIXED_KEYS - {"lora"}
    return train | _feature_fields() | {SMOOTHING_PREFIX + f for f in _smoothing_fields()} | _lora_keys()


def check_space(cfg: SearchConfig) -> None:
    """Refuse, before any trial, a key that does not exist or a value that cannot work with the rest."""
    known = searchable_keys()
    for p in cfg.params:
        if p.name in FIXED_KEYS:
            raise ValueError(f"space[{p.name!r}]: the search sets {p.name} for each trial; it cannot be searched")
        if p.name == "lora":
            raise ValueError(f"space['lora']: search its fields instead: {', '.join(sorted(_lora_keys()))}")
        if p.name.startswith(LORA_PREFIX) and p.name not in known:
            raise ValueError(f"space: unknown key {with_closest(p.name, _lora_keys())}; lora keys are {', '.join(sorted(_lora_keys()))}")
        if p.name not in known:
            raise ValueError(f"space: unknown key {with_closest(p.name, known)}; keys are TrainConfig fields, Seq2SeqTrainingArguments names, feature config keys, smoothing.FIELD or lora.FIELD")
    if cfg.feature_params and not cfg.features:
        names = ", ".join(p.name for p in cfg.feature_params)
        raise ValueError(f"space searches feature key(s) {names}: add a \"features\" section with the source to build stores from")
    stores = {"train": "probe/train", "eval": "probe/eval"}
    for p in cfg.params:
        for value in p.probes():
            try:
                if _is_feature_key(p.name):
                    feature_config(cfg, {p.name: value})
                else:
                    build_config(trial_train_values(cfg, {p.name: value}, "probe", stores))
            except (ValueError, TypeError) as err:
                raise UserError(f"space: {p.name}={value!r} cannot work with this config: {one_line(err)}") from None
            if p.name in POSITIVE_KEYS and isinstance(value, (int, float)) and not value > 0:
                raise UserError(f"space: {p.name}={value!r} cannot work: {POSITIVE_KEYS[p.name]}")


def check_pruner_args(cfg: SearchConfig) -> None:
    """Refuse `pruner_args` the pruner does not take (naming the closest) or values it refuses."""
    if cfg.pruner == "none":
        return  # `--pruner none` on a config with pruner_args: nothing to pass them to
    try:
        import optuna
    except ImportError:  # the search itself says optuna is missing
        return
    import inspect
    import warnings

    cls = {"median": optuna.pruners.MedianPruner, "wilcoxon": optuna.pruners.WilcoxonPruner}[cfg.pruner]
    names = [n for n in inspect.signature(cls).parameters if n != "self"]
    for key in cfg.pruner_args:
        if key not in names:
            raise UserError(f"pruner_args: unknown key {with_closest(key, names)} for the {cfg.pruner} pruner; it takes {', '.join(names)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental" (the Wilcoxon pruner)
            _pruner(cfg)
    except (TypeError, ValueError) as err:
        raise UserError(f"pruner_args={cfg.pruner_args}: {one_line(err)}") from None


def check_features_section(cfg: SearchConfig) -> None:
    """The `features` section: known keys (a typo names the closest), a source spec, split names,
    and FeatureConfig values that work. Whether the source can be read is `check_features_source`."""
    if cfg.features is None:
        return
    known = FEATURE_SECTION_KEYS | _feature_fields()
    for key in sorted(cfg.features):
        if key not in known:
            raise UserError(f"features: unknown key {with_closest(key, known)}; use source, train_split, eval_split, workers "
                            "or a feature config key")
    source = cfg.features.get("source")
    if not isinstance(source, str) or not source:
        raise UserError('features: no "source": name the clips to build the stores from, e.g. "cv:corpus/sv-synth" or "hf:ID[:CONFIG]"')
    from ..data.sources import parse_source

    parse_source(source)
    for key in ("train_split", "eval_split"):
        if not isinstance(cfg.features.get(key, "x"), str) or not cfg.features.get(key, "x"):
            raise UserError(f"features: {key}={cfg.features[key]!r}: give a split name, e.g. \"train\" or \"dev\"")
    workers = cfg.features.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UserError(f"features: workers={workers!r}: give a whole number of processes, 1 or more")
    try:
        feature_config(cfg, {})
    except (ValueError, TypeError) as err:
        raise UserError(f"features: {one_line(err)}") from None


def check_features_source(cfg: SearchConfig) -> None:
    """Read the first row of the train and eval splits of the `features` source: a missing folder,
    split or dataset is refused before the first trial, not after three failed ones."""
    if cfg.features is None:
        return
    from ..data.sources import open_source

    fc = feature_config(cfg, {})
    source = cfg.features["source"]
    for key, default in (("train_split", "train"), ("eval_split", "dev")):
        split = cfg.features.get(key, default)
        try:
            open_source(source, split, audio_column=fc.audio_column, text_column=fc.text_column)
        except Exception as err:
            if not is_user_error(err):
                raise
            raise UserError(f"features: cannot read {key}={split!r} of {source}: {one_line(err)}") from None


def load_search_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SearchConfig:
    """Read a search config (a JSON file or the name of one that ships, `common.presets`); its
    ``preset`` (a training preset file beside the config or in the working directory, else one
    that ships) is merged under its ``train`` values. `overrides` set search settings (``trials``,
    ``study_dir``, ...) by name and training keys otherwise."""
    path = preset_path(path)
    values = _read_json_object(path, "the search config")
    train: dict[str, Any] = {}
    preset = values.pop("preset", None)
    if preset is not None and not isinstance(preset, str):
        raise UserError(f"{path}: preset={preset!r}: give the training preset's file name, e.g. \"cpu-demo.json\"")
    if preset:
        found = next((p for p in (path.parent / preset, Path(preset)) if p.is_file()), None)
        if found is None and Path(preset).name.removesuffix(".json") not in packaged_presets():
            raise UserError(f"{path}: preset {preset!r} not found beside it, in the working directory or among the presets that ship")
        train.update(_read_json_object(found or preset_path(preset), "the training preset"))
    extra = values.pop("train", {})
    if not isinstance(extra, dict):
        raise UserError(f"{path}: train={extra!r}: give an object of training keys, e.g. {{\"max_steps\": 60}}")
    train.update(extra)
    settings = {f.name for f in dataclasses.fields(SearchConfig)} - {"train", "space"}
    unknown = set(values) - settings - {"space"}
    if unknown:
        hints = [with_closest(k, settings | {"space", "preset", "train"}) for k in sorted(unknown)]
        raise ValueError(f"{path}: unknown search setting(s) {', '.join(hints)}")
    for key, value in (overrides or {}).items():
        (values if key in settings | {"space"} else train)[key] = value
    if "space" not in values:
        raise ValueError(f"{path}: no \"space\": name the keys to search")
    return SearchConfig(train=train, **values)


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: {what} is not valid JSON ({err})") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read {what} ({err.strerror})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: {what} must be one JSON object, not a {type(values).__name__}")
    return values


def feature_config(cfg: SearchConfig, params: dict[str, Any]) -> FeatureConfig:
    """The `FeatureConfig` of a trial: the `features` section with the trial's feature params."""
    values = {k: v for k, v in (cfg.features or {}).items() if k in _feature_fields()}
    values.update({k: v for k, v in params.items() if k in _feature_fields()})
    smoothing = values.get("smoothing")
    extra = {k[len(SMOOTHING_PREFIX):]: v for k, v in params.items() if k.startswith(SMOOTHING_PREFIX)}
    if isinstance(smoothing, str):
        smoothing = None if smoothing in ("", "none") else {"kind": smoothing}
    if extra:
        if smoothing is None:
            raise ValueError(f"{sorted(params)} set smoothing fields, but smoothing is off; search or set smoothing (a kind)")
        smoothing = {**smoothing, **extra}
    values["smoothing"] = smoothing
    if "model" not in values:
        values["model"] = cfg.train.get("model", FeatureConfig.model)
    return FeatureConfig(**values)


def store_key(fc: FeatureConfig) -> str:
    """A short, readable name for the stores of one feature config."""
    numbers = {k: v for k, v in fc.to_dict().items() if k not in FEATURE_SOURCE_KEYS}
    digest = hashlib.sha256(json.dumps(numbers, sort_keys=True).encode()).hexdigest()[:10]
    return f"{fc.smoothing.kind if fc.smoothing else 'plain'}-{digest}"


def trial_train_values(cfg: SearchConfig, params: dict[str, Any], run_dir: str, stores: dict[str, str] | None) -> dict[str, Any]:
    """The flat training preset of one trial: the search's, with the trial's training params (its
    ``lora.FIELD`` params folded into the ``lora`` object) and the folders the search decides."""
    values = {**cfg.train, **{k: v for k, v in params.items() if not _is_feature_key(k) and not k.startswith(LORA_PREFIX)}}
    lora = {k[len(LORA_PREFIX):]: v for k, v in params.items() if k.startswith(LORA_PREFIX)}
    if lora:
        if isinstance(lora.get("target_modules"), str):  # stored comma-joined (`_scalar_choices`)
            lora["target_modules"] = lora["target_modules"].split(",")
        values["lora"] = {**(values.get("lora") or {}), **lora}
    values.update(output_dir=str(run_dir), figure=None, push_to_hub=False)
    if stores:
        values.update(train_data=stores["train"], eval_data=stores["eval"])
    if values.get("encoder_cache"):
        values["encoder_cache_dir"] = str(Path(cfg.study_dir) / "encoder_cache")
    return values


def read_study_record(study_dir: str | Path) -> dict[str, Any] | None:
    """The folder's ``study.json`` ({"study_id", "study_name", "created"}), or None before the study exists."""
    path = Path(study_dir) / STUDY_RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as err:
        raise UserError(f"{path} is not readable ({err}); it names the folder's study: restore it from a copy of the folder") from None
    if not isinstance(record, dict) or not isinstance(record.get("study_name"), str) or not record.get("study_id"):
        raise UserError(f"{path} does not name a study (study_id, study_name); restore it from a copy of the folder")
    return record


def study_paths(cfg: SearchConfig) -> tuple[Path, str, str]:
    """(study folder, study name, storage): the name is the one the folder's study.json records,
    else `cfg.study_name`, else the folder's name (a new study's, recorded when it is created)."""
    study_dir = Path(cfg.study_dir)
    record = read_study_record(study_dir)
    name = record["study_name"] if record else cfg.study_name or study_dir.resolve().name
    storage = cfg.storage or str(study_dir / "study.journal")
    return study_dir, name, storage


def open_study(cfg: SearchConfig, create: bool = True, repair_journal: bool = False):
    """The study on `cfg.storage` (a journal file in the study folder by default).

    The study is the one the folder's ``study.json`` names (written once, when the study is
    created, with a random id), whatever the folder is called now. A journal file is checked
    first (`repair_journal`): a torn last record is dropped, other damage refused.
    """
    import optuna  # not a dependency of the package (requirements.txt): only a search needs it

    study_dir, _, url = study_paths(cfg)
    if "://" in url:
        storage = _rdb_storage(url)
    else:
        # A journal file with an open(O_EXCL) lock, which works on NFS and mounted Drive folders
        # where fcntl locks and SQLite's do not.
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        storage = journal_storage(url, repair=repair_journal)
    pruner = _pruner(cfg)
    if not create:
        _, name, _ = study_paths(cfg)
        return optuna.load_study(study_name=name, storage=storage, sampler=_sampler(cfg, cfg.seed), pruner=pruner)
    with folder_lock(study_dir / "study"):  # two workers starting a new study at once agree on its id
        record = read_study_record(study_dir)
        name = _study_name(cfg, study_dir, record, storage, journal=cfg.storage is None)
        study = optuna.create_study(study_name=name, storage=storage, sampler=_sampler(cfg, cfg.seed), pruner=pruner,
                                    direction="minimize", load_if_exists=True)
        if record is None:
            write_json(study_dir / STUDY_RECORD, {"study_id": uuid.uuid4().hex, "study_name": name,
                                                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    if cfg.sampler != "grid":  # the grid sampler's seed orders the grid: every worker must share it
        seed = int.from_bytes(hashlib.sha256(f"{cfg.seed}/{len(study.trials)}/{os.getpid()}".encode()).digest()[:4], "little")
        study.sampler = _sampler(cfg, seed % 2**31)
    return study


def _study_name(cfg: SearchConfig, study_dir: Path, record: dict[str, Any] | None, storage, journal: bool) -> str:
    """The storage's name of the folder's study; a name that would start another study in it is refused."""
    if record is not None:
        if cfg.study_name and cfg.study_name != record["study_name"]:
            raise UserError(f"{study_dir} is the folder of study {record['study_name']!r} ({STUDY_RECORD}); study_name "
                            f"{cfg.study_name!r} would start another study in it: drop study_name/--study, or use a new study_dir")
        return record["study_name"]
    name = cfg.study_name or study_dir.resolve().name
    if cfg.study_name or not journal:
        return name
    # A folder made before study.json existed: its journal's study was named after the folder it
    # was started in, which may have been copied or renamed since.
    import optuna

    names = optuna.get_all_study_names(storage)
    if not names or name in names:
        return name
    if len(names) == 1:
        print(f"search: {study_dir} holds study {names[0]!r} (named after the folder it was started in); continuing it")
        return names[0]
    raise UserError(f"{study_dir / 'study.journal'} holds studies {', '.join(map(repr, names))}, none named {name!r}: "
                    "pass --study NAME to say which one to continue")


# ---------------------------------------------------------------------------------------------
# The journal file: torn records


TORN_SUFFIX = ".torn-"


def _is_record(line: bytes) -> bool:
    """Whether one line of a journal (without its newline) is a complete Optuna journal record."""
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and "op_code" in record


def _backup(path: Path) -> Path:
    """A copy of the journal as it is, ``study.journal.torn-TIME``, before anything is dropped from it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = path.with_name(f"{path.name}{TORN_SUFFIX}{stamp}")
    n = 1
    while backup.exists():
        n += 1
        backup = path.with_name(f"{path.name}{TORN_SUFFIX}{stamp}-{n}")
    try:
        shutil.copyfile(path, backup)
    except BaseException:
        backup.unlink(missing_ok=True)
        raise
    return backup


def repair_journal(path: str | Path, *, force: bool = False) -> Path | None:
    """Check a journal file (hold its lock): drop a torn end; refuse damage in the middle unless `force`.

    A write cut short (a full disk, a process killed mid-write, a copy cut short) leaves a last
    line that is not a complete record; Optuna would glue the next record onto it, and every
    later read of the journal fails. That end was never read by any worker (Optuna skips an
    unfinished last line), so dropping it loses nothing that counted. A broken line with complete
    records after it was skipped by no reader either, but may also be an old record damaged in
    place, so it is dropped only when asked (`force`, ``--repair-journal``). Either way the
    original is kept as ``NAME.torn-TIME``; returns that copy, or None when the journal was sound.
    """
    path = Path(path)
    data = path.read_bytes()
    if not data:
        return None
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: b"" when the journal ends with a complete line
    good = [_is_record(line) for line in lines]
    last_good = max((i for i, ok in enumerate(good) if ok), default=-1)
    middle = [i + 1 for i in range(last_good) if not good[i]]
    end_torn = bool(tail) or last_good < len(lines) - 1
    if not middle and not end_torn:
        return None
    if middle and not force:
        where = f"line {middle[0]}" if len(middle) == 1 else f"lines {', '.join(map(str, middle[:5]))}"
        raise UserError(f"{path}: {where} of {len(lines)} {'is not a complete record' if len(middle) == 1 else 'are not complete records'} "
                        "and later records follow (a write cut short, then written after); run the same command with "
                        "--repair-journal to drop what cannot be read (the original is kept beside it) and continue")
    backup = _backup(path)
    if middle:
        from ..common.fileio import write_atomic

        kept = b"".join(line + b"\n" for line, ok in zip(lines, good) if ok)
        write_atomic(path, kept)
        dropped = f"{len(lines) + bool(tail) - sum(good)} unreadable record(s)"
    else:
        keep = sum(len(line) + 1 for line in lines[:last_good + 1])
        os.truncate(path, keep)  # in place: what workers already read keeps its offsets
        dropped = f"a torn last record ({len(data) - keep} bytes, a write cut short)"
    print(f"search: {path} held {dropped}; dropped {'them' if middle else 'it'}, the original is kept as {backup.name}")
    return backup


def _drop_torn_tail(path: Path) -> None:
    """`repair_journal` for the end only, cheaply: called before every append, under the lock."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
    repair_journal(path)


def journal_storage(path: str | Path, repair: bool = False):
    """A JournalStorage on the file `path` (locked with open(O_EXCL)), checked by `repair_journal`
    first, whose appends never leave a torn record: a write that fails (a full disk) is cut back
    off, and a torn end left by a writer that died is dropped before the next record is written."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileOpenLock

    path = str(path)
    lock = JournalFileOpenLock(path)
    backend = _safe_backend_class()(path, lock_obj=lock)
    lock.acquire()
    try:
        repair_journal(path, force=repair)
    finally:
        lock.release()
    return JournalStorage(backend)


@functools.cache
def _safe_backend_class():
    from optuna.storages.journal import JournalFileBackend

    class SafeJournalFileBackend(JournalFileBackend):
        """Optuna's journal file whose appends are all or nothing (see `journal_storage`)."""

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode("utf-8")
            self._lock.acquire()
            try:
                _drop_torn_tail(Path(self._file_path))
                size = os.path.getsize(self._file_path)
                try:
                    with open(self._file_path, "ab") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.truncate(self._file_path, size)  # shrinking needs no space
                    raise
            finally:
                self._lock.release()

    return SafeJournalFileBackend


def _rdb_storage(url: str, attempts: int = 5):
    """An RDB storage; workers that start together race to create its tables, so the losers retry."""
    import optuna  # optional, as in open_study; sqlalchemy comes with it
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url)
        except SQLAlchemyError as err:
            if attempt == attempts - 1:
                from sqlalchemy.engine import make_url

                shown = make_url(url).render_as_string(hide_password=True)
                raise ValueError(f"cannot open the study storage {shown}: {str(err).splitlines()[0]}") from err
            time.sleep(0.5 + random.random())


def _sampler(cfg: SearchConfig, seed: int):
    import optuna

    if cfg.sampler == "grid":
        return optuna.samplers.GridSampler({p.name: p.grid() for p in cfg.params}, seed=seed)
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(cfg: SearchConfig):
    import optuna

    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(**{"n_startup_trials": 3, "n_warmup_steps": 0, **cfg.pruner_args})
    if cfg.pruner == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(**cfg.pruner_args)
    return optuna.pruners.NopPruner()
