"""The offline speech corpus: CC0 Common Voice sentences spoken by espeak-ng (and MBROLA).

The output is a Common Voice release folder (48 kHz MP3 clips, TSVs with today's header), so every
stage reads it as ``cv:PATH`` exactly like the real download. Splits are by sentence, so no sentence
is in two splits, and everything is a function of the seed: the same seed gives the same files.

The corpus is Swedish unless `language` says otherwise (English ships too, for checking that a
fine-tuned model still handles English and as replay data). Speakers (`voices`) are espeak-ng's
formant voices of that language and, where installed, MBROLA's diphone voices of real speakers of
it; a speaker can be held out of training (only in the test split), and each clip can get a room,
noise, a telephone line, a level and a speed (`realism`). Left at their defaults
these settings make the corpus earlier versions made, byte for byte, and record nothing new in
``synth.json``, so those corpora are resumed and skipped, not refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import sys
import threading
from dataclasses import asdict, dataclass, field
from importlib import resources
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from tqdm.auto import tqdm

from ..audio.realism import Effects, apply_effects, draw_effects
from ..common.errors import UserError
from ..common.fileio import claim_folder, remove_dead_temp_files, sha256_file, write_atomic
from ..common.options import add_options, build, option, options_from
from ..data.sources import CV_HEADER
from ..data.voices import (
    MBROLA_DATABASES,
    Voice,
    check_language,
    families,
    install_mbrola,
    language_name,
    missing_voices,
    parse_families,
    parse_speakers,
    speak,
)

# The CC0 sentence lists that ship inside the package (synth/sentences/, with their licence note).
SHIPPED = Path(str(resources.files("whisper_sv.synth") / "sentences")).resolve()
BUNDLED_SENTENCES = "data/sv_sentences.txt"  # how configs and synth.json name the Swedish list that ships
SENTENCES = SHIPPED / "sv_sentences.txt"
_BUNDLED = re.compile(r"data/([A-Za-z0-9-]+_sentences\.txt)")  # data/<language>_sentences.txt: a list that ships
LOCALES = {"sv": "sv-SE", "nb": "nb-NO"}  # Common Voice's locale of a language where it is not the code itself
RECORD_NAME = "synth.json"
CLIP_RATE = 48000  # Common Voice ships 48 kHz MP3
RATES = (130, 190)  # words per minute, drawn uniformly per clip
PITCHES = (30, 70)  # espeak's 0-99 pitch scale, drawn uniformly per clip
NOISE_DB = -55.0  # a faint noise floor, seeded per clip, so silences are not digital zero
HOLDOUT_SPLIT = "test"  # where a held-out speaker's clips go
# Fields that came after the first corpus, with the value that makes the corpus it made. Left at
# it, a field is not written into synth.json, so a corpus from before it is still recognised.
LEGACY_VALUES = {"language": "sv", "voices": "espeak", "holdout_speakers": "", "realism": False}
# The realism knobs change nothing while `realism` is off, so they are recorded only when it is on.
REALISM_KNOBS = ("snr_db", "reverb_share", "rt60_s", "telephone_share", "gain_db", "speed")


@dataclass(frozen=True)
class SynthConfig:
    """What decides the corpus; saved as ``synth.json`` and compared on re-runs."""

    clips: int = option(3000, "number of clips")
    seed: int = option(0, "the same seed gives the same corpus, byte for byte")
    splits: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "dev": 0.1, "test": 0.1}, metadata={"help": (
        "fraction of the sentences per split"
    )})
    language: str = option("sv", (
        "The language spoken (an espeak-ng language code, e.g. sv, en): its espeak-ng voice, its "
        "MBROLA voices (sv: sw1 sw2; en: us1 us2 us3 en1; other languages have none) and its bundled "
        "sentences."
    ))
    sentences: str = option("", (
        "One sentence per line; a split never shares a sentence with another. Empty (the default): "
        "this checkout's copy of data/<language>_sentences.txt, wherever the command runs (sv and en "
        "ship; any other language needs a file). A corpus is compared by the file's content."
    ))
    voices: str = option("auto", (
        "Voice families, comma-separated: espeak (16 espeak-ng formant voices) and/or mbrola "
        "(MBROLA's diphone voices of real speakers of the language; `make setup` installs them). Per "
        "clip a family, then a voice of it, a rate and a pitch are drawn. auto: both where MBROLA's "
        "voices of the language are installed, else espeak alone (said in one line); synth.json "
        "records which."
    ))
    holdout_speakers: str = option("", (
        "Speaker ids kept out of training, comma-separated (e.g. mbrola-sw2): their clips are all in "
        "the test split, never in train or dev, so the test holds a speaker the model never heard."
    ))
    realism: bool = option(True, (
        "Acoustic realism: each clip gets the room, noise, telephone line, level and speed below, "
        "drawn from the seed; --realism false gives the clean corpus. The ranges below are a guess at"
        " everyday recordings (mostly quiet, some rooms, a few phone calls), not fitted to anything "
        "measured."
    ))
    snr_db: list[float] | None = field(default_factory=lambda: [10.0, 40.0], metadata={"help": (
        "Background noise (white, pink or brown) at an SNR drawn in [low, high] dB; null: no noise."
    )})
    reverb_share: float = option(0.3, (
        "share of clips spoken in a room (a synthetic exponential-decay impulse response)"
    ))
    rt60_s: list[float] = field(default_factory=lambda: [0.2, 0.6], metadata={"help": (
        "That room's reverberation time (to -60 dB), drawn in [low, high] seconds."
    )})
    telephone_share: float = option(0.1, "share of clips band-limited to a telephone line's 300-3400 Hz")
    gain_db: list[float] = field(default_factory=lambda: [-12.0, 3.0], metadata={"help": (
        "Recording level change drawn in [low, high] dB (clipped at full scale, as a recorder does)."
    )})
    speed: list[float] = field(default_factory=lambda: [0.95, 1.05], metadata={"help": (
        "Speaking-speed factor drawn in [low, high] (the pitch follows, as on tape)."
    )})

    def __post_init__(self):
        if self.clips < len(self.splits):
            raise ValueError(f"clips={self.clips}: need at least one clip per split ({len(self.splits)})")
        if abs(sum(self.splits.values()) - 1) > 1e-6:
            raise ValueError(f"split fractions {self.splits} must add up to 1")
        check_language(self.language)
        if not self.sentences:
            bundled = f"data/{self.language}_sentences.txt"
            if not (SHIPPED / Path(bundled).name).is_file():
                raise ValueError(f"language={self.language!r}: no sentences ship for it ({bundled}); give --sentences FILE, one sentence per line")
            object.__setattr__(self, "sentences", bundled)
        # Written in one spelling, so "mbrola,espeak" and "espeak, mbrola" are the same corpus.
        object.__setattr__(self, "voices", ",".join(parse_families(self.voices, self.language)))
        held = parse_speakers(self.holdout_speakers, self.language)
        object.__setattr__(self, "holdout_speakers", ",".join(held))
        offered = {v.id for voices in self.voice_pool().values() for v in voices}
        outside = [s for s in held if s not in offered]
        if outside:
            raise ValueError(f"holdout_speakers {outside} are not among the voices {self.voices!r}")
        if held and HOLDOUT_SPLIT not in self.splits:
            raise ValueError(f"holdout_speakers need a {HOLDOUT_SPLIT!r} split to hold them (splits: {list(self.splits)})")
        if held and not self.voice_pool(training=True):
            raise ValueError(f"holdout_speakers={self.holdout_speakers!r} holds out every voice: nothing is left to train on")
        for name in ("snr_db", "rt60_s", "gain_db", "speed"):
            span = getattr(self, name)
            if span is not None and (len(span) != 2 or not span[0] <= span[1]):
                raise ValueError(f"{name}={span}: give a range [low, high] with low <= high")
        if self.speed[0] <= 0 or self.rt60_s[0] <= 0:
            raise ValueError("speed and rt60_s must be positive")
        if not (0 <= self.reverb_share <= 1 and 0 <= self.telephone_share <= 1):
            raise ValueError("reverb_share and telephone_share are shares of the clips, in [0, 1]")

    def voice_pool(self, training: bool = False) -> dict[str, tuple[Voice, ...]]:
        """``{family: its voices}`` a clip draws from; for a train or dev clip, without the held-out speakers."""
        held = set(self.holdout_speakers.split(",")) if training else set()
        table = families(self.language)
        pool = {f: tuple(v for v in table[f] if v.id not in held) for f in self.voices.split(",")}
        return {f: voices for f, voices in pool.items() if voices}

    @property
    def locale(self) -> str:
        """Common Voice's name of the language: ``sv-SE`` for Swedish, ``en`` for English."""
        return LOCALES.get(self.language, self.language)


@dataclass(frozen=True)
class ClipJob:
    """One clip to render: which sentence, in which voice, at which rate and pitch, with which effects."""

    index: int
    split: str
    sentence: str
    voice: Voice
    rate: int
    pitch: int
    effects: Effects | None = None  # None: the clean clip
    locale: str = "sv-SE"  # the corpus's Common Voice locale: the clip's file name and the TSV's locale column


def sentences_file(sentences: str | Path) -> Path:
    """The file a config's ``sentences`` names: ``data/<language>_sentences.txt`` (`BUNDLED_SENTENCES`
    and the others) is the list that ships inside the package, wherever it is installed; any other
    name is a path."""
    shipped = _BUNDLED.fullmatch(str(sentences))
    if shipped and (SHIPPED / shipped.group(1)).is_file():
        return SHIPPED / shipped.group(1)
    return Path(sentences)


def _shown_name(path: Path) -> str:
    """How synth.json names a sentences file: one that ships as ``data/<name>``, any other by its path."""
    return f"data/{path.name}" if path == SHIPPED / path.name else str(path)


def corpus_record(cfg: SynthConfig) -> dict:
    """What ``synth.json`` records: the config, with the sentences file named and hashed.

    A list that ships is named ``data/<language>_sentences.txt`` and any other file by its absolute
    path; only the sha256 is compared, so a corpus made by another install (or a moved one) from
    the same sentences is resumed, and one made from other sentences is refused.
    Fields at their `LEGACY_VALUES`, and the realism knobs while realism is off, are left out.
    """
    path = sentences_file(cfg.sentences).resolve()
    return _without_unused({**asdict(cfg), "sentences": _shown_name(path), "sentences_sha256": sha256_file(path)})


def _without_unused(record: dict) -> dict:
    """`record` without what says nothing about the corpus: fields at their `LEGACY_VALUES`, and
    the realism knobs while realism is off."""
    unused = REALISM_KNOBS if not record.get("realism", False) else ()
    return {k: v for k, v in record.items() if k not in unused and not (k in LEGACY_VALUES and v == LEGACY_VALUES[k])}


def _compared(record: dict) -> dict:
    """The part of a record two runs must share: what it says (`_without_unused`) but the sentences file's name."""
    return {k: v for k, v in _without_unused(record).items() if k != "sentences"}


def _upgrade_record(record: dict) -> dict:
    """A record written before sentences were hashed (its ``sentences`` is an absolute path):
    hash the file it names, so the same sentences from another checkout still match."""
    if "sentences_sha256" in record or "sentences" not in record:
        return record
    path = Path(record["sentences"])
    digest = sha256_file(path) if path.is_file() else f"unknown ({path} is gone)"
    return {**record, "sentences": BUNDLED_SENTENCES if path == SENTENCES else str(path), "sentences_sha256": digest}


def read_sentences(path: str | Path = SENTENCES) -> list[str]:
    """The corpus sentences: stripped, non-empty, unique, in file order."""
    seen: dict[str, None] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = " ".join(line.split())  # tabs or doubled spaces would break the TSV
        if line:
            seen.setdefault(line, None)
    return list(seen)


def plan_corpus(cfg: SynthConfig) -> list[ClipJob]:
    """Assign sentences to splits and voices (and effects) to clips, deterministically from ``cfg.seed``.

    With more clips than sentences, sentences are spoken again by other voices, always within
    their own split. A clip draws a family (when there are several), then one of its voices; a
    train or dev clip never draws a held-out speaker. The effects come from a generator of their
    own per clip, so turning realism on leaves the voices, rates and pitches as they were.
    """
    rng = random.Random(cfg.seed)
    sentences = read_sentences(sentences_file(cfg.sentences))
    rng.shuffle(sentences)
    used = sentences[: min(cfg.clips, len(sentences))]
    bounds, start = {}, 0
    for i, (name, frac) in enumerate(cfg.splits.items()):
        end = len(used) if i == len(cfg.splits) - 1 else start + max(1, round(frac * len(used)))
        bounds[name] = (start, end)
        start = end
    split_of = [name for name, (a, b) in bounds.items() for _ in range(a, b)]
    pools = {name: cfg.voice_pool(training=name != HOLDOUT_SPLIT) for name in cfg.splits}
    jobs = []
    for i in range(cfg.clips):
        k = i % len(used)
        pool = pools[split_of[k]]
        # One family draws no family: the same random sequence, and so the same corpus, as before families.
        family = rng.choice(list(pool)) if len(pool) > 1 else next(iter(pool))
        jobs.append(
            ClipJob(
                index=i,
                split=split_of[k],
                sentence=used[k],
                voice=rng.choice(pool[family]),
                rate=rng.randint(*RATES),
                pitch=rng.randint(*PITCHES),
                effects=_draw_effects(cfg, i) if cfg.realism else None,
                locale=cfg.locale,
            )
        )
    in_test = {j.voice.id for j in jobs if j.split == HOLDOUT_SPLIT}
    unheard = [s for s in cfg.holdout_speakers.split(",") if s and s not in in_test]
    if unheard:
        raise ValueError(f"held-out speaker(s) {unheard} drew no test clip: ask for more --clips (or another --seed)")
    return jobs


def _draw_effects(cfg: SynthConfig, index: int) -> Effects:
    rng = np.random.default_rng([cfg.seed, index])
    return draw_effects(rng, **{k: getattr(cfg, k) for k in REALISM_KNOBS})


def clip_name(index: int, locale: str = "sv-SE") -> str:
    return f"common_voice_{locale}_{index:08d}.mp3"


def render_clip(job: ClipJob, clips_dir: Path) -> int:
    """Speak one job to ``clips_dir`` as 48 kHz mono MP3; returns its duration in ms.

    Written to a temporary name and renamed, so a killed run never leaves a truncated clip that
    a re-run would trust.
    """
    out = clips_dir / clip_name(job.index, job.locale)
    if out.exists():
        return round(sf.info(str(out)).frames / CLIP_RATE * 1000)
    speech, rate = speak(job.voice, job.sentence, job.rate, job.pitch)
    if job.effects is not None:  # at the voice's own rate (16 or 22.05 kHz): cheaper than at 48 kHz
        speech = apply_effects(speech, rate, job.effects)
    speech = soxr.resample(speech, rate, CLIP_RATE)
    noise = np.random.default_rng(job.index).standard_normal(len(speech)).astype(np.float32)
    speech = np.clip(speech * 0.9 + noise * 10 ** (NOISE_DB / 20), -1, 1)
    encoded = io.BytesIO()  # the same bytes as sf.write to a path gives (checked with libsndfile 1.2)
    sf.write(encoded, speech, CLIP_RATE, format="MP3")
    write_atomic(out, encoded.getvalue())
    return round(len(speech) / CLIP_RATE * 1000)


def _render(args: tuple[ClipJob, Path]) -> tuple[ClipJob, int]:
    job, clips_dir = args
    return job, render_clip(job, clips_dir)


def _pool(workers: int):
    """The rendering pool, its workers deaf to SIGINT: Ctrl-C reaches the whole foreground process
    group, and only the parent should answer it (it stops the pool), not each worker with a
    traceback of its own. The workers are started with SIGINT ignored, which a new Python keeps
    and which espeak-ng, started by them, inherits; `_ignore_sigint` covers a worker the pool
    starts later. A Ctrl-C in the moment the pool starts is not seen."""
    in_main = threading.current_thread() is threading.main_thread()  # only the main thread may set a handler
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
    try:
        return get_context("spawn" if workers > 1 else "fork").Pool(workers, initializer=_ignore_sigint)
    finally:
        if in_main:
            signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def synthesize(out: str | Path, cfg: SynthConfig = SynthConfig(), workers: int | None = None) -> Path:
    """Build the corpus in `out` as a Common Voice release folder; returns `out`.

    Re-running with the same config finishes an interrupted run and skips a complete one; a
    different config in a non-empty folder is refused rather than mixed in.
    """
    if shutil.which("espeak-ng") is None:
        raise UserError("espeak-ng is not installed: run `make setup` (or apt-get install espeak-ng)")
    if "mbrola" in cfg.voices.split(",") and (missing := missing_voices(("mbrola",), cfg.language)):
        raise UserError(f"MBROLA voice(s) {', '.join(v.espeak_name for v in missing)} not installed: "
                        f"{install_mbrola(cfg.language)}; or use --voices espeak")
    out = Path(out)
    clips_dir = out / "clips"
    record = corpus_record(cfg)
    jobs = plan_corpus(cfg)  # before the folder is claimed: a plan it refuses leaves no trace
    resumed = claim_folder(out, RECORD_NAME, record, "a corpus", comparable=_compared, upgrade=_upgrade_record)
    if resumed and (out / ".completed").exists():
        print(f"{out}: corpus already complete ({cfg.clips} clips) - skipping")
        return out
    clips_dir.mkdir(parents=True, exist_ok=True)
    remove_dead_temp_files(clips_dir)  # clips a killed run was writing

    durations: dict[int, int] = {}
    workers = workers or os.cpu_count() or 1
    try:
        with _pool(workers) as pool:
            it = pool.imap_unordered(_render, [(j, clips_dir) for j in jobs], chunksize=16)
            for job, ms in tqdm(it, total=len(jobs), desc="synth", unit="clip"):
                durations[job.index] = ms
    except KeyboardInterrupt:
        # Leaving the block terminated the workers (and waited for them): a clip they were writing
        # is a temporary file, never under its final name. Remove those, keep the finished clips.
        remove_dead_temp_files(clips_dir)
        raise

    rows = {name: [] for name in cfg.splits}
    for job in jobs:
        rows[job.split].append(_tsv_row(job))
    for name, split_rows in rows.items():
        _write_tsv(out / f"{name}.tsv", split_rows)
    _write_tsv(out / "validated.tsv", [r for name in cfg.splits for r in rows[name]])
    _write_lines(out / "clip_durations.tsv", ["clip\tduration[ms]"] + [f"{clip_name(j.index, j.locale)}\t{durations[j.index]}" for j in jobs])
    write_atomic(out / "README.md", _corpus_readme(cfg, record))
    write_atomic(out / ".completed", b"")  # last, after everything above is on disk
    return out


def _corpus_readme(cfg: SynthConfig, record: dict) -> str:
    if cfg.language != "sv":
        return _other_language_readme(cfg, record)
    if "mbrola" not in cfg.voices.split(","):
        engine = "espeak-ng"
    else:  # the voice licence travels with the clips (data/README.md)
        engine = ("espeak-ng and MBROLA's Swedish voices sw1/sw2 (Lund University: free to use with MBROLA and to copy\n"
                  "without charge, not for sale in a product without Lund University's permission; a test and demo corpus)")
    return (f"Synthetic Swedish speech corpus made by whisper-sv synth with {engine} from CC0 Common Voice\n"
            f"sentences (data/sv_sentences.txt). Config: {json.dumps(record)}\n")


# What a corpus's README says of MBROLA's voices of a language (data/README.md has the full terms).
MBROLA_TERMS = {
    "en": "free to use with MBROLA and to copy without charge; us1-us3 not to be sold, or built into a product\n"
          "that is sold, without their owners' permission (data/README.md); a test and demo corpus",
}


def _other_language_readme(cfg: SynthConfig, record: dict) -> str:
    """The README of a corpus in another language than Swedish (the Swedish one's text is kept as it was)."""
    name = language_name(cfg.language)
    lines = [f"Synthetic {name} speech corpus made by whisper-sv synth from the sentences in {record['sentences']},"]
    if "mbrola" in cfg.voices.split(","):
        lines += [f"spoken by espeak-ng and MBROLA's {name} voices {'/'.join(MBROLA_DATABASES[cfg.language])}. Those voices' terms:",
                  MBROLA_TERMS.get(cfg.language, "see their Debian package's copyright file") + "."]
    else:
        lines += ["spoken by espeak-ng."]
    return "\n".join(lines) + f"\nConfig: {json.dumps(record)}\n"


def _tsv_row(job: ClipJob) -> list[str]:
    described = f"espeak-ng {job.voice.espeak_name} rate {job.rate} pitch {job.pitch}"
    values = {
        "client_id": job.voice.client_id,  # one hash per speaker, as Common Voice's; voices.py reads it back as the voice id
        "path": clip_name(job.index, job.locale),
        "sentence_id": hashlib.sha256(job.sentence.encode()).hexdigest(),
        "sentence": job.sentence,
        "sentence_domain": "",
        "up_votes": "2",
        "down_votes": "0",
        "age": "",
        "gender": "",
        "accents": described if job.effects is None else f"{described} {job.effects.describe()}",
        "variant": "",
        "locale": job.locale,
        "segment": "",
    }
    return [values[c] for c in CV_HEADER]


def _write_tsv(path: Path, rows: list[list[str]]) -> None:
    _write_lines(path, ["\t".join(CV_HEADER)] + ["\t".join(r) for r in rows])


def _write_lines(path: Path, lines: list[str]) -> None:
    write_atomic(path, "\n".join(lines) + "\n")


def add_cli(sub) -> None:
    """Register ``whisper-sv synth``."""
    p = sub.add_parser("synth", help="build the offline synthetic corpus, Swedish unless --language says otherwise (Common Voice layout)")
    p.add_argument("--out", required=True, help="folder to write (clips/ + train/dev/test/validated.tsv)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    add_options(p, SynthConfig, title="corpus (saved as synth.json; a re-run must ask for the same)")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    try:
        print(synthesize(args.out, build(SynthConfig, options_from(args, SynthConfig)), args.workers))
    except KeyboardInterrupt:
        print(f"whisper-sv synth: interrupted; run the same command again to finish {args.out}: "
              "the clips already made are kept", file=sys.stderr)
        return 130
    return 0
