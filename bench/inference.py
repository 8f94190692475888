"""Latency and real-time factor: the app's default backend against Transformers' pipeline.

One run, the same clips (5 s and 60 s of synthetic Swedish speech), the same model (the packaged
Whisper base: CTranslate2 for faster-whisper, its converted Transformers copy for the pipeline),
greedy decoding with Swedish forced on both sides. A third side, the app's backend with Whisper's
own 30 s encoder window (``min_window_s=30``), shows what the fitted window contributes. Runs are
interleaved (A, B, C, A, B, C, ...) so load from other processes on the machine hits all sides
alike; the median of the repetitions is reported. Writes bench/out/inference.json and prints the Markdown table for docs/benchmarks.md.

    flock /tmp/whisper_sv_bench.lock python bench/inference.py [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from whisper_sv.audio.io import SAMPLE_RATE, load_audio
from whisper_sv.common.metrics import wer_report
from whisper_sv.data.voices import ESPEAK_VOICES
from whisper_sv.synth.corpus import ClipJob, read_sentences, render_clip

OUT = Path(__file__).resolve().parent / "out"
LENGTHS = (5, 60)  # seconds
PAUSE_S = 0.4


def speech_of_length(seconds: float, folder: Path, seed: int = 0) -> tuple[np.ndarray, str]:
    """Whole espeak-ng sentences with short pauses, padded with a -55 dBFS noise floor to exactly
    `seconds`; returns (16 kHz float32 audio, the reference text)."""
    rng = np.random.default_rng(seed)
    sentences = read_sentences()
    floor = lambda n: (rng.standard_normal(n) * 10 ** (-55 / 20)).astype(np.float32)  # noqa: E731
    target = int(seconds * SAMPLE_RATE)
    parts, words, total = [], [], 0
    for i in rng.permutation(len(sentences)):
        job = ClipJob(int(i), "bench", sentences[i], ESPEAK_VOICES[int(i) % 4], 160, 50)  # the 4 plain voices
        render_clip(job, folder)
        clip = load_audio(folder / f"common_voice_sv-SE_{int(i):08d}.mp3")
        pause = int(PAUSE_S * SAMPLE_RATE)
        if total + len(clip) + pause > target:
            if parts:
                break
            continue  # a first sentence longer than the clip: try another
        parts += [clip, floor(pause)]
        words.append(sentences[i])
        total += len(clip) + pause
    audio = np.concatenate(parts + [floor(target - total)])
    assert len(audio) == target
    return audio, " ".join(words)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per clip and backend (after one warm-up)")
    p.add_argument("--out", type=Path, default=OUT / "inference.json")
    args = p.parse_args(argv)

    import torch
    from transformers import pipeline

    from whisper_sv.models.packaged import packaged_transformers_dir
    from whisper_sv.serving.inference import InferenceConfig, pick_backend

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    clip_dir = OUT / "inference_clips"
    clip_dir.mkdir(parents=True, exist_ok=True)
    clips = {s: speech_of_length(s, clip_dir, seed=s) for s in LENGTHS}

    t0 = time.perf_counter()
    default = pick_backend("packaged:whisper-base")  # what `whisper-sv app` serves without --model
    load_default = time.perf_counter() - t0
    full_window = pick_backend("packaged:whisper-base", options=InferenceConfig(min_window_s=30))
    t0 = time.perf_counter()
    hf = pipeline("automatic-speech-recognition", model=str(packaged_transformers_dir()), chunk_length_s=30,
                  device="cpu", dtype=torch.float32)
    load_hf = time.perf_counter() - t0
    gen = {"language": "sv", "task": "transcribe", "num_beams": 1}

    sides = {
        default.name: lambda a: default.transcribe(a),
        "transformers pipeline fp32 (chunk_length_s=30)": lambda a: hf(
            {"raw": a, "sampling_rate": SAMPLE_RATE}, generate_kwargs=gen)["text"].strip(),
        full_window.name: lambda a: full_window.transcribe(a),
    }
    import ctranslate2

    results: dict = {"machine": {"cpu": cpu_model(), "cores": threads, "python": sys.version.split()[0],
                                 "torch": torch.__version__, "ctranslate2": ctranslate2.__version__,
                                 "loadavg_before": os.getloadavg()},
                     "load_s": {"default": load_default, "pipeline": load_hf}, "clips": {}}
    for seconds, (audio, reference) in clips.items():
        times: dict[str, list[float]] = {name: [] for name in sides}
        texts: dict[str, str] = {}
        for rep in range(args.reps + 1):  # rep 0 warms up caches and thread pools, not timed
            for name, run in sides.items():
                started = time.perf_counter()
                texts[name] = run(audio)
                if rep:
                    times[name].append(time.perf_counter() - started)
        results["clips"][f"{seconds}s"] = {
            name: {"median_s": statistics.median(t), "rtf": statistics.median(t) / seconds, "times_s": t,
                   "wer": wer_report([reference], [texts[name]])["wer"], "text": texts[name]}
            for name, t in times.items()
        }
        print(f"{seconds} s clip:", {n: round(statistics.median(t), 2) for n, t in times.items()}, flush=True)
    results["machine"]["loadavg_after"] = os.getloadavg()  # other jobs on the machine slow both sides alike
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    print(markdown(results))
    return results


def markdown(results: dict) -> str:
    names = list(next(iter(results["clips"].values())))
    lines = ["| clip | backend | median latency (s) | RTF | WER |", "|---|---|---:|---:|---:|"]
    for clip, by_name in results["clips"].items():
        for name in names:
            r = by_name[name]
            lines.append(f"| {clip} | {name.split(' (')[0]} | {r['median_s']:.2f} | {r['rtf']:.3f} | {r['wer']:.2f} |")
        speedup = by_name[names[1]]["median_s"] / by_name[names[0]]["median_s"]  # pipeline / default
        lines.append(f"| {clip} | **speed-up of the default over the pipeline** | **{speedup:.1f}x** | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
