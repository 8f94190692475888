"""The offline Swedish speech corpus: CC0 Common Voice sentences spoken by espeak-ng.

The output is a Common Voice release folder (48 kHz MP3 clips, TSVs with today's header), so every
stage reads it as ``cv:PATH`` exactly like the real download. Splits are by sentence, so no sentence
is in two splits, and everything is a function of the seed: the same seed gives the same files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from tqdm.auto import tqdm

from .errors import UserError
from .fileio import claim_folder, remove_dead_temp_files, sha256_file, write_atomic
from .options import add_options, build, options_from
from .sources import CV_HEADER

CHECKOUT = Path(__file__).resolve().parents[2]
BUNDLED_SENTENCES = "data/sv_sentences.txt"  # as synth.json names the copy that ships with the code
SENTENCES = CHECKOUT / BUNDLED_SENTENCES
RECORD_NAME = "synth.json"
CLIP_RATE = 48000  # Common Voice ships 48 kHz MP3
# espeak-ng's Swedish voice with variants that stay intelligible (whisper/croak do not).
VOICES = (
    "sv", "sv+m1", "sv+m2", "sv+m3", "sv+m4", "sv+m5", "sv+m6", "sv+m7",
    "sv+f1", "sv+f2", "sv+f3", "sv+f4", "sv+f5", "sv+klatt", "sv+klatt2", "sv+klatt4",
)
RATES = (130, 190)  # words per minute, drawn uniformly per clip
PITCHES = (30, 70)  # espeak's 0-99 pitch scale, drawn uniformly per clip
NOISE_DB = -55.0  # a faint noise floor, seeded per clip, so silences are not digital zero


@dataclass(frozen=True)
class SynthConfig:
    """What decides the corpus; saved as ``synth.json`` and compared on re-runs."""

    clips: int = 3000  # number of clips
    seed: int = 0  # the same seed gives the same corpus, byte for byte
    splits: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "dev": 0.1, "test": 0.1})  # fraction of the sentences per split
    # One sentence per line; a split never shares a sentence with another. The default is the copy
    # in this checkout, wherever the command runs; a corpus is compared by the file's content.
    sentences: str = BUNDLED_SENTENCES

    def __post_init__(self):
        if self.clips < len(self.splits):
            raise ValueError(f"clips={self.clips}: need at least one clip per split ({len(self.splits)})")
        if abs(sum(self.splits.values()) - 1) > 1e-6:
            raise ValueError(f"split fractions {self.splits} must add up to 1")


@dataclass(frozen=True)
class ClipJob:
    """One clip to render: which sentence, in which voice, at which rate and pitch."""

    index: int
    split: str
    sentence: str
    voice: str
    rate: int
    pitch: int


def sentences_file(sentences: str | Path) -> Path:
    """The file a config's ``sentences`` names: `BUNDLED_SENTENCES` is this checkout's copy."""
    return SENTENCES if str(sentences) == BUNDLED_SENTENCES else Path(sentences)


def corpus_record(cfg: SynthConfig) -> dict:
    """What ``synth.json`` records: the config, with the sentences file named and hashed.

    The bundled file is named relative to the checkout (``data/sv_sentences.txt``) and any other
    by its absolute path; only the sha256 is compared, so a corpus made by another checkout (or a
    moved one) from the same sentences is resumed, and one made from other sentences is refused.
    """
    path = sentences_file(cfg.sentences).resolve()
    shown = BUNDLED_SENTENCES if path == SENTENCES else str(path)
    return {**asdict(cfg), "sentences": shown, "sentences_sha256": sha256_file(path)}


def _compared(record: dict) -> dict:
    """The part of a record two runs must share: all but the sentences file's name."""
    return {k: v for k, v in record.items() if k != "sentences"}


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
    """Assign sentences to splits and voices to clips, deterministically from ``cfg.seed``.

    With more clips than sentences, sentences are spoken again by other voices, always within
    their own split.
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
    jobs = []
    for i in range(cfg.clips):
        k = i % len(used)
        jobs.append(
            ClipJob(
                index=i,
                split=split_of[k],
                sentence=used[k],
                voice=rng.choice(VOICES),
                rate=rng.randint(*RATES),
                pitch=rng.randint(*PITCHES),
            )
        )
    return jobs


def clip_name(index: int) -> str:
    return f"common_voice_sv-SE_{index:08d}.mp3"


def render_clip(job: ClipJob, clips_dir: Path) -> int:
    """Speak one job to ``clips_dir`` as 48 kHz mono MP3; returns its duration in ms.

    Written to a temporary name and renamed, so a killed run never leaves a truncated clip that
    a re-run would trust.
    """
    out = clips_dir / clip_name(job.index)
    if out.exists():
        return round(sf.info(str(out)).frames / CLIP_RATE * 1000)
    proc = subprocess.run(
        ["espeak-ng", "-v", job.voice, "-s", str(job.rate), "-p", str(job.pitch), "--stdout", job.sentence],
        capture_output=True,
        check=True,
    )
    speech, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
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


def synthesize(out: str | Path, cfg: SynthConfig = SynthConfig(), workers: int | None = None) -> Path:
    """Build the corpus in `out` as a Common Voice release folder; returns `out`.

    Re-running with the same config finishes an interrupted run and skips a complete one; a
    different config in a non-empty folder is refused rather than mixed in.
    """
    if shutil.which("espeak-ng") is None:
        raise UserError("espeak-ng is not installed: run `make setup` (or apt-get install espeak-ng)")
    out = Path(out)
    clips_dir = out / "clips"
    record = corpus_record(cfg)
    resumed = claim_folder(out, RECORD_NAME, record, "a corpus", comparable=_compared, upgrade=_upgrade_record)
    if resumed and (out / ".completed").exists():
        print(f"{out}: corpus already complete ({cfg.clips} clips) - skipping")
        return out
    clips_dir.mkdir(parents=True, exist_ok=True)
    remove_dead_temp_files(clips_dir)  # clips a killed run was writing

    jobs = plan_corpus(cfg)
    durations: dict[int, int] = {}
    workers = workers or os.cpu_count() or 1
    with get_context("spawn" if workers > 1 else "fork").Pool(workers) as pool:
        it = pool.imap_unordered(_render, [(j, clips_dir) for j in jobs], chunksize=16)
        for job, ms in tqdm(it, total=len(jobs), desc="synth", unit="clip"):
            durations[job.index] = ms

    rows = {name: [] for name in cfg.splits}
    for job in jobs:
        rows[job.split].append(_tsv_row(job))
    for name, split_rows in rows.items():
        _write_tsv(out / f"{name}.tsv", split_rows)
    _write_tsv(out / "validated.tsv", [r for name in cfg.splits for r in rows[name]])
    _write_lines(out / "clip_durations.tsv", ["clip\tduration[ms]"] + [f"{clip_name(j.index)}\t{durations[j.index]}" for j in jobs])
    write_atomic(
        out / "README.md",
        "Synthetic Swedish speech corpus made by whisper-sv synth with espeak-ng from CC0 Common Voice\n"
        f"sentences (data/sv_sentences.txt). Config: {json.dumps(record)}\n",
    )
    write_atomic(out / ".completed", b"")  # last, after everything above is on disk
    return out


def _tsv_row(job: ClipJob) -> list[str]:
    values = {
        "client_id": hashlib.sha256(job.voice.encode()).hexdigest(),
        "path": clip_name(job.index),
        "sentence_id": hashlib.sha256(job.sentence.encode()).hexdigest(),
        "sentence": job.sentence,
        "sentence_domain": "",
        "up_votes": "2",
        "down_votes": "0",
        "age": "",
        "gender": "",
        "accents": f"espeak-ng {job.voice} rate {job.rate} pitch {job.pitch}",
        "variant": "",
        "locale": "sv-SE",
        "segment": "",
    }
    return [values[c] for c in CV_HEADER]


def _write_tsv(path: Path, rows: list[list[str]]) -> None:
    _write_lines(path, ["\t".join(CV_HEADER)] + ["\t".join(r) for r in rows])


def _write_lines(path: Path, lines: list[str]) -> None:
    write_atomic(path, "\n".join(lines) + "\n")


def add_cli(sub) -> None:
    """Register ``whisper-sv synth``."""
    p = sub.add_parser("synth", help="build the offline synthetic Swedish corpus (Common Voice layout)")
    p.add_argument("--out", required=True, help="folder to write (clips/ + train/dev/test/validated.tsv)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    add_options(p, SynthConfig, title="corpus (saved as synth.json; a re-run must ask for the same)")
    p.set_defaults(func=lambda a: print(synthesize(a.out, build(SynthConfig, options_from(a, SynthConfig)), a.workers)))
