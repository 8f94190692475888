"""Feature pipeline vs the standard recipe, same clips, same machine, one run.

    python bench/features.py [--clips 2000] [--sizes 500 2000] [--workers 2] [--memory 1000 10000]

The standard recipe is the one in the Hugging Face blog "Fine-Tune Whisper For Multilingual ASR with
Transformers", as users run it today: ``Dataset.from_dict`` of paths, ``cast_column("audio",
Audio(sampling_rate=16000))`` (datasets 5 decodes with torchcodec), then ``map(prepare_dataset,
num_proc=N)`` where ``prepare_dataset`` calls ``WhisperFeatureExtractor`` (80 x 3000 float32) and
the tokenizer. Ours is ``whisper_sv.features.build.build_features`` with ``workers=N``.

Each pipeline run is a fresh child process (imports and pool start-up included) over the first n
clips of one synthetic corpus of 48 kHz MP3s; throughput is the marginal rate between two sizes,
(n2 - n1) / (t2 - t1), so start-up cost flatters neither side. Peak memory is the peak of the
summed RSS of the child and all its descendants, sampled every 50 ms with psutil. Bytes on disk:
ours = the feature store folder; theirs = ``save_to_disk`` of the mapped dataset (not timed).
Results go to bench/out/features.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"


def corpus_view(corpus: Path, n: int, folder: Path) -> Path:
    """A Common Voice folder whose ``bench.tsv`` lists the first n clips of `corpus` (repeating if n is larger)."""
    lines = (corpus / "validated.tsv").read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:]
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "clips").exists():
        (folder / "clips").symlink_to((corpus / "clips").resolve())
    chosen = [rows[i % len(rows)] for i in range(n)]
    (folder / "bench.tsv").write_text("\n".join([header, *chosen]) + "\n", encoding="utf-8")
    return folder


def run_child(args: list[str]) -> dict:
    """Run this script in `--run` mode; return its JSON plus wall time and peak tree RSS."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak, stop = [0], threading.Event()

    def sample():
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    stdout, _ = proc.communicate()
    wall = time.perf_counter() - start
    stop.set()
    thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed with {proc.returncode}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return {**result, "wall_s": round(wall, 2), "peak_rss_mb": round(peak[0] / 2**20, 1)}


def run_ours(view: Path, out: Path, workers: int) -> dict:
    from whisper_sv.data.feature_config import FeatureConfig
    from whisper_sv.features.build import build_features

    shutil.rmtree(out, ignore_errors=True)
    summary = build_features(f"cv:{view}", "bench", out, FeatureConfig(), workers=workers, progress=False)
    return {"clips": summary["clips_written"], "bytes": _du(out)}


def run_theirs(view: Path, out: Path, workers: int) -> dict:
    from datasets import Audio, Dataset
    from transformers import WhisperFeatureExtractor, WhisperTokenizer

    from whisper_sv.models.specs import resolve_model

    model = resolve_model("packaged:whisper-base")  # same tokenizer and mel settings as ours
    feature_extractor = WhisperFeatureExtractor.from_pretrained(model)
    tokenizer = WhisperTokenizer.from_pretrained(model, language="Swedish", task="transcribe")
    rows = [line.split("\t") for line in (view / "bench.tsv").read_text(encoding="utf-8").splitlines()]
    i_path, i_text = rows[0].index("path"), rows[0].index("sentence")
    ds = Dataset.from_dict({
        "audio": [str(view / "clips" / r[i_path]) for r in rows[1:]],
        "sentence": [r[i_text] for r in rows[1:]],
    }).cast_column("audio", Audio(sampling_rate=16000))

    def prepare_dataset(batch):
        audio = batch["audio"]
        batch["input_features"] = feature_extractor(audio["array"], sampling_rate=audio["sampling_rate"]).input_features[0]
        batch["labels"] = tokenizer(batch["sentence"]).input_ids
        return batch

    mapped = ds.map(prepare_dataset, remove_columns=ds.column_names, num_proc=workers)
    map_done = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    mapped.save_to_disk(str(out))
    return {"clips": len(mapped), "bytes": _du(out), "save_s": round(time.perf_counter() - map_done, 2)}


def _du(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPU cores ({cpu}), {mem:.0f} GiB RAM, Python {platform.python_version()}"


def versions() -> dict:
    import datasets
    import torch
    import torchcodec
    import transformers

    return {"torch": torch.__version__, "torchcodec": torchcodec.__version__, "datasets": datasets.__version__,
            "transformers": transformers.__version__}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=2000, help="synthetic corpus size (default %(default)s)")
    p.add_argument("--sizes", type=int, nargs=2, default=(500, 2000), help="the two sizes of the marginal rate")
    p.add_argument("--workers", type=int, default=2, help="processes for both pipelines (default %(default)s)")
    p.add_argument("--memory", type=int, nargs=2, default=(1000, 10000), help="our peak memory at these sizes")
    p.add_argument("--corpus", type=Path, default=None, help="corpus folder (default bench/out/corpus{clips})")
    p.add_argument("--run", choices=["ours", "theirs"], help=argparse.SUPPRESS)
    p.add_argument("--view", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.run:  # child mode: one pipeline, one size; the parent times it
        fn = run_ours if args.run == "ours" else run_theirs
        print(json.dumps(fn(args.view, args.out, args.workers)))
        return

    from whisper_sv.synth.corpus import SynthConfig, synthesize

    corpus = args.corpus or OUT / f"corpus{args.clips}"
    synthesize(corpus, SynthConfig(clips=args.clips, seed=0))
    n1, n2 = args.sizes
    if n2 > args.clips:
        raise SystemExit(f"--sizes {n2} is more than --clips {args.clips}")
    results: dict = {"machine": machine(), "versions": versions(), "workers": args.workers, "clips": args.clips,
                     "command": " ".join(["python", os.path.relpath(__file__), *sys.argv[1:]]), "sizes": [n1, n2], "runs": {}}
    for name in ("ours", "theirs"):
        for n in (n1, n2):
            view = corpus_view(corpus, n, OUT / "views" / str(n))
            r = run_child(["--run", name, "--view", str(view), "--out", str(OUT / f"{name}-{n}"), "--workers", str(args.workers)])
            results["runs"][f"{name}-{n}"] = r
            print(f"{name} {n} clips: {r}", file=sys.stderr)
    for name in ("ours", "theirs"):
        a, b = results["runs"][f"{name}-{n1}"], results["runs"][f"{name}-{n2}"]
        results[name] = {
            "clips_per_s": round((n2 - n1) / (b["wall_s"] - a["wall_s"]), 1),
            "bytes_per_clip": round(b["bytes"] / b["clips"]),
            "bytes": b["bytes"],
            "peak_rss_mb": b["peak_rss_mb"],
        }
    shutil.rmtree(OUT / f"theirs-{n1}", ignore_errors=True)
    shutil.rmtree(OUT / f"theirs-{n2}", ignore_errors=True)
    m1, m2 = args.memory
    for n in (m1, m2):
        view = corpus_view(corpus, n, OUT / "views" / str(n))
        r = run_child(["--run", "ours", "--view", str(view), "--out", str(OUT / f"ours-{n}"), "--workers", str(args.workers)])
        results["runs"][f"ours-mem-{n}"] = r
        print(f"ours {n} clips (memory): {r}", file=sys.stderr)
        shutil.rmtree(OUT / f"ours-{n}", ignore_errors=True)
    results["ratio"] = {
        "throughput": round(results["ours"]["clips_per_s"] / results["theirs"]["clips_per_s"], 1),
        "bytes": round(results["ours"]["bytes_per_clip"] / results["theirs"]["bytes_per_clip"], 4),
        "our_peak_rss_mb": {m1: results["runs"][f"ours-mem-{m1}"]["peak_rss_mb"], m2: results["runs"][f"ours-mem-{m2}"]["peak_rss_mb"]},
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "features.json").write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


def markdown(r: dict) -> str:
    o, t, q = r["ours"], r["theirs"], r["ratio"]
    m1, m2 = list(q["our_peak_rss_mb"])  # ints in a run, strings when read back from the JSON
    return "\n".join([
        f"Machine: {r['machine']}; {', '.join(f'{k} {v}' for k, v in r['versions'].items())}.",
        f"Command: `{r['command']}` ({r['clips']} synthetic 48 kHz MP3 clips, {r['workers']} processes each side).",
        "",
        "| | standard recipe (`cast_column` + `map`) | whisper-sv `features` | ratio |",
        "|---|---:|---:|---:|",
        f"| throughput, clips/s (marginal) | {t['clips_per_s']} | {o['clips_per_s']} | {q['throughput']}x |",
        f"| bytes on disk per clip | {t['bytes_per_clip']:,} | {o['bytes_per_clip']:,} | 1/{1 / q['bytes']:.0f} |",
        f"| peak RSS (process tree), {r['sizes'][1]} clips | {t['peak_rss_mb']} MB | {o['peak_rss_mb']} MB | |",
        f"| our peak RSS at {m1} / {m2} clips | | {q['our_peak_rss_mb'][m1]} / {q['our_peak_rss_mb'][m2]} MB | |",
        f"| our throughput, clips/s (marginal {m1} -> {m2}) | | {_marginal(r, m1, m2)} | |",
    ])


def _marginal(r: dict, n1, n2) -> float:
    a, b = r["runs"][f"ours-mem-{n1}"], r["runs"][f"ours-mem-{n2}"]
    return round((int(n2) - int(n1)) / (b["wall_s"] - a["wall_s"]), 1)


if __name__ == "__main__":
    main()
