"""`make demo`'s loop, end to end on a tiny preset: its table, its figure, and output a newcomer can read."""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import stopping_tiny

from whisper_sv.data.voices import missing_voices
from whisper_sv.demo import format_table, table_rows

# What a library or Python prints when it warns: "[transformers] ...", "FutureWarning: ...", "WARNING ...".
WARNING_LINE = re.compile(r"warn|deprecat", re.IGNORECASE)


def _tiny_preset(tmp_path: Path, model: str = "random:tiny") -> Path:
    preset = {
        "model": model, "train_data": str(tmp_path / "features" / "train"), "eval_data": str(tmp_path / "features" / "dev"),
        "output_dir": str(tmp_path / "run"), "figure": None, "freeze_encoder": True, "freeze_embeddings": True,
        "encoder_cache": "cross_kv", "encoder_window_s": 15, "encoder_cache_dtype": "int8", "max_steps": 6,
        "per_device_train_batch_size": 4, "per_device_eval_batch_size": 2, "learning_rate": 1e-3, "warmup_steps": 0,
        "eval_steps": 3, "save_steps": 3, "logging_steps": 1, "generation_max_length": 16,
    }
    path = tmp_path / "tiny-demo.json"
    path.write_text(json.dumps(preset))
    return path


@pytest.mark.slow
@pytest.mark.skipif(bool(missing_voices(("mbrola",))), reason="MBROLA's Swedish voices are not installed (make setup installs them)")
def test_the_demo_runs_to_its_table_without_a_repeated_warning(tmp_path):
    """The whole loop in a fresh process, as `make demo` runs it: every stage, the per-family table
    with the held-out speaker, the figure, and no warning printed more than once (a per-step or
    per-batch warning shows up 6 times here: 6 training steps, 2 evaluations of 2 batches)."""
    figure = tmp_path / "demo.png"
    args = [sys.executable, "-m", "whisper_sv.demo", "--corpus", str(tmp_path / "corpus"), "--features", str(tmp_path / "features"),
            "--clips", "40", "--seed", "1", "--preset", str(_tiny_preset(tmp_path)), "--eval-clips", "8", "--figure", str(figure),
            "--report-card", "false",  # 4 test clips: too little speech for a long-form recording
            "--recipe", "null"]  # the plain loop (the recipe has a test of its own below)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}  # what a user sees: Python's default filters
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    warnings = [line.strip() for line in re.split(r"[\r\n]", output) if WARNING_LINE.search(line)]
    repeated = {line: n for line, n in collections.Counter(warnings).items() if n > 1}
    assert not repeated, f"warnings printed more than once: {repeated}"
    # The three the demo used to print per step or per batch are gone for good, not only deduplicated.
    for cause in ("past_key_values", "max_new_tokens", "attention mask is not set"):
        assert cause not in output, f"{cause!r} is back: {[w for w in warnings if cause in w]}"
    summary = json.loads((tmp_path / "run" / "demo.json").read_text())
    groups = [row["group"] for row in summary["table"]]
    assert groups[0] == "all" and "espeak" in groups and "mbrola" in groups and "mbrola-sw2 (unseen)" in groups
    assert summary["after"]["window_s"] == 15 and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mbrola-sw2 (unseen)" in output  # the table is printed too


def test_the_demo_trains_with_the_measured_recipe_unless_told_not_to():
    """`make demo` exports a model that breaks nothing the card checks: the recipe is on, prompts
    included (without them faster-whisper's defaults lose most of every window after the first)."""
    from whisper_sv.data.recipe import Recipe
    from whisper_sv.demo import DemoConfig, demo_recipe

    recipe = Recipe.parse(demo_recipe(DemoConfig()))
    assert recipe.stitched_share and recipe.prompt_share and recipe.nonspeech_share and recipe.replay_share
    assert recipe.replay_source == f"cv:{DemoConfig.english_corpus}"
    assert demo_recipe(DemoConfig(recipe=None)) is None


def test_table_rows_give_each_family_and_the_unseen_speaker():
    def report(wer_all, espeak, mbrola, sw2):
        return {"wer": wer_all, "n": 10, "families": {"espeak": {"wer": espeak, "n": 6}, "mbrola": {"wer": mbrola, "n": 4}},
                "speakers": {"mbrola-sw2": {"wer": sw2, "n": 2}, "mbrola-sw1": {"wer": 0.1, "n": 2}}}

    rows = table_rows(report(0.8, 0.9, 0.6, 0.5), report(0.4, 0.45, 0.3, 0.25), "mbrola-sw2")
    assert [(r["group"], r["n"], r["before"], r["after"], r["ratio"]) for r in rows] == [
        ("all", 10, 0.8, 0.4, 0.5), ("espeak", 6, 0.9, 0.45, 0.5), ("mbrola", 4, 0.6, 0.3, 0.5),
        ("mbrola-sw2 (unseen)", 2, 0.5, 0.25, 0.5),
    ]
    text = format_table(rows)
    assert "mbrola-sw2 (unseen)" in text and "80.0%" in text and "0.50" in text
    assert [r["group"] for r in table_rows(report(0.8, 0.9, 0.6, 0.5), report(0.4, 0.45, 0.3, 0.25))] == ["all", "espeak", "mbrola"]


@pytest.mark.slow
def test_the_demo_trains_with_the_recipe_and_shows_the_report_card(tmp_path):
    """`make demo --recipe ...` on a tiny model (one that ends its texts, so decoding is quick): the
    training store gets the recipe's rows and 30 s windows, and the card is printed, drawn, written
    and put into the model card, base against tuned."""
    model = stopping_tiny(tmp_path / "tiny", seed=0)
    card_figure = tmp_path / "card.png"
    recipe = {"stitched_share": 0.3, "nonspeech_share": 0.1, "replay_share": 0.2}
    args = [sys.executable, "-m", "whisper_sv.demo", "--corpus", str(tmp_path / "corpus"), "--features", str(tmp_path / "features"),
            "--clips", "320", "--voices", "espeak", "--holdout-speaker", "", "--realism", "false",
            "--preset", str(_tiny_preset(tmp_path, str(model))), "--eval-clips", "8", "--figure", "null",
            "--english-corpus", str(tmp_path / "en"), "--english-clips", "40", "--card-longform", "1",
            "--card-figure", str(card_figure), "--recipe", json.dumps(recipe)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=1500)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    from whisper_sv.data.feature_store import FeatureStore

    ids = [r.clip_id for r in FeatureStore(tmp_path / "features" / "train").rows()]
    assert any(i.startswith("stitched-") for i in ids) and any(i.startswith("nonspeech-") for i in ids)
    assert any(i.startswith("replay:") for i in ids)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["encoder_window_s"] == 30
    card = json.loads((tmp_path / "run" / "report_card" / "report_card.json").read_text())
    assert card["config"]["base"] == str(model) and card["config"]["model"] == str(tmp_path / "run" / "final")
    assert {"target", "parity", "longform", "nonspeech", "other_language"} <= set(card["tuned"])
    assert card_figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Report card" in (tmp_path / "run" / "final" / "README.md").read_text()
    assert "long-form faster_whisper" in output and "checks:" in output  # printed, not only written
    summary = json.loads((tmp_path / "run" / "demo.json").read_text())
    assert summary["report_card"]["checks"] and summary["table"][0]["group"] == "all"
