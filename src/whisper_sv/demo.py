"""``make demo``: the whole loop on the embedded defaults, offline, on a CPU.

1. synthetic Swedish corpus (Common Voice layout)       corpus/sv-synth
2. feature stores of its train, dev and test splits      features/sv-synth/{train,dev,test}
3. WER of the packaged Whisper base on the test split    runs/cpu-demo/before.json
4. fine-tune with configs/cpu-demo.json                  runs/cpu-demo/final
5. WER of the fine-tuned model on the same clips         runs/cpu-demo/after.json
6. CTranslate2 export for faster-whisper (int8)          runs/cpu-demo/ct2

Every stage skips work that is already done, so a re-run after a crash continues where it
stopped. Test sentences are never trained on (the corpus is split by sentence).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

from .config import load_config
from .evaluate import evaluate
from .export import export_ct2
from .feature_config import FeatureConfig
from .features import build_features
from .fileio import write_json
from .options import add_options, build, options_from
from .synth import SynthConfig, synthesize
from .train import train

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@dataclass(frozen=True)
class DemoConfig:
    corpus: str = "corpus/sv-synth"  # where the synthetic corpus goes
    features: str = "features/sv-synth"  # feature stores, one folder per split
    clips: int = SynthConfig.clips  # corpus size
    seed: int = 0  # corpus seed: the same seed gives the same clips, byte for byte
    preset: str = str(CONFIGS / "cpu-demo.json")  # the training recipe
    eval_clips: int = 100  # test clips scored before and after
    workers: int = 2  # processes for the corpus and the features


def run_demo(cfg: DemoConfig = DemoConfig()) -> dict:
    """Run the loop; returns ``{"before", "after", "seconds"}`` (reports and per-stage wall time)."""
    seconds: dict[str, float] = {}
    train_cfg = load_config(cfg.preset)
    run_dir = Path(train_cfg.output_dir)

    def stage(name: str, title: str):
        print(f"\n== {len(seconds) + 1}. {title}", flush=True)
        seconds[name] = time.perf_counter()

    def done(name: str):
        seconds[name] = round(time.perf_counter() - seconds[name], 1)

    stage("corpus", f"synthetic corpus: {cfg.clips} clips -> {cfg.corpus}")
    synthesize(cfg.corpus, SynthConfig(clips=cfg.clips, seed=cfg.seed), cfg.workers)
    done("corpus")

    stage("features", f"features -> {cfg.features}/{{train,dev,test}}")
    for split in ("train", "dev", "test"):
        build_features(f"cv:{cfg.corpus}", split, Path(cfg.features) / split, FeatureConfig(model=train_cfg.model), cfg.workers)
    done("features")

    test_store = str(Path(cfg.features) / "test")
    stage("before", f"WER of {train_cfg.model} on {cfg.eval_clips} test clips")
    before = _cached_eval(train_cfg.model, test_store, run_dir / "before.json", cfg.eval_clips)
    done("before")

    stage("train", f"fine-tune ({cfg.preset}) -> {run_dir / 'final'}")
    final = run_dir / "final"
    if not (final / "model.safetensors").is_file():
        train(train_cfg)
    else:
        print(f"{final} exists - skipping (delete it to train again)")
    done("train")

    stage("after", f"WER of the fine-tuned model on the same {cfg.eval_clips} clips")
    after = _cached_eval(str(final), test_store, run_dir / "after.json", cfg.eval_clips)
    done("after")

    stage("export", f"CTranslate2 export (int8) -> {run_dir / 'ct2'}")
    export_ct2(str(final), run_dir / "ct2", quantization="int8")
    done("export")

    _show_examples(run_dir / "before.csv", run_dir / "after.csv", 5)
    print(
        f"\nWER on {after['n']} synthetic test clips (sentences never trained on): "
        f"before {before['wer']:.1%} -> after {after['wer']:.1%} "
        f"(orthographic {before['wer_ortho']:.1%} -> {after['wer_ortho']:.1%}, "
        f"CER {before['cer']:.1%} -> {after['cer']:.1%})"
    )
    print("wall time per stage (s): " + ", ".join(f"{k} {v}" for k, v in seconds.items()))
    summary = {"before": _brief(before), "after": _brief(after), "seconds": seconds}
    write_json(run_dir / "demo.json", summary)
    return summary


def _cached_eval(model: str, data: str, out: Path, n: int) -> dict:
    if out.is_file():
        report = json.loads(out.read_text())
        if report.get("model") == model and report.get("n") == n:
            print(f"{out} exists - skipping")
            return report
    return evaluate(model, data, out=out, max_samples=n)


def _brief(report: dict) -> dict:
    return {k: report[k] for k in ("wer", "wer_ortho", "cer", "n", "model")}


def _show_examples(before_csv: Path, after_csv: Path, n: int) -> None:
    before = {r["id"]: r for r in csv.DictReader(before_csv.open(encoding="utf-8"))}
    for row in list(csv.DictReader(after_csv.open(encoding="utf-8")))[:n]:
        print(f"\nREF:    {row['reference']}\nBEFORE: {before.get(row['id'], {}).get('hypothesis', '?')}\nAFTER:  {row['hypothesis']}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, DemoConfig)
    run_demo(build(DemoConfig, options_from(p.parse_args(argv), DemoConfig)))


if __name__ == "__main__":
    main()
