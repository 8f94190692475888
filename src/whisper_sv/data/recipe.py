"""The training mix that breaks nothing: rows a feature store adds beside its plain clips.

A fine-tune on single-sentence clips with ``<|notimestamps|>`` labels teaches Whisper that every
window holds one short sentence, in one language, with no timestamps and never silence. Exported
and decoded where users decode (faster-whisper's and the pipeline's defaults: 30 s windows,
timestamps on, no VAD), such a model stops after a few sentences, writes text on silence and
answers English in Swedish-sounding words. The recipe keeps what the base model could do by
showing it, in the same store the plain clips are in:

* **stitched clips** (`stitched_share`): consecutive clips of a shard, trimmed to their sound and
  joined with pauses into windows of up to `stitch_max_s` seconds (`longform.stitch`: the sentence
  boundaries are exact). `timestamp_share` of them are labelled the way Whisper was pre-trained on
  long audio: ``<|sot|><|sv|><|transcribe|><|0.32|> Text.<|2.46|><|3.10|> Text.<|5.02|><|eot|>``
  (distil-whisper trains about half its samples with timestamps); the rest carry
  ``<|notimestamps|>`` and the joined text. Plain clips keep ``<|notimestamps|>``.
* **prompted stitched clips** (`prompt_share`): faster-whisper's defaults (and openai-whisper's)
  decode a long recording window by window and prompt each window with what they wrote before:
  ``<|startofprev|> earlier text <|sot|><|sv|>...``. A model that never saw a prompt in training
  writes a few words after one and stops. This share of the stitched clips is prompted the same way
  with the text of the shard's clips before them (with timestamps when the clip has them, as
  faster-whisper's prompt has them when it decodes with timestamps); the prompt is never a target.
* **non-speech clips** (`nonspeech_share`): silence, noise, hum, tones, clicks and music-like
  signals (`nonspeech.training_clip`) labelled with Whisper's no-speech target: the token after
  ``<|startoftranscript|>`` is ``<|nospeech|>`` (what the no-speech probability reads), and after the
  forced ``<|sv|><|transcribe|><|notimestamps|>`` prompt users decode with, the transcript is
  empty. The row stores ``sot, nospeech, language, task, notimestamps, eot``; the collator turns
  it into those two targets (`collator.SpeechCollator`).
* **replay** (`replay_source`, `replay_share`): clips of another language (synthetic English by
  default, ``synth --language en``) with their true text and that language's token, so the
  base's other languages are still trained on.

Everything is a function of the shard index and `seed`, so a killed feature run redoes a shard
byte for byte. The shares are per plain clip of the shard: 0.3 adds 3 stitched clips per 10.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..audio.longform import Segment, stitch, timestamp_labels, trim_silence
from ..audio.nonspeech import training_clip
from ..common.errors import UserError, check_field_types, with_closest

SAMPLE_RATE = 16000
MIN_STITCHED = 2  # sentences in a stitched clip, at least
MAX_DECODER_TOKENS = 448  # Whisper's decoder positions: prompt, prefix, text and eot together
MAX_PROMPT_TOKENS = 223  # what faster-whisper and openai-whisper send at most (448 // 2 - 1)


@dataclass(frozen=True)
class Recipe:
    """What a feature store adds beside its plain clips; part of the store's config."""

    # Stitched clips added per plain clip (0.3: 3 per 10), each of consecutive clips joined with pauses.
    stitched_share: float = 0.0
    stitch_max_s: float = 28.0  # longest stitched clip, seconds (Whisper's window is 30)
    # Share of the stitched clips labelled with timestamp tokens; the rest get <|notimestamps|>.
    timestamp_share: float = 0.5
    # Share of the stitched clips prompted with earlier text (<|startofprev|> ...), as faster-whisper's
    # condition_on_previous_text prompts each window with the windows before it.
    prompt_share: float = 0.0
    prompt_max_tokens: int = 160  # longest prompt, tokens (faster-whisper sends at most 223)
    nonspeech_share: float = 0.0  # non-speech clips (no-speech target) added per plain clip
    # Another language's source (cv:PATH, e.g. a `synth --language en` corpus) whose clips are
    # replayed with their own text and language token; null: none.
    replay_source: str | None = None
    replay_split: str = "train"  # its split
    replay_language: str = "en"  # its language token
    replay_share: float = 0.0  # replayed clips added per plain clip
    seed: int = 0  # which clips are stitched, the pauses, the non-speech kinds and replay order

    def __post_init__(self):
        check_field_types(self)
        for name in ("stitched_share", "nonspeech_share", "replay_share"):
            if not 0 <= getattr(self, name) <= 4:
                raise ValueError(f"recipe {name}={getattr(self, name)}: use 0 to 4 (rows added per plain clip)")
        if not 0 <= self.timestamp_share <= 1:
            raise ValueError(f"recipe timestamp_share={self.timestamp_share}: a share in [0, 1]")
        if not 0 <= self.prompt_share <= 1:
            raise ValueError(f"recipe prompt_share={self.prompt_share}: a share of the stitched clips in [0, 1]")
        if self.prompt_share and not self.stitched_share:
            raise ValueError("recipe prompt_share prompts stitched clips: set stitched_share too")
        if not 1 <= self.prompt_max_tokens <= MAX_PROMPT_TOKENS:
            raise ValueError(f"recipe prompt_max_tokens={self.prompt_max_tokens}: use 1 to {MAX_PROMPT_TOKENS} "
                             "(Whisper's decoders send at most half its 448 positions)")
        if not 5 <= self.stitch_max_s <= 29:
            raise ValueError(f"recipe stitch_max_s={self.stitch_max_s}: use 5 to 29 s (room for a pause in Whisper's 30 s)")
        if self.replay_share and not self.replay_source:
            raise ValueError("recipe replay_share needs replay_source (e.g. cv:corpus/en-synth from `whisper-sv synth --language en`)")

    @classmethod
    def parse(cls, value: Any) -> "Recipe | None":
        """A Recipe from a dict (a preset's JSON object), itself, or None."""
        if value is None or isinstance(value, Recipe):
            return value
        if not isinstance(value, dict):
            raise UserError(f"recipe must be a JSON object of Recipe keys, not {type(value).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        for key in value:
            if key not in known:
                raise UserError(f"unknown recipe key {with_closest(key, known)}; known: {', '.join(known)}")
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        # Written only when prompts are on, so a store made before they existed keeps its config.
        if not self.prompt_share:
            del d["prompt_share"], d["prompt_max_tokens"]
        return d

    @property
    def adds_rows(self) -> bool:
        return bool(self.stitched_share or self.nonspeech_share or self.replay_share)


@dataclass
class Tokens:
    """The special token ids the workers label with (they never load a tokenizer)."""

    sot: int
    language: int
    task: int
    notimestamps: int
    eot: int
    timestamp_begin: int  # <|0.00|>
    nospeech: int
    replay_language: int | None = None
    prev: int | None = None  # <|startofprev|>, which opens a prompt

    @classmethod
    def of(cls, tokenizer, language: str, task: str, replay_language: str | None) -> "Tokens":
        from ..models.specs import whisper_language

        ids = tokenizer.convert_tokens_to_ids
        return cls(sot=ids("<|startoftranscript|>"), language=ids(f"<|{whisper_language(language)}|>"), task=ids(f"<|{task}|>"),
                   notimestamps=ids("<|notimestamps|>"), eot=ids("<|endoftext|>"), timestamp_begin=ids("<|0.00|>"),
                   nospeech=nospeech_token_id(tokenizer),
                   replay_language=ids(f"<|{whisper_language(replay_language)}|>") if replay_language else None,
                   prev=ids("<|startofprev|>"))

    def nospeech_labels(self) -> list[int]:
        """The stored row of a non-speech clip (the collator makes its two targets of it)."""
        return [self.sot, self.nospeech, self.language, self.task, self.notimestamps, self.eot]


@dataclass
class ShardExtras:
    """What the parent gives a worker for the recipe's rows of one shard."""

    recipe: Recipe
    tokens: Tokens
    spaced_text: list[list[int]] = field(default_factory=list)  # per example: " " + sentence, no special tokens
    replay: list = field(default_factory=list)  # Examples of the replay source
    replay_labels: list[list[int]] = field(default_factory=list)


@dataclass
class ExtraRow:
    """One recipe row before its log-mel: audio, text, labels, and where it came from."""

    clip_id: str
    sentence: str
    audio: np.ndarray
    labels: list[int]
    speaker: str
    segments: list[Segment] = field(default_factory=list)


def nospeech_token_id(tokenizer) -> int | None:
    """Whisper's no-speech token: ``<|nospeech|>`` in newer vocabularies, ``<|nocaptions|>`` in the
    first multilingual one (base, small, ...); None for a vocabulary with neither (an unknown token
    comes back as ``<|endoftext|>``)."""
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    found = [tokenizer.convert_tokens_to_ids(t) for t in ("<|nospeech|>", "<|nocaptions|>")]
    return next((i for i in found if i is not None and i != eot), None)


def text_ids(labels: list[int], prefix_len: int = 4) -> list[int]:
    """The text tokens of a plain row's labels (without ``sot, lang, task, notimestamps`` and eot)."""
    return list(labels[prefix_len:-1])


def stitched_rows(index: int, clips: list[tuple[np.ndarray, str, list[int], list[int], str]], extras: ShardExtras) -> list[ExtraRow]:
    """The shard's stitched clips from its decoded plain `clips` ``(audio, sentence, label ids,
    spaced text ids, speaker)``, in order; deterministic in (seed, shard index)."""
    recipe, tok = extras.recipe, extras.tokens
    n = int(round(recipe.stitched_share * len(clips)))
    if n == 0 or len(clips) < MIN_STITCHED:
        return []
    rng = np.random.default_rng([recipe.seed, index, 11])
    # The prompts draw from a generator of their own: a store without prompts is the store it was.
    prompt_rng = np.random.default_rng([recipe.seed, index, 17]) if recipe.prompt_share else None
    trimmed = [trim_silence(c[0]) for c in clips]
    rows = []
    for j in range(n):
        start = int(rng.integers(len(clips)))
        picked, seconds = [], 0.4  # lead-in and tail
        for k in range(start, start + len(clips)):
            i = k % len(clips)
            need = len(trimmed[i]) / SAMPLE_RATE + 1.2  # the clip and the longest pause
            if seconds + need > recipe.stitch_max_s and len(picked) >= MIN_STITCHED:
                break
            if seconds + need > recipe.stitch_max_s:
                picked = []  # two clips this long do not fit: start over from the next one
                seconds = 0.4
                continue
            picked.append(i)
            seconds += need
        if len(picked) < MIN_STITCHED:
            continue
        audio, segments = stitch([(trimmed[i], clips[i][1]) for i in picked], rng)
        with_timestamps = bool(rng.uniform() < recipe.timestamp_share)
        if with_timestamps:
            labels = timestamp_labels([tok.sot, tok.language, tok.task], segments,
                                      [clips[i][3] for i in picked], tok.timestamp_begin, tok.eot)
        else:
            # The first sentence as plain labels tokenise it (no leading space), the rest as they
            # follow a space: the same ids the tokenizer gives the joined text.
            body = text_ids(clips[picked[0]][2]) + [t for i in picked[1:] for t in clips[i][3]]
            labels = [tok.sot, tok.language, tok.task, tok.notimestamps, *body, tok.eot]
        prompted = False
        if prompt_rng is not None and prompt_rng.uniform() < recipe.prompt_share:
            budget = min(int(prompt_rng.integers(16, recipe.prompt_max_tokens + 1)), MAX_DECODER_TOKENS - 1 - len(labels))
            prompt = previous_text(clips, trimmed, start, set(picked), with_timestamps, tok.timestamp_begin, budget, prompt_rng)
            if prompt and tok.prev is not None:
                labels, prompted = [tok.prev, *prompt, *labels], True
        sentence = " ".join(clips[i][1].strip() for i in picked)
        name = f"stitched-{index:05d}-{j:03d}{'-p' if prompted else ''}{'-ts' if with_timestamps else ''}"
        rows.append(ExtraRow(name, sentence, audio, labels, clips[picked[0]][4], segments))
    return rows


def previous_text(clips: list[tuple], trimmed: list[np.ndarray], before: int, skip: set[int], with_timestamps: bool,
                  timestamp_begin: int, budget: int, rng: np.random.Generator) -> list[int]:
    """A prompt's text: the shard's clips before clip `before` (newest last, none of `skip`), the
    latest `budget` tokens of them, as faster-whisper prompts a window with the text of the windows
    before it. `with_timestamps`: each sentence between timestamp tokens of its own 30 s window
    (``<|1.20|> Text.<|3.40|><|4.00|> More.<|6.10|>``), as a decode with timestamps writes them."""
    if budget < 1:
        return []
    chosen, n = [], 0
    for k in range(before - 1, before - 1 - len(clips), -1):
        i = k % len(clips)
        if i in skip:
            continue
        chosen.insert(0, i)
        n += len(clips[i][3]) + 2 * with_timestamps
        if n >= budget:
            break
    if not with_timestamps:
        return [t for i in chosen for t in clips[i][3]][-budget:]
    segments, t = [], float(rng.uniform(0, 1))
    for i in chosen:
        seconds = len(trimmed[i]) / SAMPLE_RATE
        if t + seconds > 30:  # the next window: its times start again
            t = 0.0
        segments.append(Segment(t, min(t + seconds, 30.0), ""))
        t += seconds + float(rng.uniform(0.2, 1.0))
    return timestamp_labels([], segments, [clips[i][3] for i in chosen], timestamp_begin, -1)[:-1][-budget:]


def nonspeech_rows(index: int, n_plain: int, extras: ShardExtras) -> list[ExtraRow]:
    """The shard's non-speech clips, each labelled with the no-speech target."""
    recipe = extras.recipe
    n = int(round(recipe.nonspeech_share * n_plain))
    rows = []
    for j in range(n):
        kind, audio = training_clip(index * 1000 + j, recipe.seed)
        rows.append(ExtraRow(f"nonspeech-{index:05d}-{j:03d}-{kind}", "", audio, extras.tokens.nospeech_labels(), "nonspeech"))
    return rows


def replay_plan(n_replay_examples: int, index: int, n_plain: int, recipe: Recipe) -> list[int]:
    """Which replay examples shard `index` gets: the next ``replay_share x n_plain`` in a fixed
    shuffled order, cycling when the replay source runs out."""
    n = int(round(recipe.replay_share * n_plain))
    if n == 0 or n_replay_examples == 0:
        return []
    order = np.random.default_rng([recipe.seed, 13]).permutation(n_replay_examples)
    return [int(order[(index * n + j) % n_replay_examples]) for j in range(n)]
