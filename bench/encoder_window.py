"""Encoder window against accuracy on CTranslate2: what the app's `min_window_s` buys and costs.

Whisper's encoder always costs a full 30 s window in Transformers, so on 2 cores a 5 s clip is about
as slow as a 30 s one. CTranslate2 accepts a shorter window. This measures, on the same synthetic
test clips (sentences never trained on), greedy decoding with Swedish forced and no timestamps,
int8; no VAD (each clip is one chunk) except on the last side:

* ``faster-whisper``: `WhisperModel.transcribe`, faster-whisper's own front end. Its log-mel pads
  short clips with zeros *after* normalising, and it always encodes 30 s.
* ``app, W s``: the app's backend (`FasterWhisperBackend.decode`): the project's `log_mel`
  (identical to WhisperFeatureExtractor: the padding frames hold the clip's floor, as in
  training), encoded in a window of the clip + 1 s, at least W s (W = 30: Whisper's own window).
* ``app default with VAD``: `FasterWhisperBackend.transcribe` with its defaults, what the app serves:
  the VAD trims each clip to its speech first.

Writes bench/out/encoder_window.json and prints the table for docs/benchmarks.md.

    flock /tmp/whisper_sv_bench.lock python bench/encoder_window.py [--model runs/cpu-demo/ct2] [--clips 300]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from itertools import islice
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out"
WINDOWS = (30, 20, 15, 10)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="CTranslate2 folder or model spec (default: the app's default)")
    p.add_argument("--data", default="cv:corpus/sv-synth", help="source spec (default: %(default)s)")
    p.add_argument("--split", default="test")
    p.add_argument("--clips", type=int, default=300, help="test clips (default: %(default)s, all of the synthetic test split)")
    p.add_argument("--out", type=Path, default=OUT / "encoder_window.json")
    args = p.parse_args(argv)

    from faster_whisper import WhisperModel

    from whisper_sv.common.metrics import wer_report
    from whisper_sv.data.sources import iter_clips
    from whisper_sv.serving.inference import NO_SPEECH, FasterWhisperBackend, InferenceConfig, ct2_dir_for, default_model_spec

    spec = args.model or default_model_spec()
    ct2 = ct2_dir_for(spec)
    if ct2 is None:
        raise SystemExit(f"{spec} has no CTranslate2 export; run `whisper-sv export` (or `make demo`) first")
    clips = [c for c in islice(iter_clips(args.data, args.split), args.clips) if c.audio is not None]
    if not clips:
        raise SystemExit(f"no clips in {args.data} ({args.split}); run `make demo` (or whisper-sv synth) first")
    threads = os.cpu_count() or 1
    model = WhisperModel(str(ct2), device="cpu", compute_type="int8", cpu_threads=threads)

    def native(audio: np.ndarray) -> str:
        segments, _ = model.transcribe(audio, language="sv", task="transcribe", beam_size=1, temperature=[0.0],
                                       without_timestamps=True, condition_on_previous_text=False, vad_filter=False)
        return " ".join(s.text.strip() for s in segments)

    def app(window_s: int):
        backend = FasterWhisperBackend(ct2, device="cpu", options=InferenceConfig(min_window_s=window_s), cpu_threads=threads)
        return lambda audio: backend.decode([audio])[0]

    served = FasterWhisperBackend(ct2, device="cpu", cpu_threads=threads)  # the app's defaults, VAD included

    def app_default(audio: np.ndarray) -> str:
        text = served.transcribe(audio)
        return "" if text == NO_SPEECH else text

    sides = {"faster-whisper": native, **{f"app, {w} s": app(w) for w in WINDOWS},
             f"app default with VAD ({InferenceConfig.min_window_s:g} s)": app_default}
    results = {"model": spec, "ct2": str(ct2), "data": args.data, "split": args.split, "clips": len(clips),
               "mean_clip_s": float(np.mean([len(c.audio) / 16000 for c in clips])), "sides": {}}
    for name, decode in sides.items():
        decode(clips[0].audio)  # warm-up
        started = time.perf_counter()
        texts = [decode(c.audio) for c in clips]
        elapsed = time.perf_counter() - started
        report = wer_report([c.sentence for c in clips], texts)
        results["sides"][name] = {"seconds": elapsed, "per_clip_s": elapsed / len(clips),
                                  "wer": report["wer"], "cer": report["cer"]}
        print(f"{name}: {elapsed / len(clips):.3f} s/clip, WER {100 * report['wer']:.1f} %", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(markdown(results))
    return results


def markdown(results: dict) -> str:
    base = results["sides"]["faster-whisper"]["per_clip_s"]
    lines = ["| decode | time per clip (s) | vs faster-whisper | WER | CER |", "|---|---:|---:|---:|---:|"]
    for name, r in results["sides"].items():
        lines.append(f"| {name} | {r['per_clip_s']:.3f} | {base / r['per_clip_s']:.1f}x | "
                     f"{100 * r['wer']:.1f} % | {100 * r['cer']:.1f} % |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
