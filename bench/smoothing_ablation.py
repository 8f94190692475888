"""Does smoothing the log-mel image help? The original project's unanswered question, with numbers.

    python bench/smoothing_ablation.py [--clips 3000] [--train-clips 1400] [--max-steps 400] [--out bench/out/ablation]

A grid study (`whisper_sv.search.study`, sampler "grid") over the smoothing kinds the pipeline offers
(none, gaussian, median, bilateral, each at the settings of the smoothing figure: the `Smoothing`
defaults), each trained with the cpu-demo recipe at an equal budget (same clips, steps, seed).
Each trial's final model is then scored on the whole synthetic test split under two protocols:

1. ``train-only``: smoothing on the training features only, test features plain (as the original did);
2. ``both``: the test features smoothed the same way as the training features.

WER with a 95 % bootstrap interval (utterances resampled, 2,000 draws), and the paired difference
against no smoothing on the same clips and the same draws. A difference whose interval excludes 0
is called a help or a hurt; otherwise "no measurable difference". The encoder caches are deleted
after each trial (``keep_encoder_cache: false``) so the peak disk stays bounded; peak disk (the
study folder, sampled every 5 s) and wall time are reported. Results: OUT/ablation.json, a markdown
table on stdout, and img/smoothing_ablation.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("none", "gaussian", "median", "bilateral")
PROTOCOLS = ("train-only", "both")


def folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


class DiskPeak:
    """The largest size a folder reaches while the block runs (sampled)."""

    def __init__(self, folder: Path, every: float = 5.0):
        self.folder, self.every, self.peak, self._stop = folder, every, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, folder_bytes(self.folder))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, folder_bytes(self.folder))


def bootstrap(errors: np.ndarray, words: np.ndarray, draws: np.ndarray) -> tuple[float, float, float]:
    """Corpus WER and its 95 % interval over the resampled utterance sets `draws` (D, N)."""
    wer = errors.sum() / words.sum()
    samples = errors[draws].sum(1) / words[draws].sum(1)
    return float(wer), float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))


def paired(errors_a, words_a, errors_b, words_b, draws) -> tuple[float, float, float]:
    """WER(a) - WER(b) on the same clips and draws, with its 95 % interval."""
    diff = errors_a.sum() / words_a.sum() - errors_b.sum() / words_b.sum()
    samples = errors_a[draws].sum(1) / words_a[draws].sum(1) - errors_b[draws].sum(1) / words_b[draws].sum(1)
    return float(diff), float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))


def score(model: str, store: str, out: Path, max_clips: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-utterance (errors, words, ids) of `model` on a feature store (its first `max_clips`), cached in `out`."""
    import csv

    from whisper_sv.common.metrics import utterance_errors
    from whisper_sv.evaluation.evaluate import evaluate

    if not out.with_suffix(".csv").is_file():
        evaluate(model, store, split="test", out=out, max_samples=max_clips)
    with out.with_suffix(".csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    pairs = utterance_errors([r["reference"] for r in rows], [r["hypothesis"] for r in rows])
    return np.array([e for e, _ in pairs]), np.array([w for _, w in pairs]), [r["id"] for r in rows]


def plot(results: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, protocol in zip(axes, PROTOCOLS):
        rows = [results[protocol][k] for k in KINDS if k in results[protocol]]
        x = np.arange(len(rows))
        wer = [100 * r["wer"] for r in rows]
        err = [[100 * (r["wer"] - r["low"]) for r in rows], [100 * (r["high"] - r["wer"]) for r in rows]]
        ax.bar(x, wer, yerr=err, capsize=5, color=["tab:gray", "tab:blue", "tab:orange", "tab:green"][: len(rows)])
        ax.set_xticks(x, [r["kind"] for r in rows])
        ax.set_title(f"smoothing: {protocol}")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("test WER (%), 95 % bootstrap interval")
    fig.suptitle("Smoothing the log-mel image: cpu-demo recipe, synthetic Swedish test split")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default="corpus/sv-synth-espeak", help="synthetic corpus (espeak-ng, clean; made if missing)")
    ap.add_argument("--clips", type=int, default=None, help="corpus size when it is made (default: the demo's)")
    ap.add_argument("--train-clips", type=int, default=1400, help="cpu-demo: 1,400")
    ap.add_argument("--max-steps", type=int, default=400, help="cpu-demo: 400")
    ap.add_argument("--eval-steps", type=int, default=200)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--test-clips", type=int, default=None, help="score the first N test clips only (a pilot); default: all")
    ap.add_argument("--out", default="bench/out/ablation")
    ap.add_argument("--figure", default="img/smoothing_ablation.png")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from whisper_sv.features.build import build_features
    from whisper_sv.search.study import SearchConfig, feature_config, search, store_key
    from whisper_sv.synth.corpus import SynthConfig, synthesize

    started = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # The corpus the recorded ablation ran on (docs/benchmarks.md): espeak-ng's voices, clean. Not the
    # demo's corpus (both voice families, realism), so it gets a folder of its own.
    corpus = synthesize(args.corpus, SynthConfig(clips=args.clips or SynthConfig.clips, seed=0, voices="espeak", realism=False), 2)
    preset = json.loads((ROOT / "configs" / "cpu-demo.json").read_text())
    preset.update(max_train_samples=args.train_clips, max_steps=args.max_steps, eval_steps=args.eval_steps)
    kinds = args.kinds.split(",")
    cfg = SearchConfig(
        train=preset, space={"smoothing": kinds}, study_dir=str(out / "study"), sampler="grid", pruner="none",
        trials=len(kinds), keep_encoder_cache=False,
        features={"source": f"cv:{corpus}", "train_split": "train", "eval_split": "dev", "workers": 2},
    )
    with DiskPeak(out) as disk:
        outcome = search(cfg)
        from whisper_sv.search.study import open_study  # the trials' final models, from the study

        trials = {t.params["smoothing"]: t for t in open_study(cfg).get_trials() if t.state.name == "COMPLETE"}
        scores: dict[str, dict[str, tuple]] = {p: {} for p in PROTOCOLS}
        for kind, trial in trials.items():
            final = trial.user_attrs["final"]
            for protocol in PROTOCOLS:
                if kind == "none" and protocol == "both":  # the same model on the same plain features
                    scores[protocol][kind] = scores["train-only"][kind]
                    continue
                fc = feature_config(cfg, {"smoothing": kind if protocol == "both" else "none"})
                store = Path(cfg.study_dir) / "features" / store_key(fc) / "test"
                if not (store.parent / "test.done").exists():
                    build_features(f"cv:{corpus}", "test", store, fc, workers=2)
                    (store.parent / "test.done").write_text("")
                scores[protocol][kind] = score(final, str(store), out / f"{kind}-{protocol}.json", args.test_clips)
    ids = {tuple(s[2]) for p in scores.values() for s in p.values()}
    assert len(ids) == 1, "every model must be scored on the same clips in the same order"
    n = len(next(iter(ids)))
    draws = np.random.default_rng(0).integers(0, n, size=(args.draws, n))
    results: dict = {p: {} for p in PROTOCOLS}
    for protocol in PROTOCOLS:
        base = scores[protocol].get("none")
        for kind, (e, w, _) in scores[protocol].items():
            wer, low, high = bootstrap(e, w, draws)
            row = {"kind": kind, "wer": wer, "low": low, "high": high, "n": n}
            if base is not None and kind != "none":
                d, dl, dh = paired(e, w, base[0], base[1], draws)
                row.update(diff=d, diff_low=dl, diff_high=dh,
                           verdict="helps" if dh < 0 else "hurts" if dl > 0 else "no measurable difference")
            results[protocol][kind] = row
    record = {
        "results": results, "wall_minutes": round((time.time() - started) / 60, 1),
        "peak_disk_gb": round(disk.peak / 1e9, 2), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "recipe": {"train_clips": args.train_clips, "max_steps": args.max_steps, "preset": "configs/cpu-demo.json",
                   "test_clips": n},
        "study": {k: v for k, v in outcome.items() if k != "plots"},
    }
    (out / "ablation.json").write_text(json.dumps(record, indent=2))
    plot(results, Path(args.figure))
    print(f"\n{n} test clips; wall {record['wall_minutes']} min; peak disk {record['peak_disk_gb']} GB\n")
    print("| protocol | smoothing | WER % [95 % CI] | vs none, points [95 % CI] | verdict |")
    print("| --- | --- | --- | --- | --- |")
    for protocol in PROTOCOLS:
        for kind in kinds:
            r = results[protocol].get(kind)
            if r is None:
                continue
            vs = f"{100 * r['diff']:+.2f} [{100 * r['diff_low']:+.2f}, {100 * r['diff_high']:+.2f}]" if "diff" in r else ""
            print(f"| {protocol} | {kind} | {100 * r['wer']:.2f} [{100 * r['low']:.2f}, {100 * r['high']:.2f}] | {vs} | {r.get('verdict', '')} |")
    shutil.rmtree(Path(cfg.study_dir) / "encoder_cache", ignore_errors=True)


if __name__ == "__main__":
    main()
