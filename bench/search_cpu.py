"""Run configs/search-cpu.json to the end on this machine and score its best trial on the test split.

    python bench/search_cpu.py [--trials 12] [--eval-clips 100]

Makes what `make demo` makes first (the synthetic corpus and its train/dev/test feature stores,
skipped when present), runs the study, then evaluates the best trial's model on the first
--eval-clips test clips, the clips the demo scores the cpu-demo preset on. Prints and writes
bench/out/search-cpu.json: wall time, trials complete/pruned, per-trial minutes and RSS, the
cost of building the shared encoder cache against a trial that reuses it, one evaluation
against one training interval, and the best trial's test WER.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def eval_vs_interval(run_dir: Path, eval_steps: int) -> dict:
    """Seconds of one evaluation and of the training steps between two evaluations."""
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [h["eval_runtime"] for h in history if "eval_runtime" in h]
    train = [h for h in history if "train_runtime" in h]
    evals_total = sum(evals)
    step_s = (train[-1]["train_runtime"] - evals_total) / train[-1]["step"] if train else None
    return {"eval_s": round(sum(evals) / len(evals), 1) if evals else None,
            "interval_s": round(step_s * eval_steps, 1) if step_s else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "search-cpu.json"))
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--eval-clips", type=int, default=100)
    ap.add_argument("--out", default="bench/out/search-cpu.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from whisper_sv.models.specs import DEFAULT_MODEL
    from whisper_sv.demo import DemoConfig, build_demo_stores, demo_corpus_config, english_corpus_config
    from whisper_sv.evaluation.evaluate import evaluate
    from whisper_sv.search.study import load_search_config, search
    from whisper_sv.synth.corpus import synthesize

    demo = DemoConfig()
    t0 = time.time()
    synthesize(demo.corpus, demo_corpus_config(demo), demo.workers)
    synthesize(demo.english_corpus, english_corpus_config(demo), demo.workers)  # the recipe's replay
    # the demo's own stores (its recipe in train), so `make demo` and this bench share them; the
    # search's 15 s windows leave the recipe's stitched clips out (train says how many)
    build_demo_stores(demo, DEFAULT_MODEL)
    prepared = time.time()
    cfg = load_search_config(args.config, {"trials": args.trials} if args.trials else None)
    outcome = search(cfg)
    searched = time.time()
    best = outcome["best"]
    report = evaluate(str(Path(best["run_dir"]) / "final"), str(Path(demo.features) / "test"), split="test",
                      out=Path(cfg.study_dir) / "best-test.json", max_samples=args.eval_clips)
    import csv

    with (Path(cfg.study_dir) / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    finished = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED")]
    record = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "prepare_minutes": round((prepared - t0) / 60, 1),
        "search_minutes": round((searched - prepared) / 60, 1),
        "counts": outcome["counts"],
        "trial_minutes": [float(r["minutes"]) for r in finished],
        "trial_rss_mb": [float(r["rss_mb"]) for r in finished],
        "trial_peak_rss_mb": [float(r["peak_rss_mb"]) for r in finished],
        "first_trial_minutes_with_cache_build": float(finished[0]["minutes"]),
        "eval_vs_interval": eval_vs_interval(Path(best["run_dir"]), cfg.train.get("eval_steps", 20)),
        "best": best,
        "best_test": {k: report[k] for k in ("wer", "wer_ortho", "cer", "n")},
    }
    import shutil

    for name in ("intermediate_values", "optimization_history"):  # the figures docs/benchmarks.md shows
        shutil.copyfile(Path(cfg.study_dir) / "img" / f"{name}.png", ROOT / "img" / f"search_cpu_{name.split('_')[0]}.png")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
