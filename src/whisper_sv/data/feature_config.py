"""The feature config: everything that changes the numbers in a feature store.

It lives beside the store (`feature_store`, `shard_format`) rather than with the pipeline that
writes it (`features`), so that training, evaluation and the search read a store's config without
importing the pipeline, its worker pool and its tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..audio.logmel import Smoothing
from ..common.errors import UserError, check_field_types
from ..common.options import option
from ..models.specs import DEFAULT_LANGUAGE, DEFAULT_MODEL, TASK
from .recipe import Recipe
from .shard_format import FORMAT_VERSION, FORMATS

# The one list of FeatureConfig's keys that say where clips come from or how rows are filed, not
# how clips become numbers, in the subsets each check needs:
# where a store's clips come from (another source, split or column: other clips, the same recipe);
ORIGIN_KEYS = ("source", "split", "audio_column", "text_column")
# how its rows are filed (which clips share a Parquet file; the file layout);
FILING_KEYS = ("shard_size", "format_version")
# and those a run sets itself (its --source and --split; the layout it writes), never a flag or a search.
RUN_KEYS = ("source", "split", "format_version")


@dataclass(frozen=True)
class FeatureConfig:
    """Everything that changes the stored numbers; saved as ``feature_config.json``.

    `n_mels` None means "what the model's feature extractor uses" (80, or 128 for large-v3) and is
    resolved before the config is saved. `shard_size` decides which clips share a file, so it is
    part of the config too; the number of workers and machines is not. `format_version` is the
    shard layout the store is written in (`shard_format`: a new store gets the latest).
    """

    source: str = ""
    split: str = "train"
    model: str = option(DEFAULT_MODEL, "tokenizer (and n_mels) source: any model spec")
    language: str = option(DEFAULT_LANGUAGE, (
        "the labels' language (sv, nb, en, ...): its Whisper token prefixes every label"
    ))
    task: str = option(TASK, "transcribe or translate")
    n_mels: int | None = option(None, "mel bins; null: what the model uses (80, or 128 for large-v3)")
    max_seconds: float = option(30.0, "Whisper's window; longer clips are dropped, never truncated")
    max_label_tokens: int = option(448, "decoder positions, prefix and <|endoftext|> included")
    shard_size: int = option(500, "clips per Parquet shard (the unit of work, resume and hashing)")
    smoothing: Smoothing | None = option(None, (
        "OpenCV smoothing of the log-mel image: none, gaussian, median, bilateral, or a JSON object "
        "such as {\"kind\": \"median\", \"ksize\": 5}; null: none."
    ))
    audio_column: str = option("audio", "audio column of a Hub dataset")
    text_column: str | None = option(None, "transcript column of a Hub dataset; null: sentence, text, ...")
    format_version: int = FORMAT_VERSION
    recipe: Recipe | None = option(None, (
        "Rows added beside the plain clips so a fine-tune keeps timestamps, silence and other "
        "languages (recipe.py): a JSON object of Recipe keys, e.g. {\"stitched_share\": 0.3, "
        "\"nonspeech_share\": 0.05, \"replay_source\": \"cv:corpus/en-synth\", \"replay_share\": 0.1}; null: "
        "none."
    ))

    def __post_init__(self):
        check_field_types(self, [f.name for f in dataclasses.fields(self) if f.name not in ("smoothing", "recipe")])
        object.__setattr__(self, "smoothing", Smoothing.parse(self.smoothing))
        object.__setattr__(self, "recipe", Recipe.parse(self.recipe))
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
        if self.format_version not in FORMATS:
            raise ValueError(f"format_version={self.format_version}: this whisper-sv reads store formats {FORMATS}; "
                             "leave it out of the config")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["smoothing"] = None if self.smoothing is None else self.smoothing.to_dict()
        # Written only when set, so a store made before the recipe existed keeps its config.
        if self.recipe is None:
            del d["recipe"]
        else:
            d["recipe"] = self.recipe.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FeatureConfig":
        if not isinstance(d, dict):
            raise UserError(f"a feature config is one JSON object of FeatureConfig fields, not a {type(d).__name__}")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise UserError(f"unknown feature config keys {sorted(unknown)}; known: {[f.name for f in dataclasses.fields(cls)]}")
        return cls(**d)

    @classmethod
    def from_json(cls, path: str | Path) -> "FeatureConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: not valid JSON ({err})") from err
