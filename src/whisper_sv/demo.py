"""``make demo``: the whole loop on the embedded defaults, offline, on a CPU.

1. synthetic Swedish corpus (Common Voice layout)       corpus/sv-synth
   espeak-ng's formant voices and MBROLA's two real-speaker diphone voices, with acoustic realism
   (noise, rooms, telephone, level, speed); MBROLA's sw2 is held out: it speaks test clips only
2. feature stores of its train, dev and test splits      features/sv-synth/{train,dev,test}
3. WER of the packaged Whisper base on the test split    runs/cpu-demo/before.json
4. fine-tune with configs/cpu-demo.json                  runs/cpu-demo/final
5. WER of the fine-tuned model on the same clips         runs/cpu-demo/after.json
6. CTranslate2 export for faster-whisper (int8)          runs/cpu-demo/ct2
7. before/after per voice family and for the unseen speaker: printed, runs/cpu-demo/demo.json, img/demo.png

Every stage skips work that is already done, so a re-run after a crash continues where it
stopped. Test sentences are never trained on (the corpus is split by sentence), and the held-out
speaker is never heard in training. Before and after are scored on the encoder window the preset
trains on (15 s, the app's), as the app serves the model.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .config import load_config
from .errors import is_user_error, one_line
from .evaluate import evaluate
from .export import export_ct2
from .feature_config import FeatureConfig
from .features import build_features
from .fileio import write_atomic, write_json
from .options import add_options, build, options_from
from .synth import SynthConfig, synthesize
from .train import train
from .voices import INSTALL_MBROLA

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@dataclass(frozen=True)
class DemoConfig:
    corpus: str = "corpus/sv-synth"  # where the synthetic corpus goes
    features: str = "features/sv-synth"  # feature stores, one folder per split
    clips: int = SynthConfig.clips  # corpus size
    seed: int = 0  # corpus seed: the same seed gives the same clips, byte for byte
    voices: str = SynthConfig.voices  # voice families of the corpus (espeak and mbrola where MBROLA is installed)
    # The speaker the model never hears in training: the table's "unseen speaker" row. "" holds
    # out none; the default needs MBROLA (without it the demo holds out no one and says so).
    holdout_speaker: str = "mbrola-sw2"
    realism: bool = True  # noise, rooms, telephone, level and speed changes (synth's --realism); false: clean clips
    preset: str = str(CONFIGS / "cpu-demo.json")  # the training recipe
    eval_clips: int = 100  # test clips scored before and after
    workers: int = 2  # processes for the corpus and the features
    figure: str | None = "img/demo.png"  # the before/after table as a picture; null: none


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

    synth = demo_corpus_config(cfg)
    stage("corpus", f"synthetic corpus: {cfg.clips} clips ({synth.voices}"
                    f"{', realism' if synth.realism else ''}) -> {cfg.corpus}")
    synthesize(cfg.corpus, synth, cfg.workers)
    done("corpus")

    stage("features", f"features -> {cfg.features}/{{train,dev,test}}")
    for split in ("train", "dev", "test"):
        build_features(f"cv:{cfg.corpus}", split, Path(cfg.features) / split, FeatureConfig(model=train_cfg.model), cfg.workers)
    done("features")

    test_store = str(Path(cfg.features) / "test")
    stage("before", f"WER of {train_cfg.model} on {cfg.eval_clips} test clips")
    before = _cached_eval(train_cfg.model, test_store, run_dir / "before.json", cfg.eval_clips, train_cfg.encoder_window_s)
    done("before")

    stage("train", f"fine-tune ({cfg.preset}) -> {run_dir / 'final'}")
    final = run_dir / "final"
    if not (final / "model.safetensors").is_file():
        train(train_cfg)
    else:
        print(f"{final} exists - skipping (delete it to train again)")
    done("train")

    stage("after", f"WER of the fine-tuned model on the same {cfg.eval_clips} clips")
    after = _cached_eval(str(final), test_store, run_dir / "after.json", cfg.eval_clips, train_cfg.encoder_window_s)
    done("after")

    stage("export", f"CTranslate2 export (int8) -> {run_dir / 'ct2'}")
    export_ct2(str(final), run_dir / "ct2", quantization="int8")
    done("export")

    _show_examples(run_dir / "before.csv", run_dir / "after.csv", 5)
    rows = table_rows(before, after, synth.holdout_speakers)
    print(f"\nWER on {after['n']} synthetic test clips (sentences never trained on), {after['window_s']:g} s encoder window:")
    print(format_table(rows))
    print(f"orthographic WER {before['wer_ortho']:.1%} -> {after['wer_ortho']:.1%}, CER {before['cer']:.1%} -> {after['cer']:.1%}")
    if cfg.figure:
        draw_table(rows, cfg.figure, f"{train_cfg.model} fine-tuned on {cfg.preset and Path(cfg.preset).name}")
        print(f"table drawn: {cfg.figure}")
    print("wall time per stage (s): " + ", ".join(f"{k} {v}" for k, v in seconds.items()))
    summary = {"before": _brief(before), "after": _brief(after), "table": rows, "seconds": seconds}
    write_json(run_dir / "demo.json", summary)
    return summary


def demo_corpus_config(cfg: DemoConfig) -> SynthConfig:
    """The demo's corpus: `cfg.voices`, holding out `cfg.holdout_speaker` where its voice is among them
    (the benchmarks that share the demo's corpus make it with this too)."""
    base = SynthConfig(clips=cfg.clips, seed=cfg.seed, voices=cfg.voices, realism=cfg.realism)
    offered = {v.id for voices in base.voice_pool().values() for v in voices}
    if cfg.holdout_speaker and cfg.holdout_speaker not in offered:
        print(f"holding out no speaker: {cfg.holdout_speaker} is not among the voices {base.voices!r} ({INSTALL_MBROLA})")
        return base
    return replace(base, holdout_speakers=cfg.holdout_speaker)


def table_rows(before: dict, after: dict, holdout: str = "") -> list[dict]:
    """The demo's table: WER before and after for all clips, each voice family, and each held-out
    speaker (``unseen``), with the clip counts behind them."""
    rows = [{"group": "all", "n": after["n"], "before": before["wer"], "after": after["wer"]}]
    for family in sorted(after["families"]):
        rows.append({"group": family, "n": after["families"][family]["n"],
                     "before": before["families"][family]["wer"], "after": after["families"][family]["wer"]})
    for speaker in filter(None, holdout.split(",")):
        if speaker in after["speakers"]:
            rows.append({"group": f"{speaker} (unseen)", "n": after["speakers"][speaker]["n"],
                         "before": before["speakers"][speaker]["wer"], "after": after["speakers"][speaker]["wer"]})
    for row in rows:
        row["ratio"] = round(row["after"] / row["before"], 3) if row["before"] else None
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'clips':<24}{'n':>5}{'before':>9}{'after':>9}{'after/before':>14}"]
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"{r['group']:<24}{r['n']:>5}{r['before']:>9.1%}{r['after']:>9.1%}{ratio:>14}")
    return "\n".join(lines)


def draw_table(rows: list[dict], out: str | Path, title: str) -> Path:
    """Before/after WER per group as bars, the figures written on them, in one PNG (atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    x = list(range(len(rows)))
    for offset, key, colour in ((-0.2, "before", "tab:gray"), (0.2, "after", "tab:green")):
        bars = ax.bar([i + offset for i in x], [100 * r[key] for r in rows], 0.38, label=key, color=colour)
        ax.bar_label(bars, fmt="%.0f %%", fontsize=8)
    ax.set_xticks(x, [f"{r['group']}\n({r['n']} clips)" for r in rows], fontsize=8)
    ax.set_ylabel("WER (%), normalised")
    ax.set_ylim(0, 1.18 * max(100 * max(r["before"], r["after"]) for r in rows))
    ax.legend(frameon=False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, dpi=110, format="png")
    plt.close(fig)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(Path(out), image.getvalue())


def _cached_eval(model: str, data: str, out: Path, n: int, window_s: float) -> dict:
    if out.is_file():
        report = json.loads(out.read_text())
        if report.get("model") == model and report.get("n") == n and report.get("window_s") == window_s:
            print(f"{out} exists - skipping")
            return report
    return evaluate(model, data, out=out, max_samples=n, window_s=window_s)


def _brief(report: dict) -> dict:
    return {k: report[k] for k in ("wer", "wer_ortho", "cer", "n", "model", "window_s", "families")}


def _show_examples(before_csv: Path, after_csv: Path, n: int) -> None:
    before = {r["id"]: r for r in csv.DictReader(before_csv.open(encoding="utf-8"))}
    for row in list(csv.DictReader(after_csv.open(encoding="utf-8")))[:n]:
        print(f"\nREF:    {row['reference']}\nBEFORE: {before.get(row['id'], {}).get('hypothesis', '?')}\nAFTER:  {row['hypothesis']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="show the traceback of an error")
    add_options(p, DemoConfig)
    args = p.parse_args(argv)
    try:
        run_demo(build(DemoConfig, options_from(args, DemoConfig)))
    except Exception as err:
        if args.verbose or not is_user_error(err):
            raise
        print(f"make demo: error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
