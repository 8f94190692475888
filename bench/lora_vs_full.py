"""LoRA against the cpu-demo recipe at equal wall time on this CPU.

Three arms train the packaged Whisper base on the same clips for the same wall time (the whole
train stage: model loading, any encoder cache, the steps):

* ``cpu-demo``: configs/cpu-demo.json as it is (encoder frozen and cached, embeddings frozen, the
  rest of the decoder trains; lr 2e-4). The table in docs/benchmarks.md was measured with the
  recipe of then: a ``cross_kv`` cache, float32 training; since the diphone-voices demo's run 5 the preset
  caches ``states`` and trains under bf16;
* ``lora-decoder``: the same cached encoder, LoRA r 32 / alpha 64 on the decoder's q_proj and
  v_proj (with a ``cross_kv`` cache the cross-attention's v stays as cached), lr 1e-3;
* ``lora-both``: LoRA on q_proj and v_proj of the encoder too, as the peft recipe does; the
  encoder then changes, so nothing can be cached and every step runs it forwards and backwards.

A step-based schedule cannot know how many steps a wall-time budget holds, so each arm warms up
over the recipe's warm-up steps and then decays its learning rate linearly to zero at the end of
the budget (by the clock); training stops at the first step past it. Each arm runs in its own
process, so its peak RSS is its own. The trained models are scored on the same test clips
(`whisper_sv.evaluation.evaluate`, greedy, Swedish forced). Reported per arm: test WER, trainable
parameters, steps done, seconds per step (median), peak RSS, and what the run ships (adapter
size; the merged final/ is the same size for every arm). Writes --out (JSON) and prints a
markdown table.

    flock /tmp/whisper_sv_bench.lock python bench/lora_vs_full.py                   # ~11 min an arm
    python bench/lora_vs_full.py --seconds 120 --clips 32 --test-clips 8 --work /tmp/lvf   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
RECIPE = ROOT / "configs" / "cpu-demo.json"
ARMS = ("cpu-demo", "lora-decoder", "lora-both")
# The cpu-demo recipe's recorded train stage (docs/benchmarks.md, run 7): cache, loading, 650 steps.
DEMO_SECONDS = 627


def arm_overrides(arm: str, args) -> dict:
    """The arm's keys on top of the cpu-demo recipe."""
    common = {
        "model": args.model, "train_data": args.train_data, "eval_data": None, "max_train_samples": args.clips,
        "output_dir": str(args.work / arm), "figure": None, "encoder_cache_dir": None,
        "max_steps": 10**6, "save_steps": 10**6, "logging_steps": 5,  # the clock ends training, not the count
    }
    if args.batch:
        common["per_device_train_batch_size"] = args.batch
    lora = {"r": args.r, "alpha": 2 * args.r, "dropout": 0.05}
    if arm == "cpu-demo":
        return common
    if arm == "lora-decoder":
        return {**common, "lora": {**lora, "part": "decoder"}, "learning_rate": args.lora_lr}
    return {**common, "lora": {**lora, "part": "both"}, "learning_rate": args.lora_lr,
            "freeze_encoder": False, "encoder_cache": None}


def wall_clock_callback(started: float, seconds: float, warmup_steps: int):
    """A TrainerCallback that decays the learning rate to zero at `started + seconds` and stops there."""
    from transformers import TrainerCallback

    class WallClock(TrainerCallback):
        def __init__(self):
            self.steps: list[float] = []
            self.trainable = 0

        def on_train_begin(self, args, state, control, model=None, lr_scheduler=None, **kwargs):
            self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            loop_start, deadline = time.time(), started + seconds

            def factor(step: int) -> float:
                warm = min(1.0, step / warmup_steps) if warmup_steps else 1.0
                return warm * max(0.0, (deadline - time.time()) / max(deadline - loop_start, 1e-9))

            lr_scheduler.lr_lambdas = [factor] * len(lr_scheduler.lr_lambdas)  # the step schedule, replaced

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(time.time())
            if time.time() - started >= seconds:
                control.should_training_stop = True

    return WallClock()


def run_arm(arm: str, args) -> None:
    """In the arm's own process: train for the budget, write ARM/bench.json."""
    from whisper_sv.training.config import load_config
    from whisper_sv.training.train import train

    started = time.time()
    run_dir = args.work / arm
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an equal budget means a fresh run, never a resumed one
    cfg = load_config(RECIPE, arm_overrides(arm, args))
    clock = wall_clock_callback(started, args.seconds, cfg.training_arguments().get("warmup_steps", 0))
    train(cfg, callbacks=[clock])
    seconds = time.time() - started
    shutil.rmtree(run_dir / "encoder_cache", ignore_errors=True)  # not kept between arms
    gaps = [b - a for a, b in zip(clock.steps, clock.steps[1:])]
    adapter = run_dir / "final" / "adapter" / "adapter_model.safetensors"
    (run_dir / "bench.json").write_text(json.dumps({
        "arm": arm, "trainable": clock.trainable, "steps": len(clock.steps), "train_seconds": round(seconds, 1),
        "s_per_step": round(median(gaps), 3) if gaps else None,
        "adapter_MB": round(adapter.stat().st_size / 1e6, 2) if adapter.is_file() else None,
        "final_MB": round((run_dir / "final" / "model.safetensors").stat().st_size / 1e6, 1),
    }))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=DEMO_SECONDS, help="wall time of each arm's train stage (default: %(default)s, cpu-demo's)")
    p.add_argument("--clips", type=int, default=2400, help="training clips (default: %(default)s, cpu-demo's)")
    p.add_argument("--test-clips", type=int, default=100, help="test clips scored (default: %(default)s)")
    p.add_argument("--train-data", default="features/sv-synth/train", help="feature store (default: %(default)s, make demo's)")
    p.add_argument("--test-data", default="features/sv-synth/test", help="feature store (default: %(default)s)")
    p.add_argument("--model", default="packaged:whisper-base")
    p.add_argument("--batch", type=int, default=None, help="train batch (default: the recipe's 16)")
    p.add_argument("--r", type=int, default=32, help="LoRA rank; alpha is twice it (default: %(default)s)")
    p.add_argument("--lora-lr", type=float, default=1e-3, help="LoRA learning rate (default: %(default)s)")
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of %(default)s")
    p.add_argument("--work", type=Path, default=OUT / "lora_vs_full", help="run folders (default: %(default)s)")
    p.add_argument("--out", type=Path, default=OUT / "lora_vs_full.json")
    p.add_argument("--arm", default=None, help=argparse.SUPPRESS)  # internal: run one arm in this process
    args = p.parse_args(argv)
    args.work = args.work.resolve()
    if args.arm:
        run_arm(args.arm, args)
        return {}
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise SystemExit(f"--arms: unknown {unknown}; arms are {', '.join(ARMS)}")
    for store in (args.train_data, args.test_data):
        if not (Path(store) / "feature_config.json").is_file():
            raise SystemExit(f"{store}: no feature store; run `make demo` first, or give --train-data/--test-data")

    from whisper_sv.evaluation.evaluate import evaluate

    rows = []
    for arm in arms:
        print(f"== {arm}: {args.seconds:.0f} s", flush=True)
        proc = subprocess.Popen([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--arm", arm])
        _, status, usage = os.wait4(proc.pid, 0)  # this arm's process: its own peak RSS
        if os.waitstatus_to_exitcode(status):
            raise SystemExit(f"arm {arm} failed (exit {os.waitstatus_to_exitcode(status)})")
        row = json.loads((args.work / arm / "bench.json").read_text())
        row["peak_rss_MB"] = round(usage.ru_maxrss / 1024)
        report = evaluate(str(args.work / arm / "final"), args.test_data, max_samples=args.test_clips)
        row.update(test_wer=report["wer"], test_cer=report["cer"], test_clips=report["n"])
        rows.append(row)
    result = {"seconds": args.seconds, "clips": args.clips, "model": args.model, "cpus": os.cpu_count(), "arms": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    lines = [f"{result['model']}, {result['clips']} training clips, {result['seconds']:.0f} s of training wall time per arm, "
             f"{result['arms'][0]['test_clips']} test clips\n",
             "| arm | test WER % | trainable params | steps | s/step | peak RSS (MB) | adapter (MB) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["arms"]:
        adapter = f"{r['adapter_MB']:.1f}" if r["adapter_MB"] is not None else f"— (final/ {r['final_MB']:.0f})"
        step = f"{r['s_per_step']:.2f}" if r["s_per_step"] is not None else "—"
        lines.append(f"| {r['arm']} | {100 * r['test_wer']:.1f} | {r['trainable'] / 1e6:.2f} M | {r['steps']} | {step} | "
                     f"{r['peak_rss_MB']} | {adapter} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
