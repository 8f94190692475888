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

import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import build_config, toolkit_keys, training_argument_names
from .errors import with_closest
from .feature_config import FeatureConfig
from .logmel import Smoothing
from .lora import LoraSettings

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "grid", "random")
PRUNERS = ("median", "wilcoxon", "none")
# Keys the search sets for each trial; searching them makes no sense.
FIXED_KEYS = {"output_dir", "train_data", "eval_data", "encoder_cache_dir", "figure", "push_to_hub", "hub_model_id"}
# Feature keys that say where clips come from, set by the `features` section rather than searched.
FEATURE_SOURCE_KEYS = {"source", "split", "format_version"}
SMOOTHING_PREFIX = "smoothing."
LORA_PREFIX = "lora."


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
            raise ValueError(f"space[{name!r}]: give a list of choices or {{\"low\": ..., \"high\": ...}}, not {spec!r}")
        unknown = set(spec) - {"type", "low", "high", "log", "step", "choices"}
        if unknown:
            raise ValueError(f"space[{name!r}]: unknown field(s) {sorted(unknown)}; use low, high, log, step, type or choices")
        if "choices" in spec:
            choices = tuple(spec["choices"])
            if not choices:
                raise ValueError(f"space[{name!r}]: choices is empty")
            bad = [c for c in choices if c is not None and not isinstance(c, (bool, int, float, str))]
            if bad:
                raise ValueError(f"space[{name!r}]: choices must be numbers, strings, booleans or null, not {bad[0]!r}")
            return cls(name, "categorical", choices=choices)
        if "low" not in spec or "high" not in spec:
            raise ValueError(f"space[{name!r}]: a range needs both low and high")
        low, high = spec["low"], spec["high"]
        kind = spec.get("type") or ("int" if isinstance(low, int) and isinstance(high, int) and not spec.get("log") else "float")
        if kind not in ("int", "float"):
            raise ValueError(f"space[{name!r}]: type {kind!r}: use int or float (or give choices)")
        if not low < high:
            raise ValueError(f"space[{name!r}]: low={low} must be below high={high}")
        if spec.get("log") and low <= 0:
            raise ValueError(f"space[{name!r}]: a log range needs low > 0")
        return cls(name, kind, low=low, high=high, log=bool(spec.get("log")), step=spec.get("step"))

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

    train: dict[str, Any]  # a flat training preset (TrainConfig and Seq2SeqTrainingArguments keys)
    space: dict[str, Any]  # key -> [choices] or {"low", "high", "log"?, "step"?}
    study_dir: str = "runs/search"
    study_name: str | None = None  # default: the study folder's name
    storage: str | None = None  # any Optuna storage URL; default: a journal file in study_dir
    trials: int = 20  # finished (COMPLETE or PRUNED) trials the study runs to
    sampler: str = "tpe"  # tpe, grid (every combination of the space, for ablations) or random
    # The sampler's seed is mixed with the worker's PID and the study's trial count, so a restarted
    # worker, or a second one, never replays the first one's suggestions (two TPE samplers with one
    # seed suggest the same parameters until their start-up trials are done). The grid sampler
    # keeps it as it is: it shuffles the grid with it, and every worker must see one order.
    seed: int = 0
    pruner: str = "median"  # median, wilcoxon (paired per-utterance errors) or none
    pruner_args: dict[str, Any] = field(default_factory=dict)  # passed to the Optuna pruner
    # Build the feature stores per feature config instead of using the preset's train/eval_data:
    # {"source": "cv:PATH", "train_split": "train", "eval_split": "dev", "workers": 2, **FeatureConfig keys}
    features: dict[str, Any] | None = None
    heartbeat_s: float = 30.0  # how often a worker says its trial is alive
    stale_after_s: float = 600.0  # silence after which a trial on another host counts as dead
    max_retries: int = 3  # re-runs of one trial whose worker died, before it is left failed
    # False: delete the shared encoder caches after each trial, bounding the disk (a cross_kv
    # cache of 1,400 clips is 25 GB) at the price of rebuilding one a later trial needs again.
    keep_encoder_cache: bool = True

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler={self.sampler!r}: use one of {SAMPLERS}")
        if self.pruner not in PRUNERS:
            raise ValueError(f"pruner={self.pruner!r}: use one of {PRUNERS}")
        if self.trials < 1:
            raise ValueError(f"trials={self.trials}: ask for at least one trial")
        if not self.space:
            raise ValueError("space is empty: name at least one key to search, e.g. {\"learning_rate\": {\"low\": 1e-5, \"high\": 1e-3, \"log\": true}}")
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
    return {LORA_PREFIX + f.name for f in dataclasses.fields(LoraSettings)}


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
                raise ValueError(f"space: {p.name}={value!r} cannot work with this config: {err}") from None


def load_search_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SearchConfig:
    """Read a search config; its ``preset`` (a training preset file, relative to the config's
    folder or the working directory) is merged under its ``train`` values. `overrides` set search
    settings (``trials``, ``study_dir``, ...) by name and training keys otherwise."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot read the search config ({err.strerror})") from None
    train: dict[str, Any] = {}
    preset = values.pop("preset", None)
    if preset:
        found = next((p for p in (path.parent / preset, Path(preset)) if p.is_file()), None)
        if found is None:
            raise ValueError(f"{path}: preset {preset!r} not found beside it or in the working directory")
        train.update(json.loads(found.read_text()))
    train.update(values.pop("train", {}))
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


def study_paths(cfg: SearchConfig) -> tuple[Path, str, str]:
    study_dir = Path(cfg.study_dir)
    name = cfg.study_name or study_dir.resolve().name
    storage = cfg.storage or str(study_dir / "study.journal")
    return study_dir, name, storage


def open_study(cfg: SearchConfig, create: bool = True):
    """The study on `cfg.storage` (a journal file in the study folder by default)."""
    import optuna  # not a dependency of the package (requirements.txt): only a search needs it
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    study_dir, name, storage = study_paths(cfg)
    if "://" in storage:
        storage = _rdb_storage(storage)
    else:
        # A journal file with an open(O_EXCL) lock, which works on NFS and mounted Drive folders
        # where fcntl locks and SQLite's do not.
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(storage, lock_obj=JournalFileOpenLock(storage)))
    pruner = _pruner(cfg)
    if not create:
        return optuna.load_study(study_name=name, storage=storage, sampler=_sampler(cfg, cfg.seed), pruner=pruner)
    study = optuna.create_study(study_name=name, storage=storage, sampler=_sampler(cfg, cfg.seed), pruner=pruner,
                                direction="minimize", load_if_exists=True)
    if cfg.sampler != "grid":  # the grid sampler's seed orders the grid: every worker must share it
        seed = int.from_bytes(hashlib.sha256(f"{cfg.seed}/{len(study.trials)}/{os.getpid()}".encode()).digest()[:4], "little")
        study.sampler = _sampler(cfg, seed % 2**31)
    return study


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
