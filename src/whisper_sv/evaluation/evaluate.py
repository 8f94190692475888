"""Score a model on a split: the JSON report and per-utterance CSV of DESIGN.md.

Data is a feature store folder (the exact inputs training saw) or a source spec (``cv:``/``hf:``),
decoded with the shared loader and turned into features by the same `log_mel` as the store, so a
figure from either path means the same thing. Generation is batched, greedy by default, with
Swedish and transcription forced. Beside the totals, the report scores each speaker and each voice
family (``espeak``, ``mbrola``, ``cv`` for Common Voice's speakers; `voices.voice_family`),
so a model that learns the synthetic voices and forgets real speech shows it.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from ..audio.io import CHUNK_LENGTH
from ..audio.logmel import log_mel, pad_features
from ..common.errors import UserError
from ..common.fileio import write_atomic, write_json
from ..common.metrics import grouped_scores, normalize_text, utterance_counts, wer_report
from ..data.feature_store import CONFIG_NAME, FeatureStore
from ..data.sources import iter_clips, open_source
from ..data.voices import voice_family
from ..models.decoding import generate_texts, token_budget, window_frames
from ..models.encoder_window import accept_short_windows, check_window_s, trained_window_s
from ..models.specs import DEFAULT_MODEL, load_model

BATCH_SIZE = 16


def _is_feature_store(data: str) -> bool:
    return (Path(data) / CONFIG_NAME).is_file()


def _store_language(data: str) -> str | None:
    """The labels' language of a feature store (its feature_config.json); None for a source."""
    return FeatureStore(data).config.language if (Path(data) / CONFIG_NAME).is_file() else None


def check_data(data: str, split: str) -> None:
    """Raise a user error naming what to fix unless `data` is a feature store or a readable source split."""
    if _is_feature_store(data):
        return
    if Path(data).is_dir() and not (Path(data) / "clips").is_dir():
        raise UserError(
            f"{data} is neither a feature store (no feature_config.json) nor a Common Voice folder (no clips/); "
            "pass a folder made by `whisper-sv features`, cv:PATH or hf:ID[:CONFIG]"
        )
    open_source(data, split)


def iter_inputs(data: str, split: str, n_mels: int, skipped: list[dict]) -> Iterator[tuple[str, str, np.ndarray, int, str]]:
    """``(id, reference, features (n_mels, 3000) float32, n_frames, speaker)`` from a store or a source spec.

    Clips that cannot be scored (unreadable, over 30 s) are appended to `skipped` with the reason.
    """
    if _is_feature_store(data):
        for row in FeatureStore(data).rows():
            compact = row.input_features.astype(np.float32)
            if compact.shape[0] != n_mels:
                raise UserError(f"{data} holds {compact.shape[0]}-mel features; the model takes {n_mels}: evaluate it on a source spec")
            yield row.clip_id, row.sentence, pad_features(compact, row.n_frames, row.pad_value), row.n_frames, row.speaker
        return
    for clip in iter_clips(data, split, max_seconds=CHUNK_LENGTH):
        if clip.error is not None:
            skipped.append({"id": clip.id, "reason": clip.error})
            continue
        compact, n_frames, pad_value = log_mel(clip.audio, n_mels)
        yield clip.id, clip.sentence, pad_features(compact, n_frames, pad_value), n_frames, clip.speaker


def evaluate(
    model: str = DEFAULT_MODEL,
    data: str = "",
    split: str = "test",
    out: str | Path | None = None,
    batch_size: int = BATCH_SIZE,
    beam_size: int = 1,
    max_samples: int | None = None,
    device: str | None = None,
    window_s: float | None = None,
    language: str | None = None,
) -> dict:
    """Transcribe `split` of `data` with `model`; returns (and writes to `out`) the report.

    Report: ``wer``, ``wer_ortho``, ``cer`` (fractions), ``n``, the edit counts behind them
    (``word_errors``, ``words``, ``char_errors``, ``chars``), ``speakers`` and ``families`` (the
    same counts, ``wer`` and ``cer`` per speaker id and per voice family; "" is a source that
    names no speaker), ``skipped``, ``model``, ``data``, ``split``, ``window_s``, ``seconds``.

    `window_s` is the encoder window, applied as the app's backend applies it (each batch is encoded
    at its longest clip + 1 s, at least `window_s`: `decoding.window_frames`); None is the window the
    model was fine-tuned on (encoder_window.py), 30 s for any other model. Beside ``out``
    (``report.json``) goes ``report.csv`` with id, speaker, reference, hypothesis and their
    normalised forms, one row per utterance.
    """
    import torch  # seconds to import: the CLI's --help and check_data do not need it

    check_data(data, split)  # before the model loads: a typo in --data fails in a second, not a minute
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    # The language forced: as given, else the feature store's labels' language, else the model's own.
    net, processor = load_model(model, device=device, language=language or _store_language(data))
    window = trained_window_s(net.config) if window_s is None else check_window_s(window_s)
    accept_short_windows(net)
    n_mels = net.config.num_mel_bins
    skipped: list[dict] = []
    rows: list[dict] = []
    batch: list[tuple[str, str, np.ndarray, int, str]] = []

    def flush():
        longest = max(b[3] for b in batch)
        frames = window_frames(longest, window)  # past a clip's frames the features are its floor: a cut is a pad
        texts = generate_texts(net, processor, np.stack([b[2][:, :frames] for b in batch]), beam_size, token_budget(longest))
        rows.extend({"id": i, "speaker": s, "reference": r, "hypothesis": h} for (i, r, _, _, s), h in zip(batch, texts))
        batch.clear()

    with tqdm(desc=f"evaluate {Path(str(data)).name or data}:{split}", unit="utt") as bar:
        for item in iter_inputs(data, split, n_mels, skipped):
            batch.append(item)
            if len(batch) == batch_size:
                flush()
                bar.update(batch_size)
            if max_samples and len(rows) + len(batch) >= max_samples:
                break
        if batch:
            bar.update(len(batch))
            flush()
    if not rows:
        raise ValueError(f"no utterances could be scored in {data}:{split} ({len(skipped)} skipped)")
    report = {
        **score(rows), "skipped": skipped, "model": model, "data": str(data), "split": split,
        "window_s": window, "seconds": round(time.perf_counter() - t0, 1),
    }
    if out is not None:
        write_report(report, rows, Path(out))
    return report


def score(rows: list[dict]) -> dict:
    """The report's figures for `rows` (id, speaker, reference, hypothesis): the totals, then per
    speaker and per voice family; the counts of the speakers (and of the families) add up to the totals."""
    references, hypotheses = [r["reference"] for r in rows], [r["hypothesis"] for r in rows]
    counts = utterance_counts(references, hypotheses)
    totals = {k: v for k, v in grouped_scores(counts, [""] * len(rows))[""].items() if k not in ("wer", "cer", "n")}
    speakers = grouped_scores(counts, [r["speaker"] for r in rows])
    return {
        **wer_report(references, hypotheses), **totals,
        "families": grouped_scores(counts, [voice_family(r["speaker"]) for r in rows]),
        "speakers": {s: {"family": voice_family(s), **figures} for s, figures in speakers.items()},
    }


def write_report(report: dict, rows: list[dict], out: Path) -> None:
    """``out`` (JSON) and ``out`` with .csv (per utterance), each written atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report, ensure_ascii=False)
    table = io.StringIO(newline="")
    w = csv.DictWriter(table, ["id", "speaker", "reference", "hypothesis", "reference_norm", "hypothesis_norm"])
    w.writeheader()
    for r in rows:
        w.writerow({**r, "reference_norm": normalize_text(r["reference"]), "hypothesis_norm": normalize_text(r["hypothesis"])})
    write_atomic(out.with_suffix(".csv"), table.getvalue())


def add_cli(sub) -> None:
    """Register ``whisper-sv evaluate``."""
    p = sub.add_parser("evaluate", help="WER / orthographic WER / CER of a model on a split")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model spec (default %(default)s)")
    p.add_argument("--data", required=True, help="feature store folder, or a source spec (cv:PATH, hf:ID[:CONFIG])")
    p.add_argument("--split", default="test", help="split of a source spec (default %(default)s)")
    p.add_argument("--out", default=None, help="report JSON path (a .csv of utterances goes beside it)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--beam-size", type=int, default=1)
    p.add_argument("--max-samples", type=int, default=None, help="score only the first N utterances")
    p.add_argument("--language", default=None,
                   help="the language forced (sv, nb, ...); default: a feature store's labels' language, else the model's own, else sv")
    p.add_argument("--window-s", type=float, default=None,
                   help="encoder window in seconds, as the app applies it (default: the one the model was fine-tuned on, else 30)")
    p.set_defaults(func=_run_cli)


def _run_cli(args) -> int:
    report = evaluate(args.model, args.data, args.split, args.out, args.batch_size, args.beam_size, args.max_samples,
                      window_s=args.window_s, language=args.language)
    # Per speaker only in the report file: a Common Voice split has thousands of them.
    shown = {k: v for k, v in report.items() if k not in ("skipped", "speakers")}
    print(json.dumps(shown | {"speakers": len(report["speakers"]), "skipped": len(report["skipped"])}, ensure_ascii=False))
    return 0
