"""Swedish speech sources behind one spec string, streamed clip by clip.

Specs:
- ``cv:PATH``: a Common Voice release folder (``clips/*.mp3`` + ``train.tsv``, ``dev.tsv``,
  ``test.tsv``, ``validated.tsv``), or the synthetic corpus, which has the same layout.
- ``hf:ID[:CONFIG]``: a Hugging Face dataset (or a local folder of Parquet files) read in
  streaming mode, with configurable audio and text columns.

A source yields `Example`s whose audio is not decoded yet (a path, bytes or a decoded dict), so a
pool of workers can decode in parallel; `decode_example` decodes one, and `iter_clips` decodes and
reports bad clips instead of crashing. Each example names its speaker where the source does (Common
Voice's ``client_id``, a Hub dataset's ``client_id`` or ``speaker_id``; the synthetic corpus's
hashes read back as voice ids such as ``mbrola-sw1``), so evaluation can score per speaker. A TSV row that cannot be read (bytes that are not UTF-8, the
wrong number of fields) is an `Example` too, carrying its reject reason and line number, so every
row of a split is accounted for: rows written + rows rejected = rows in the TSV.
"""

from __future__ import annotations

import io
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import soundfile as sf

from ..audio.io import SAMPLE_RATE, AudioError, load_audio
from ..common.errors import UserError
from .voices import speaker_from_client_id

log = logging.getLogger(__name__)

# Common Voice's TSV header as of the Mozilla Data Collective releases; readers need only
# `path` and `sentence`, so older and newer headers work as long as those two are there.
CV_HEADER = (
    "client_id path sentence_id sentence sentence_domain up_votes down_votes "
    "age gender accents variant locale segment"
).split()
CV_REQUIRED = ("path", "sentence")
CV_SPLITS = ("train", "dev", "test", "validated", "other", "invalidated")

# Text columns tried in order when a Hub dataset's is not given (CV, FLEURS, NST, generic).
HF_TEXT_COLUMNS = ("sentence", "transcription", "text", "normalized_text", "raw_transcription")
# Speaker columns tried in order (Common Voice's, then the usual name); none: the speaker is "".
SPEAKER_COLUMNS = ("client_id", "speaker_id")
# A decode this much shorter than the length the file's header declares is a truncated file: its
# transcript covers audio that is not there. MP3 priming and padding stay well under it (~50 ms).
TRUNCATION_SLACK_S = 0.2


@dataclass
class Example:
    """One utterance before decoding: `audio` is a path, encoded bytes or an audio dict.

    `reject` is ``(reason, detail)`` for a source row that could not be read (``bad_encoding``,
    ``bad_row``); such an example has no audio and is rejected, not decoded. `speaker` is the
    source's speaker id, "" where it names none.
    """

    id: str
    sentence: str
    audio: Any
    reject: tuple[str, str] | None = None
    speaker: str = ""


@dataclass
class Clip:
    """One decoded utterance: `audio` is 16 kHz mono float32, or None with `error` saying why."""

    id: str
    sentence: str
    audio: np.ndarray | None
    error: str | None = None
    speaker: str = ""

    @property
    def duration(self) -> float:
        return 0.0 if self.audio is None else len(self.audio) / 16000


def parse_source(spec: str) -> tuple[str, str, str | None]:
    """Split a source spec into (kind, target, config): ``cv:PATH`` or ``hf:ID[:CONFIG]``.

    A bare existing folder with a ``clips/`` subfolder is taken as ``cv:``.
    """
    if spec.startswith("cv:"):
        return "cv", spec[3:], None
    if spec.startswith("hf:"):
        target, _, config = spec[3:].partition(":")
        return "hf", target, config or None
    if (Path(spec) / "clips").is_dir():
        return "cv", spec, None
    raise UserError(
        f"unknown source spec {spec!r}: use cv:PATH for a Common Voice release folder "
        "(or the synthetic corpus) and hf:ID[:CONFIG] for a Hugging Face dataset"
    )


def iter_examples(
    spec: str,
    split: str,
    *,
    audio_column: str = "audio",
    text_column: str | None = None,
) -> Iterator[Example]:
    """Yield the examples of `split` from the source `spec`, in a fixed order, undecoded."""
    kind, target, config = parse_source(spec)
    if kind == "cv":
        yield from iter_common_voice(Path(target), split)
    else:
        yield from iter_hub(target, config, split, audio_column=audio_column, text_column=text_column)


def open_source(spec: str, split: str, **columns) -> Iterator[Example]:
    """`iter_examples` with the first example already read, so a bad spec fails now, not later.

    A missing folder or split, a header without ``path``/``sentence``, an unknown Hub dataset or
    column all raise here, before the caller writes anything or loads a model.
    """
    examples = iter_examples(spec, split, **columns)
    first = next(examples, None)
    if first is None:
        raise UserError(f"{spec} has no rows in split {split!r}: nothing to do")
    return itertools.chain([first], examples)


def iter_clips(spec: str, split: str, *, max_seconds: float | None = None, **columns) -> Iterator[Clip]:
    """Yield decoded clips of `split`; a missing, unreadable or truncated clip comes with `error` set."""
    for ex in iter_examples(spec, split, **columns):
        try:
            audio = decode_example(ex, max_seconds=max_seconds)
        except AudioError as err:
            log.warning("skipping %s: %s", ex.id, err)
            yield Clip(ex.id, ex.sentence, None, f"{err.reason}: {err}", ex.speaker)
            continue
        yield Clip(ex.id, ex.sentence, audio, speaker=ex.speaker)


def decode_example(ex: Example, max_seconds: float | None = None) -> np.ndarray:
    """`load_audio` for training data: 16 kHz mono float32, shape (n_samples,), or `AudioError`.

    On top of the loader's reasons: a row the source could not read raises its own reason, and a
    decode that ends early against the length the file's header declares raises ``truncated``
    (a cut-off MP3 decodes to its first 0.7 s; stored with the whole sentence, it would teach the
    model words that are not in the audio).
    """
    if ex.reject is not None:
        raise AudioError(*ex.reject)
    audio = load_audio(ex.audio, max_seconds=max_seconds)
    declared, decoded = declared_seconds(ex.audio), len(audio) / SAMPLE_RATE
    if declared is not None and declared - decoded > TRUNCATION_SLACK_S:
        raise AudioError(
            "truncated",
            f"{ex.id}: decodes to {decoded:.2f} s but its header declares {declared:.2f} s "
            "(a truncated or damaged file: the transcript would not match the audio)",
        )
    return audio


def declared_seconds(audio: Any) -> float | None:
    """The duration a file's header declares (frames / rate), or None when it declares none we can read.

    `audio` is what an `Example` carries: a path, encoded bytes, or a dict with ``path``/``bytes``
    (a decoded ``array`` declares nothing). Formats libsndfile cannot open give None.
    """
    if isinstance(audio, dict):
        if audio.get("array") is not None:
            return None
        audio = audio.get("bytes") or audio.get("path")
    if isinstance(audio, (bytes, bytearray)):
        audio = io.BytesIO(audio)
    elif not isinstance(audio, (str, Path)):
        return None
    try:
        info = sf.info(audio)
    except Exception:  # not a libsndfile format (ffmpeg decoded it), or no header to read
        return None
    if info.samplerate <= 0 or not 0 < info.frames < 1 << 62:  # libsndfile's "unknown" is SF_COUNT_MAX
        return None
    return info.frames / info.samplerate


def iter_common_voice(folder: Path, split: str) -> Iterator[Example]:
    """Yield the rows of ``{folder}/{split}.tsv`` as examples pointing at ``clips/``.

    One line is one row, split on tabs with no quoting (``csv.QUOTE_NONE``): Common Voice
    sentences hold stray quotes that the default dialect would swallow across lines. Each line is
    decoded on its own, so a byte that is not UTF-8 costs that row, not the run. A row that is not
    UTF-8 or has the wrong number of fields is yielded as a reject (``bad_encoding``, ``bad_row``)
    whose id is ``{split}.tsv:{line}``; blank lines are not rows.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder; a cv: source is a Common Voice release folder (clips/ + *.tsv)")
    tsv = folder / f"{split}.tsv"
    if not tsv.is_file():
        found = sorted(p.stem for p in folder.glob("*.tsv"))
        raise FileNotFoundError(
            f"{tsv} not found: a Common Voice release folder has {', '.join(CV_SPLITS[:4])}.tsv "
            f"(found: {', '.join(found) or 'no .tsv files'}); pass --split with one of those"
        )
    with tsv.open("rb") as f:
        first = f.readline()
        if not first.strip():
            return
        try:
            header = _tsv_fields(first.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise UserError(f"{tsv}:1: the header is not UTF-8 ({_bad_byte(first, err)})") from None
        missing = [c for c in CV_REQUIRED if c not in header]
        if missing:
            raise UserError(
                f"{tsv}: header lacks {missing} (has {header}); a Common Voice TSV needs the "
                f"columns {list(CV_REQUIRED)}"
            )
        i_path, i_sentence = header.index("path"), header.index("sentence")
        i_speaker = header.index("client_id") if "client_id" in header else None
        for line_no, raw in enumerate(f, start=2):
            where = f"{tsv.name}:{line_no}"
            try:
                row = _tsv_fields(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                yield Example(where, "", None, ("bad_encoding", f"{where}: not UTF-8 ({_bad_byte(raw, err)}); row skipped"))
                continue
            if row == [""]:
                continue
            if len(row) != len(header):
                yield Example(where, "", None, ("bad_row", f"{where}: {len(row)} fields, expected {len(header)}; row skipped"))
                continue
            clip = row[i_path]
            speaker = speaker_from_client_id(row[i_speaker]) if i_speaker is not None else ""
            yield Example(id=clip, sentence=row[i_sentence], audio=str(folder / "clips" / clip), speaker=speaker)


def _tsv_fields(line: str) -> list[str]:
    """One TSV line's fields: tabs split, nothing is quoted (Common Voice's QUOTE_NONE dialect)."""
    return line.removesuffix("\n").removesuffix("\r").split("\t")


def _bad_byte(raw: bytes, err: UnicodeDecodeError) -> str:
    return f"byte 0x{raw[err.start]:02x} at column {err.start + 1}"


def iter_hub(
    dataset_id: str,
    config: str | None,
    split: str,
    *,
    audio_column: str = "audio",
    text_column: str | None = None,
    streaming: bool = True,
) -> Iterator[Example]:
    """Stream `split` of a Hub dataset (or a local folder of Parquet/audio files).

    The audio column is cast to ``Audio(decode=False)`` so the encoded bytes arrive untouched and
    `load_audio` decodes them (faster than the default decoder, and in the worker that needs them).
    """
    import datasets  # deferred (seconds): only hf: sources need it, and this module is imported by the CLI

    ds = datasets.load_dataset(dataset_id, config, split=split, streaming=streaming)
    columns = list(ds.features) if ds.features is not None else None
    if columns is not None:
        if audio_column not in columns:
            raise ValueError(
                f"{dataset_id}: no audio column {audio_column!r} (columns: {columns}); "
                "pass --audio-column with the right one"
            )
        if text_column is None:
            text_column = next((c for c in HF_TEXT_COLUMNS if c in columns), None)
        if text_column is None or text_column not in columns:
            raise ValueError(
                f"{dataset_id}: no text column {text_column or HF_TEXT_COLUMNS!r} (columns: {columns}); "
                "pass --text-column with the one that holds the transcript"
            )
        if isinstance(ds.features[audio_column], datasets.Audio):
            ds = ds.cast_column(audio_column, datasets.Audio(decode=False))
    for n, row in enumerate(ds):
        if text_column is None:  # features unknown until the first row (some streamed sources)
            text_column = next((c for c in HF_TEXT_COLUMNS if c in row), None)
            if text_column is None or audio_column not in row:
                raise ValueError(
                    f"{dataset_id}: need audio column {audio_column!r} and a text column "
                    f"(columns: {list(row)}); pass --audio-column / --text-column"
                )
        audio = row[audio_column]
        ident = (audio.get("path") if isinstance(audio, dict) else None) or row.get("id") or f"{split}-{n:08d}"
        speaker = next((str(row[c]) for c in SPEAKER_COLUMNS if row.get(c) not in (None, "")), "")
        yield Example(id=str(ident), sentence=str(row[text_column] or ""), audio=audio, speaker=speaker_from_client_id(speaker))
