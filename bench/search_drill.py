"""Crash drill and memory record for the search: kill a worker at random moments, re-run, count.

    python bench/search_drill.py [--trials 6] [--kills 3] [--seed 0] [--out bench/out/drill]
    python bench/search_drill.py --memory --trials 8     # one worker, 8 trials: RSS per trial

Drill: a study of `configs/search-tiny.json` (the tiny preset) on a small synthetic corpus, run as
`whisper-sv search` in a child process. At `--kills` moments drawn at random over the expected run
(seeded), the worker is SIGKILLed and the same command started again; then it runs to the end.
Reported: trials finished (must equal --trials), trials lost (fewer finished than asked) or doubled
(two finished trials on one run folder: a trial and its retry both counted), and the
training redone: steps trained again after each kill (the killed attempt's last logged step minus
the checkpoint its retry resumed from) against what a retry from zero would redo (every step it
had trained).

Memory: one worker runs --trials trials in sequence; each trial records the process's RSS when it
ends and the peak so far (`rss_mb`, `peak_rss_mb` in summary.csv). Flat means the last trial's RSS
within 10 % of the second's (the first pays one-off imports and caches).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def search_cmd(study: Path, corpus: Path, trials: int, extra: list[str]) -> list[str]:
    features = {"source": f"cv:{corpus}", "shard_size": 16}
    return [sys.executable, "-m", "whisper_sv.cli", "search", str(ROOT / "configs" / "search-tiny.json"),
            "--study_dir", str(study), "--features", json.dumps(features), "--trials", str(trials),
            "--max_steps", "12", "--save_steps", "3", "--eval_steps", "6", "--logging_steps", "1", *extra]


def _study_cfg(study: Path):
    """The SearchConfig a study folder was run with (its search.json)."""
    from whisper_sv.search.study import SearchConfig

    return SearchConfig(**json.loads((study / "search.json").read_text()))


def last_step(run_dir: Path) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    return max((json.loads(line).get("step", 0) for line in lines if line.strip()), default=0)


def seconds_per_step(run_dirs: list[Path]) -> float | None:
    """Mean training seconds per step (the Trainer's train_runtime, evaluations included) of runs."""
    rates = []
    for run_dir in run_dirs:
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            h = json.loads(line)
            if "train_runtime" in h and h.get("step"):
                rates.append(h["train_runtime"] / h["step"])
    return sum(rates) / len(rates) if rates else None


def read_summary(study: Path) -> list[dict]:
    with (study / "summary.csv").open() as f:
        return list(csv.DictReader(f))


def drill(args, corpus: Path, out: Path) -> dict:
    study = out / "study"
    cmd = search_cmd(study, corpus, args.trials, ["--pruner", "none"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # How long the study takes uninterrupted, to draw the kill moments over.
    t0 = time.time()
    subprocess.run(search_cmd(out / "probe", corpus, 1, ["--pruner", "none"]), check=True, env=env, capture_output=True)
    per_trial = time.time() - t0
    rng = random.Random(args.seed)
    kills = []
    started = time.time()
    for _ in range(args.kills):
        # A moment inside the next trial or two: past start-up, before the study can end.
        moment = rng.uniform(0.4, 1.6) * per_trial
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=moment)
            kills.append({"after_s": round(moment, 1), "killed": False})
            continue
        except subprocess.TimeoutExpired:
            pass
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        from whisper_sv.search.study import open_study
        from whisper_sv.training.checkpoints import complete_checkpoints

        running = [t for t in open_study(_study_cfg(study)).get_trials()
                   if t.state.name == "RUNNING"]
        run_dir = Path(running[0].user_attrs["run_dir"]) if running and "run_dir" in running[0].user_attrs else None
        done = complete_checkpoints(run_dir) if run_dir and run_dir.exists() else []
        ckpt = int(done[-1].name.split("-")[1]) if done else 0
        trained = last_step(run_dir) if run_dir else 0
        kills.append({"after_s": round(moment, 1), "killed": True, "trial": running[0].number if running else None,
                      "run_dir": str(run_dir), "steps_trained": trained, "resumes_from": ckpt})
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    wall = time.time() - started
    rows = read_summary(study)
    finished = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED")]
    folders = [r["run_dir"] for r in finished]
    step_s = seconds_per_step([Path(r["run_dir"]) for r in finished if not r["note"]])
    redone = sum(k["steps_trained"] - k["resumes_from"] for k in kills if k.get("killed"))
    from_zero = sum(k["steps_trained"] for k in kills if k.get("killed"))
    return {
        "trials_asked": args.trials, "trials_finished": len(finished),
        "trials_lost": max(0, args.trials - len(finished)),
        "trials_doubled": len(folders) - len(set(folders)),  # one folder per trial, retries included
        "kills": kills, "steps_redone": redone, "steps_redone_if_from_zero": from_zero,
        "training_minutes_redone": round(redone * step_s / 60, 3) if step_s else None,
        "training_minutes_redone_if_from_zero": round(from_zero * step_s / 60, 3) if step_s else None,
        "wall_minutes": round(wall / 60, 2),
    }


def memory(args, corpus: Path, out: Path) -> dict:
    study = out / "memory"
    subprocess.run(search_cmd(study, corpus, args.trials, ["--pruner", "none"]), check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
    rows = [r for r in read_summary(study) if r["state"] in ("COMPLETE", "PRUNED")]
    rss = [float(r["rss_mb"]) for r in rows]
    peak = [float(r["peak_rss_mb"]) for r in rows]
    return {"trials": len(rows), "rss_mb_after_each_trial": rss, "peak_rss_mb_so_far": peak,
            "last_vs_second": round(rss[-1] / rss[1], 3) if len(rss) > 1 else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memory", action="store_true", help="record RSS over --trials trials instead of the drill")
    ap.add_argument("--out", default="bench/out/drill")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from whisper_sv.synth.corpus import SynthConfig, synthesize

    out = Path(args.out)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    corpus = synthesize(out / "corpus", SynthConfig(clips=60, seed=7), 2)
    result = memory(args, corpus, out) if args.memory else drill(args, corpus, out)
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
    (out / ("memory.json" if args.memory else "drill.json")).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
