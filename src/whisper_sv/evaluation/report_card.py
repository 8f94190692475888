"""The report card: what a fine-tune changed where people use Whisper models, base and tuned side by side.

A WER on the fine-tune's own short test clips says nothing about what the model does where users
run it. The card scores the base model and the tuned one on the same inputs:

* **target** - the target language's test clips through the app's backend (CTranslate2 int8, the
  encoder window fitted to the clip): WER/CER in total, per speaker and per voice family;
* **parity** - the first of those clips through the Transformers model as well: the export must
  say what the model says (WER of each, share of identical transcripts);
* **long-form** - recordings of a minute or more stitched from test sentences with pauses
  (`longform`: exact text and sentence boundaries), decoded three ways: the app's backend (VAD
  chunks, no timestamps), faster-whisper's ``transcribe`` with its defaults on the CTranslate2
  export (30 s windows, timestamps, beam 5, temperature fallback), and Transformers'
  ``pipeline("automatic-speech-recognition", return_timestamps=True)`` (sequential 30 s windows).
  Per decoder: WER, the share of outputs with a repetition loop, whether every output's timestamps
  are valid (each segment has a start and an end, end >= start, starts never go back, everything
  inside the audio), the mean distance from each segment boundary a decoder gives to the nearest
  true sentence boundary, the same the other way round (from each true boundary to the nearest one
  given: a decoder that writes one segment per 30 s window scores well on the first and badly on
  this one), and the words written per reference word (deletions show as a share below 1);
* **non-speech** - silence, noise colours, mains hum, tones, clicks and music-like signals
  (`nonspeech`) through faster-whisper's ``transcribe`` defaults with VAD off: the share of clips
  that get text, and the mean no-speech probability of the first 30 s window;
* **other language** - another language's test clips (English by default; any corpus `synth
  --language L` makes), decoded by faster-whisper's defaults with that language forced: WER.

Written to the ``out`` folder: ``report_card.json`` (both models' figures and the checks against
the targets), ``report_card.csv`` (one row a figure: section, metric, base, tuned, tuned/base),
``report_card.png`` and ``report_card.md`` (the section the model card gets). A model's figures are
kept in ``out/<model>.json`` and reused while the card's settings and the model are the same, so the
base is scored once.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm.auto import tqdm

from ..audio.io import CHUNK_LENGTH, SAMPLE_RATE
from ..audio.longform import Recording, long_recordings
from ..audio.nonspeech import nonspeech_set
from ..common.errors import UserError
from ..common.fileio import write_atomic, write_json
from ..common.metrics import normalize_text, wer_report
from ..common.options import add_options, build, option, options_from
from ..models.decoding import MAX_COMPRESSION_RATIO, compression_ratio, cut_repetitions
from ..models.specs import DEFAULT_LANGUAGE, PACKAGED_BASE, whisper_language

TIMESTAMP_TOLERANCE_S = 0.05  # a segment may end this far past the audio (timestamps are 20 ms steps)
CARD_NAME = "report_card"
CARD_HEADING = "## Report card: what fine-tuning changed outside the test split"


@dataclass(frozen=True)
class ReportCardConfig:
    """What the card scores and on what; the figures of a model are reused while this is unchanged."""

    model: str = option("", "the tuned model: a run folder, its final/, a Hub id or a folder")
    base: str = option(PACKAGED_BASE, "the model it was tuned from")
    data: str = option("corpus/sv-synth", "the target language's corpus (cv:PATH or a Common Voice folder)")
    split: str = option("test", "its split the card decodes (test clips and the long-form recordings)")
    language: str = option(DEFAULT_LANGUAGE, "the target language (sv, nb, ...), forced in every decode of it")
    clips: int = option(100, "target-language clips through the app's backend")
    parity_clips: int = option(16, "of those, how many also go through Transformers (export parity)")
    longform: int = option(3, "long-form recordings")
    longform_s: float = option(60.0, "each at least this long, seconds")
    nonspeech_s: float = option(10.0, "length of each non-speech clip, seconds")
    other_data: str | None = option("corpus/en-synth", (
        "another language's corpus; null (or missing) skips the section"
    ))
    other_language: str = option("en", "that corpus's language")
    other_clips: int = option(40, "its test clips decoded")
    window_s: float = option(15.0, "the app's encoder window (min_window_s) for the target section")
    seed: int = option(0, "which pauses the long-form recordings get")
    out: str = option("report_card", "folder for the card's files")

    def __post_init__(self):
        for name in ("clips", "longform", "other_clips"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: use 1 or more")
        if not 0 <= self.parity_clips <= self.clips:
            raise ValueError(f"parity_clips={self.parity_clips}: use 0 to clips ({self.clips})")
        if self.longform_s < 30 or self.nonspeech_s <= 0:
            raise ValueError("longform_s must be at least 30 (one Whisper window) and nonspeech_s positive")

    def scoring_key(self) -> dict[str, Any]:
        """What decides a model's figures (not where they are written nor which other model is scored)."""
        return {k: v for k, v in asdict(self).items() if k not in ("model", "base", "out")}


# Targets a fine-tune must meet to "break nothing" (tuned against base on the same inputs).
TARGETS = {
    "target_wer_ratio": 0.5,  # tuned WER on the target language's test clips, at most this x the base's
    "longform_faster_whisper_ratio": 0.75,  # long-form WER through faster-whisper's defaults
    "other_language_ratio": 1.15,  # the other language's WER
    "nonspeech_extra_clips": 1,  # clips with text, at most this many more than the base
    "boundary_error_s": 0.5,  # mean segment-boundary error, seconds (each timestamped decoder)
}


# ---------------------------------------------------------------------------------------------
# Inputs


def _stream(spec: str, split: str) -> Iterator[tuple[str, np.ndarray, str, str]]:
    """``(id, audio, sentence, speaker)`` of the split's usable clips, decoded as they are read."""
    from ..data.sources import iter_clips

    for clip in iter_clips(spec, split, max_seconds=CHUNK_LENGTH):
        if clip.error is None and clip.sentence.strip():
            yield clip.id, clip.audio, clip.sentence, clip.speaker


def _clips(spec: str, split: str, n: int) -> list[tuple[str, np.ndarray, str, str]]:
    return list(itertools.islice(_stream(spec, split), n))


def _source(spec: str) -> str:
    return spec if spec.startswith(("cv:", "hf:")) else f"cv:{spec}"


def has_corpus(spec: str | None, split: str) -> bool:
    """Whether `spec` names a Common Voice-layout folder with `split` (an hf: spec is taken on trust)."""
    if not spec:
        return False
    if spec.startswith("hf:"):
        return True
    folder = Path(spec[3:] if spec.startswith("cv:") else spec)
    return (folder / f"{split}.tsv").is_file() and (folder / "clips").is_dir()


# ---------------------------------------------------------------------------------------------
# Figures


LOOP_WORDS = 8  # a repeated word group whose repeats add this many words is a loop, not emphasis ("ja ja ja")


def has_loop(text: str) -> bool:
    """A repetition loop: text that compresses like one (zlib ratio over 2.4, openai/whisper's
    threshold), or whose word groups said 3+ times in a row add `LOOP_WORDS` or more repeated words."""
    if not text.strip():
        return False
    return compression_ratio(text) > MAX_COMPRESSION_RATIO or len(text.split()) - len(cut_repetitions(text, 0.0).split()) >= LOOP_WORDS


def timestamp_figures(segments: list[tuple[float | None, float | None]], seconds: float, truth: list[float]) -> dict[str, Any]:
    """``valid`` (every segment has start <= end, starts never go back, all inside the audio),
    ``boundary_error_s`` (mean distance of each start and end given to the nearest of `truth`) and
    ``boundary_miss_s`` (mean distance of each of `truth` to the nearest start or end given: large
    when a decoder gives few boundaries, e.g. one segment per 30 s window, which the first misses)."""
    valid = bool(segments)
    previous = 0.0
    given = []
    for start, end in segments:
        if start is None or end is None or not (0 <= start <= end <= seconds + TIMESTAMP_TOLERANCE_S) or start < previous - 1e-6:
            valid = False
        if start is not None:
            previous = max(previous, start)
        given += [t for t in (start, end) if t is not None]
    distances = [min(abs(t - b) for b in truth) for t in given] if truth else []
    misses = [min(abs(b - t) for t in given) for b in truth] if given else []
    return {"valid": valid, "boundary_error_s": float(np.mean(distances)) if distances else None,
            "boundary_miss_s": float(np.mean(misses)) if misses else None}


def _wer(refs: list[str], hyps: list[str]) -> dict[str, Any]:
    report = wer_report(refs, hyps)
    return {"wer": report["wer"], "cer": report["cer"], "n": report["n"]}


# ---------------------------------------------------------------------------------------------
# One model


class ModelUnderTest:
    """A model spec with the two forms the card decodes: its CTranslate2 export and its Transformers model."""

    def __init__(self, spec: str, out: Path):
        from ..serving.inference import _transformers_spec, ct2_dir_for

        self.spec = spec
        self.hf_spec = _transformers_spec(spec)
        self.weights = _weights_stamp(self.hf_spec)
        ct2 = ct2_dir_for(spec)
        if ct2 is None:
            from ..serving.export import export_ct2

            ct2 = out / "ct2" / _slug(spec)
            stamp = ct2 / "whisper_sv_card_source.json"
            if not (ct2 / "model.bin").is_file() or not stamp.is_file() or stamp.read_text() != self.weights:
                print(f"report card: exporting {spec} to CTranslate2 int8 -> {ct2}", flush=True)
                export_ct2(self.hf_spec, ct2, quantization="int8", force=True)
                write_atomic(stamp, self.weights)
        self.ct2_dir = Path(ct2)
        self._whisper = self._hf = None
        self._backends: dict[tuple[str, float], Any] = {}

    def fingerprint(self) -> str:
        """Changes when the weights change: the export's model.bin and the Transformers weights (size, mtime)."""
        st = (self.ct2_dir / "model.bin").stat()
        return f"{self.ct2_dir.resolve()}:{st.st_size}:{st.st_mtime_ns}|{self.weights}"

    def backend(self, language: str, window_s: float):
        """The app's backend on the export (loaded once; the target and long-form sections share it)."""
        if (language, window_s) not in self._backends:
            from ..serving.inference import FasterWhisperBackend, InferenceConfig

            self._backends[language, window_s] = FasterWhisperBackend(
                self.ct2_dir, options=InferenceConfig(min_window_s=window_s), label=self.spec, language=language)
        return self._backends[language, window_s]

    def whisper(self):
        """faster-whisper's `WhisperModel` on the export, as a user loads it (int8 on a CPU)."""
        if self._whisper is None:
            import logging

            from faster_whisper import WhisperModel

            # It logs "Processing audio with duration ..." at INFO for every call: one line a clip.
            logging.getLogger("faster_whisper").setLevel(logging.WARNING)

            from ..serving.inference import _cuda_available

            device = "cuda" if _cuda_available() else "cpu"
            self._whisper = WhisperModel(str(self.ct2_dir), device=device,
                                         compute_type="float16" if device == "cuda" else "int8", local_files_only=True)
        return self._whisper

    def transformers(self):
        if self._hf is None:
            from ..models.specs import load_model

            self._hf = load_model(self.hf_spec, device="cpu")
        return self._hf


def _weights_stamp(hf_spec: str) -> str:
    """Size and mtime of a local model folder's weight files; the spec itself for a Hub or packaged model."""
    folder = Path(hf_spec)
    if not folder.is_dir():
        return hf_spec
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    return ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def _slug(spec: str) -> str:
    name = "-".join(p for p in Path(spec.replace(":", "-")).parts[-2:] if p not in ("/", ""))
    return f"{name}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"


def score_target(model: ModelUnderTest, clips, cfg: ReportCardConfig) -> tuple[dict, list[dict]]:
    """The app's backend on the target-language clips; per-utterance rows for the CSV."""
    from .evaluate import score

    backend = model.backend(whisper_language(cfg.language), cfg.window_s)
    rows = []
    for start in tqdm(range(0, len(clips), backend.batch_size), desc="card: target clips", unit="batch", leave=False):
        batch = clips[start : start + backend.batch_size]
        for (clip_id, _, ref, speaker), hyp in zip(batch, backend.decode([a for _, a, _, _ in batch])):
            rows.append({"id": clip_id, "speaker": speaker, "reference": ref, "hypothesis": hyp})
    report = score(rows)
    return {k: report[k] for k in ("wer", "wer_ortho", "cer", "n", "speakers", "families")}, rows


def score_parity(model: ModelUnderTest, clips, target_rows: list[dict], cfg: ReportCardConfig) -> dict:
    """The Transformers model on the first `parity_clips` clips against the export's transcripts."""
    from ..models.decoding import transcribe_arrays
    from ..models.specs import force_language

    if not cfg.parity_clips:
        return {}
    net, processor = model.transformers()
    force_language(net, cfg.language)
    subset = clips[: cfg.parity_clips]
    hf = transcribe_arrays(net, processor, [a for _, a, _, _ in subset])
    ct2 = [r["hypothesis"] for r in target_rows[: len(subset)]]
    refs = [ref for _, _, ref, _ in subset]
    same = sum(normalize_text(a) == normalize_text(b) for a, b in zip(hf, ct2))
    return {"n": len(subset), "wer_transformers": _wer(refs, hf)["wer"], "wer_ct2_int8": _wer(refs, ct2)["wer"],
            "identical_share": same / len(subset)}


def score_longform(model: ModelUnderTest, recordings: list[Recording], cfg: ReportCardConfig) -> dict:
    """Each recording through the three decoders; WER, loops and timestamps per decoder."""
    from transformers import pipeline

    backend = model.backend(whisper_language(cfg.language), cfg.window_s)
    whisper = model.whisper()
    net, processor = model.transformers()
    asr = pipeline("automatic-speech-recognition", model=net, tokenizer=processor.tokenizer,
                   feature_extractor=processor.feature_extractor, device="cpu")
    outputs: dict[str, list[dict]] = {"app": [], "faster_whisper": [], "pipeline": []}
    for rec in tqdm(recordings, desc="card: long-form", unit="rec", leave=False):
        outputs["app"].append({"text": backend.transcribe(rec.audio), "segments": None})
        segments, _ = whisper.transcribe(rec.audio, language=whisper_language(cfg.language))
        segments = list(segments)
        outputs["faster_whisper"].append({"text": " ".join(s.text.strip() for s in segments),
                                          "segments": [(s.start, s.end) for s in segments]})
        result = asr({"raw": rec.audio, "sampling_rate": SAMPLE_RATE}, return_timestamps=True,
                     generate_kwargs={"language": whisper_language(cfg.language), "task": "transcribe"})
        outputs["pipeline"].append({"text": result["text"].strip(),
                                    "segments": [tuple(c["timestamp"]) for c in result.get("chunks", [])]})
    from ..serving.inference import NO_SPEECH

    figures = {}
    refs = [r.text for r in recordings]
    for name, outs in outputs.items():
        hyps = ["" if o["text"] == NO_SPEECH else o["text"] for o in outs]
        entry = {**_wer(refs, hyps), "loop_share": sum(map(has_loop, hyps)) / len(hyps),
                 "words": sum(len(normalize_text(h).split()) for h in hyps),
                 "reference_words": sum(len(normalize_text(r).split()) for r in refs)}
        entry["words_share"] = entry["words"] / entry["reference_words"] if entry["reference_words"] else None
        if outs[0]["segments"] is not None:
            stamps = [timestamp_figures(o["segments"], r.seconds, r.boundaries()) for o, r in zip(outs, recordings)]
            entry["timestamps_valid_share"] = sum(s["valid"] for s in stamps) / len(stamps)
            for key in ("boundary_error_s", "boundary_miss_s"):
                values = [s[key] for s in stamps if s[key] is not None]
                entry[key] = float(np.mean(values)) if values else None
        entry["outputs"] = outs
        figures[name] = entry
    figures["recordings"] = len(recordings)
    figures["seconds"] = round(sum(r.seconds for r in recordings), 1)
    return figures


def score_nonspeech(model: ModelUnderTest, cfg: ReportCardConfig) -> dict:
    """Non-speech clips through faster-whisper's defaults (VAD off) and the first window's no-speech probability."""
    import ctranslate2

    from ..audio.logmel import log_mel, pad_features

    whisper = model.whisper()
    tokenizer = whisper.hf_tokenizer
    prompt = [tokenizer.token_to_id(t) for t in ("<|startoftranscript|>", f"<|{whisper_language(cfg.language)}|>", "<|transcribe|>", "<|notimestamps|>")]
    clips = nonspeech_set(cfg.nonspeech_s, seed=cfg.seed)
    per_clip = {}
    for kind, audio in tqdm(clips, desc="card: non-speech", unit="clip", leave=False):
        segments, _ = whisper.transcribe(audio, language=whisper_language(cfg.language), vad_filter=False)
        text = " ".join(s.text.strip() for s in segments).strip()
        features = pad_features(*log_mel(audio, whisper.model.n_mels))[None]
        encoded = whisper.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)))
        result = whisper.model.generate(encoded, [prompt], max_length=4, return_no_speech_prob=True)[0]
        per_clip[kind] = {"text": text[:200], "no_speech_prob": round(float(result.no_speech_prob), 4)}
    with_text = [k for k, v in per_clip.items() if normalize_text(v["text"])]
    return {"clips": len(per_clip), "with_text": len(with_text), "with_text_share": len(with_text) / len(per_clip),
            "no_speech_prob_mean": float(np.mean([v["no_speech_prob"] for v in per_clip.values()])),
            "per_clip": per_clip}


def score_other_language(model: ModelUnderTest, clips, cfg: ReportCardConfig) -> dict:
    """The other language's clips through faster-whisper's defaults with that language forced."""
    whisper = model.whisper()
    hyps = []
    for _, audio, _, _ in tqdm(clips, desc=f"card: {cfg.other_language} clips", unit="clip", leave=False):
        segments, _ = whisper.transcribe(audio, language=whisper_language(cfg.other_language))
        hyps.append(" ".join(s.text.strip() for s in segments))
    return {**_wer([ref for _, _, ref, _ in clips], hyps), "language": cfg.other_language,
            "examples": [{"reference": c[2], "hypothesis": h} for c, h in zip(clips[:3], hyps[:3])]}


def score_model(spec: str, cfg: ReportCardConfig, inputs: dict) -> dict:
    """Every section for one model; reused from ``out/<model>.json`` while nothing that decides it changed."""
    out = Path(cfg.out)
    model = ModelUnderTest(spec, out)
    key = {"model": spec, "fingerprint": model.fingerprint(), **cfg.scoring_key(),
           "other_data": cfg.other_data if inputs["other"] else None}
    cached = out / f"{_slug(spec)}.json"
    if cached.is_file():
        try:
            found = json.loads(cached.read_text(encoding="utf-8"))
            if found.get("key") == key:
                print(f"report card: {spec}: figures from {cached} (same model and settings)")
                return found
        except ValueError:
            pass
    print(f"report card: scoring {spec}", flush=True)
    seconds: dict[str, float] = {}

    def timed(name: str, fn, *args):
        t0 = time.perf_counter()
        result = fn(*args)
        seconds[name] = round(time.perf_counter() - t0, 1)
        return result

    target, rows = timed("target", score_target, model, inputs["clips"], cfg)
    figures = {"key": key, "model": spec, "target": target,
               "parity": timed("parity", score_parity, model, inputs["clips"], rows, cfg),
               "longform": timed("longform", score_longform, model, inputs["recordings"], cfg),
               "nonspeech": timed("nonspeech", score_nonspeech, model, cfg)}
    if inputs["other"]:
        figures["other_language"] = timed("other_language", score_other_language, model, inputs["other"], cfg)
    figures["seconds"] = seconds
    figures["utterances"] = rows
    write_json(cached, figures, ensure_ascii=False)
    return figures


# ---------------------------------------------------------------------------------------------
# The card


def build_inputs(cfg: ReportCardConfig) -> dict:
    """The clips and recordings both models decode (the same for both)."""
    data = _source(cfg.data)
    if not has_corpus(data, cfg.split):
        raise UserError(f"{cfg.data}: no {cfg.split}.tsv with clips/ there; make the corpus with "
                        "`whisper-sv synth --out DIR` or pass --data cv:PATH")
    stream = _stream(data, cfg.split)
    clips = list(itertools.islice(stream, cfg.clips))
    # The recordings start from the same first clips; each clip is decoded once, and only as many
    # as the recordings need.
    recordings = long_recordings(itertools.chain(clips, stream), cfg.longform, cfg.longform_s, cfg.seed)
    if not recordings:
        raise UserError(f"{cfg.data}:{cfg.split} holds under {cfg.longform_s:g} s of speech: too little for one "
                        "long-form recording; make a bigger corpus or lower --longform-s")
    other = []
    if has_corpus(cfg.other_data and _source(cfg.other_data), cfg.split):
        other = _clips(_source(cfg.other_data), cfg.split, cfg.other_clips)
    elif cfg.other_data:
        print(f"report card: no {cfg.other_language} corpus at {cfg.other_data} - that section is skipped "
              f"(make it with `whisper-sv synth --language {cfg.other_language} --out {cfg.other_data}`)")
    return {"clips": clips, "recordings": recordings, "other": other}


def flat_rows(base: dict, tuned: dict) -> list[dict]:
    """One row a figure: section, metric, base, tuned, tuned/base."""
    def get(d, path):
        for p in path:
            d = d.get(p) if isinstance(d, dict) else None
        return d

    metrics = [("target", ("target", "wer")), ("target", ("target", "cer"))]
    metrics += [(f"target {fam}", ("target", "families", fam, "wer")) for fam in sorted(get(tuned, ("target", "families")) or {})]
    metrics += [("parity", ("parity", k)) for k in ("wer_transformers", "wer_ct2_int8", "identical_share")]
    for decoder in ("app", "faster_whisper", "pipeline"):
        for k in ("wer", "words_share", "loop_share", "timestamps_valid_share", "boundary_error_s", "boundary_miss_s"):
            metrics.append((f"long-form {decoder}", ("longform", decoder, k)))
    metrics += [("non-speech", ("nonspeech", k)) for k in ("with_text", "with_text_share", "no_speech_prob_mean")]
    metrics += [("other language", ("other_language", "wer"))]
    rows = []
    for section, path in metrics:
        b, t = get(base, path), get(tuned, path)
        if b is None and t is None:
            continue
        ratio = round(t / b, 3) if isinstance(b, (int, float)) and isinstance(t, (int, float)) and b else None
        rows.append({"section": section, "metric": path[-1], "base": b, "tuned": t, "ratio": ratio})
    return rows


def checks(base: dict, tuned: dict) -> list[dict]:
    """Each target of `TARGETS` with the figure and whether it is met (None: not measured)."""
    def ratio(path):
        b, t = base, tuned
        for p in path:
            b, t = (b or {}).get(p), (t or {}).get(p)
        return (t / b) if b else None

    out = [
        {"check": "target-language WER, tuned/base", "value": ratio(("target", "wer")), "target": f"<= {TARGETS['target_wer_ratio']}",
         "met": None},
        {"check": "long-form WER through faster-whisper's defaults, tuned/base", "value": ratio(("longform", "faster_whisper", "wer")),
         "target": f"<= {TARGETS['longform_faster_whisper_ratio']}", "met": None},
        {"check": "other-language WER, tuned/base", "value": ratio(("other_language", "wer")),
         "target": f"<= {TARGETS['other_language_ratio']}", "met": None},
    ]
    for row, key in zip(out, ("target_wer_ratio", "longform_faster_whisper_ratio", "other_language_ratio")):
        row["met"] = None if row["value"] is None else row["value"] <= TARGETS[key]
    extra = tuned["nonspeech"]["with_text"] - base["nonspeech"]["with_text"]
    out.append({"check": "non-speech clips with text, tuned minus base", "value": extra,
                "target": f"<= {TARGETS['nonspeech_extra_clips']}", "met": extra <= TARGETS["nonspeech_extra_clips"]})
    for decoder in ("faster_whisper", "pipeline"):
        lf = tuned["longform"][decoder]
        out.append({"check": f"long-form timestamps valid ({decoder}, tuned)", "value": lf["timestamps_valid_share"],
                    "target": "== 1", "met": lf["timestamps_valid_share"] == 1})
        err = lf["boundary_error_s"]
        out.append({"check": f"mean boundary error, s ({decoder}, tuned)", "value": err,
                    "target": f"<= {TARGETS['boundary_error_s']}", "met": None if err is None else err <= TARGETS["boundary_error_s"]})
    return out


def score_one(spec: str, cfg: ReportCardConfig) -> dict:
    """One model's figures on the card's inputs (from ``out/<model>.json`` when already scored)."""
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    return score_model(spec, cfg, build_inputs(cfg))


def saved_figures(spec: str, cfg: ReportCardConfig) -> dict:
    """The figures `score_model` wrote for `spec` in the card's folder (after `report_card` or `score_one`)."""
    return json.loads((Path(cfg.out) / f"{_slug(spec)}.json").read_text(encoding="utf-8"))


def target_report(figures: dict) -> dict:
    """A model's target-language figures shaped as `evaluate`'s report (the demo's table reads them),
    with its per-utterance rows."""
    return {**figures["target"], "model": figures["model"], "window_s": figures["key"]["window_s"],
            "utterances": figures["utterances"]}


def write_card_section(final: Path, card: dict) -> Path | None:
    """Put the card into the model card (``final/README.md``): its section (replacing an earlier
    one) and, in the model-index metadata, the tuned model's WER where users decode it (long-form
    through faster-whisper's defaults and the pipeline, and the other language)."""
    readme = Path(final) / "README.md"
    if not readme.is_file():
        return None
    from huggingface_hub import EvalResult, ModelCard

    model_card = ModelCard.load(readme)
    data, cfg = model_card.data, card["config"]
    kept = [r for r in (data.eval_results or []) if not (r.dataset_type or "").startswith("whisper-sv-report-card")]
    figures = [("long-form-faster-whisper", f"long-form {cfg['language']} (stitched test sentences), faster-whisper defaults",
                card["tuned"]["longform"]["faster_whisper"]["wer"]),
               ("long-form-pipeline", f"long-form {cfg['language']} (stitched test sentences), transformers pipeline",
                card["tuned"]["longform"]["pipeline"]["wer"])]
    if "other_language" in card["tuned"]:
        figures.append((f"other-language-{cfg['other_language']}", f"{cfg['other_language']} test clips (language kept)",
                        card["tuned"]["other_language"]["wer"]))
    for kind, name, wer in figures:
        kept.append(EvalResult(task_type="automatic-speech-recognition", task_name="Speech Recognition",
                               dataset_type=f"whisper-sv-report-card/{kind}", dataset_name=name,
                               metric_type="wer", metric_name="WER", metric_value=round(100 * float(wer), 2)))
    data.eval_results = kept
    if data.model_name is None:
        data.model_name = Path(final).parent.name
    body = model_card.text.split(CARD_HEADING, 1)[0].rstrip() + "\n\n" + markdown(card)
    return write_atomic(readme, f"---\n{data.to_yaml()}\n---\n{body}")


def report_card(cfg: ReportCardConfig) -> dict:
    """Score the base and the tuned model; write the card's JSON, CSV, PNG and Markdown into `cfg.out`."""
    if not cfg.model:
        raise UserError("report card: pass --model (the tuned model: a run folder, its final/ or a Hub id)")
    from ..models.specs import check_model_spec

    for spec in (cfg.model, cfg.base):
        check_model_spec(spec)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = build_inputs(cfg)
    base = score_model(cfg.base, cfg, inputs)
    tuned = score_model(cfg.model, cfg, inputs)
    def strip(figures: dict) -> dict:  # the card keeps the figures; transcripts stay in out/<model>.json
        longform = {k: ({m: x for m, x in v.items() if m != "outputs"} if isinstance(v, dict) else v)
                    for k, v in figures["longform"].items()}
        return {k: v for k, v in figures.items() if k not in ("utterances", "key")} | {"longform": longform}

    card = {"config": asdict(cfg), "base": strip(base), "tuned": strip(tuned),
            "rows": flat_rows(base, tuned), "checks": checks(base, tuned)}
    write_json(out / f"{CARD_NAME}.json", card, ensure_ascii=False)
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, ["section", "metric", "base", "tuned", "ratio"])
    writer.writeheader()
    writer.writerows(card["rows"])
    write_atomic(out / f"{CARD_NAME}.csv", table.getvalue())
    write_atomic(out / f"{CARD_NAME}.md", markdown(card))
    draw(card, out / f"{CARD_NAME}.png")
    return card


def _fmt(value: Any, metric: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if metric in ("with_text", "n") or (isinstance(value, int) and not isinstance(value, bool)):
        return str(value)
    if metric.endswith("_s"):
        return f"{value:.2f} s"
    return f"{100 * value:.1f} %"


def format_rows(rows: list[dict]) -> str:
    """The card as a plain-text table."""
    lines = [f"{'section':<26}{'metric':<24}{'base':>10}{'tuned':>10}{'tuned/base':>12}"]
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"{r['section']:<26}{r['metric']:<24}{_fmt(r['base'], r['metric']):>10}{_fmt(r['tuned'], r['metric']):>10}{ratio:>12}")
    return "\n".join(lines)


def format_checks(rows: list[dict]) -> str:
    lines = []
    for c in rows:
        mark = {True: "met", False: "MISSED", None: "not measured"}[c["met"]]
        value = "-" if c["value"] is None else f"{c['value']:.3g}"
        lines.append(f"  {mark:<13}{c['check']}: {value} (target {c['target']})")
    return "\n".join(lines)


def markdown(card: dict) -> str:
    """The model card's section: the table, the checks and how the inputs were made."""
    cfg = card["config"]
    lines = [CARD_HEADING, "",
             f"Base `{cfg['base']}` against this model on the same inputs (`whisper-sv report-card`): "
             f"{card['tuned']['target']['n']} {cfg['language']} test clips through CTranslate2 int8; "
             f"{card['tuned']['longform']['recordings']} long-form recordings ({card['tuned']['longform']['seconds']:g} s) "
             "stitched from test sentences, decoded by the app's backend, faster-whisper's `transcribe` defaults and "
             "the Transformers pipeline with timestamps; non-speech clips with VAD off"
             + (f"; {cfg['other_language']} clips with that language forced." if "other_language" in card["tuned"] else "."),
             "", "| section | metric | base | tuned | tuned/base |", "|---|---|---:|---:|---:|"]
    for r in card["rows"]:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"| {r['section']} | {r['metric']} | {_fmt(r['base'], r['metric'])} | {_fmt(r['tuned'], r['metric'])} | {ratio} |")
    lines += ["", "Checks:", "", *[f"- {line.strip()}" for line in format_checks(card["checks"]).splitlines()], ""]
    return "\n".join(lines)


SHORT = {"boundary_error_s": "given to true", "boundary_miss_s": "true to given", "with_text_share": "with text",
         "no_speech_prob_mean": "no-speech prob."}  # tick labels that fit under a bar


def draw(card: dict, out: Path) -> Path:
    """Base against tuned, one panel a section (WERs and shares in %, boundary errors in s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("target language WER", [r for r in card["rows"] if r["section"].startswith("target") and r["metric"] == "wer"]),
        ("long-form WER", [r for r in card["rows"] if r["section"].startswith("long-form") and r["metric"] == "wer"]),
        ("long-form boundaries: given to true, true to given (s)",
         [r for r in card["rows"] if r["metric"] in ("boundary_error_s", "boundary_miss_s")]),
        ("non-speech / other language", [r for r in card["rows"] if (r["section"], r["metric"]) in
                                         (("non-speech", "with_text_share"), ("other language", "wer"), ("non-speech", "no_speech_prob_mean"))]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.2))
    for ax, (title, rows) in zip(axes, panels):
        seconds = title.endswith("(s)")
        scale = 1 if seconds else 100
        x = np.arange(len(rows))
        for offset, key, colour in ((-0.2, "base", "tab:gray"), (0.2, "tuned", "tab:green")):
            values = [scale * (r[key] if isinstance(r[key], (int, float)) else math.nan) for r in rows]
            bars = ax.bar(x + offset, values, 0.38, label=key, color=colour)
            ax.bar_label(bars, fmt="%.2f" if seconds else "%.0f", fontsize=7)
        ax.set_xticks(x, [f"{r['section'].replace('long-form ', '').replace('target ', '')}\n{SHORT.get(r['metric'], r['metric'])}"
                          for r in rows], fontsize=6)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("s" if seconds else "%")
    axes[0].legend(frameon=False, fontsize=8)
    fig.suptitle(f"report card: {card['config']['base']} vs {card['config']['model']}", fontsize=10)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, dpi=100, format="png")
    plt.close(fig)
    return write_atomic(out, image.getvalue())


def print_card(card: dict) -> None:
    print(format_rows(card["rows"]))
    print("checks:\n" + format_checks(card["checks"]))


# ---------------------------------------------------------------------------------------------
# CLI


def add_cli(sub) -> None:
    """Register ``whisper-sv report-card``."""
    p = sub.add_parser("report-card", help="base against tuned where users run Whisper: long-form, timestamps, "
                                           "non-speech, another language, export parity")
    add_options(p, ReportCardConfig)
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    card = report_card(build(ReportCardConfig, options_from(args, ReportCardConfig)))
    print_card(card)
    print(f"written: {Path(card['config']['out']) / CARD_NAME}.{{json,csv,png,md}}")
    return 0

