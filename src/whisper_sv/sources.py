"""Swedish speech sources behind one spec string, streamed clip by clip.

Specs:
- ``cv:PATH``: a Common Voice release folder (``clips/*.mp3`` + ``train.tsv``, ``dev.tsv``,
  ``test.tsv``, ``validated.tsv``), or the synthetic corpus, which has the same layout.
- ``hf:ID[:CONFIG]``: a Hugging Face dataset (or a local folder of Parquet files) read in
  streaming mode, with configurable audio and text columns.

A source yields `Example`s whose audio is not decoded yet (a path, bytes or a decoded dict), so a
pool of workers can decode in parallel; `iter_clips` decodes and reports bad clips instead of
crashing.
"""

from __future__ import annotations

import csv
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .audio import AudioError, load_audio

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


@dataclass
class Example:
    """One utterance before decoding: `audio` is a path, encoded bytes or an audio dict."""

    id: str
    sentence: str
    audio: Any


@dataclass
class Clip:
    """One decoded utterance: `audio` is 16 kHz mono float32, or None with `error` saying why."""

    id: str
    sentence: str
    audio: np.ndarray | None
    error: str | None = None

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
    raise ValueError(
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


def iter_clips(spec: str, split: str, *, max_seconds: float | None = None, **columns) -> Iterator[Clip]:
    """Yield decoded clips of `split`; a missing or unreadable clip comes with `error` set."""
    for ex in iter_examples(spec, split, **columns):
        try:
            audio = load_audio(ex.audio, max_seconds=max_seconds)
        except AudioError as err:
            log.warning("skipping %s: %s", ex.id, err)
            yield Clip(ex.id, ex.sentence, None, f"{err.reason}: {err}")
            continue
        yield Clip(ex.id, ex.sentence, audio)


def iter_common_voice(folder: Path, split: str) -> Iterator[Example]:
    """Yield the rows of ``{folder}/{split}.tsv`` as examples pointing at ``clips/``.

    Read with ``csv.QUOTE_NONE``: Common Voice sentences hold stray quotes that the default
    dialect would swallow across lines. Rows with the wrong number of fields are logged with
    their line number and skipped.
    """
    tsv = folder / f"{split}.tsv"
    if not tsv.is_file():
        found = sorted(p.stem for p in folder.glob("*.tsv"))
        raise FileNotFoundError(
            f"{tsv} not found: a Common Voice release folder has {', '.join(CV_SPLITS[:4])}.tsv "
            f"(found: {', '.join(found) or 'no .tsv files'}); pass --split with one of those"
        )
    csv.field_size_limit(sys.maxsize)
    with tsv.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            return
        missing = [c for c in CV_REQUIRED if c not in header]
        if missing:
            raise ValueError(
                f"{tsv}: header lacks {missing} (has {header}); a Common Voice TSV needs the "
                f"columns {list(CV_REQUIRED)}"
            )
        i_path, i_sentence = header.index("path"), header.index("sentence")
        for line_no, row in enumerate(reader, start=2):
            if len(row) != len(header):
                log.warning("%s:%d: %d fields, expected %d; row skipped", tsv, line_no, len(row), len(header))
                continue
            clip = row[i_path]
            yield Example(id=clip, sentence=row[i_sentence], audio=str(folder / "clips" / clip))


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
    import datasets

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
        yield Example(id=str(ident), sentence=str(row[text_column] or ""), audio=audio)
