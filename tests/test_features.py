"""The feature pipeline: exact log-mels, crash-safe shards, rejects with reasons."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from whisper_sv.audio.io import N_FRAMES, SAMPLE_RATE, load_audio
from whisper_sv.audio.logmel import Smoothing, collate_features, log_mel, pad_features, smooth_image, smooth_log_mel
from whisper_sv.data.feature_config import FeatureConfig
from whisper_sv.data.feature_store import FeatureStore
from whisper_sv.data.shard_format import COLUMNS, ShardRow, read_shard, shard_bytes
from whisper_sv.data.sources import CV_HEADER
from whisper_sv.evaluation.evaluate import iter_inputs
from whisper_sv.features.build import ConfigMismatch, build_features
from whisper_sv.models.specs import PACKAGED_BASE

LENGTHS_S = (0.1, 0.5, 1.0, 3.3, 10.0, 29.99, 30.0)
# fp16 keeps 11 significant bits: a value in [1, 2) is stored to within half its spacing, 2**-11.
# Log-mels here lie in [-1.5, 1.5] (floor -1.5 at most, peak (max+4)/4 <= 1.5 for |x| <= 1), so
# |stored - exact| <= 2**-11 ~ 4.9e-4 is exactly what fp16 rounding allows, and no more.
FP16_TOL = 2.0**-11 + 1e-6


@pytest.fixture(scope="module")
def feature_extractor():
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=80)  # whisper-base's: 80 mels, 16 kHz, 30 s


def _speech_like(n: int, rng) -> np.ndarray:
    """Voiced harmonics with a wandering pitch, syllable envelope and breath noise."""
    t = np.arange(n) / SAMPLE_RATE
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) ** 2
    return (0.3 * voiced * envelope + 0.01 * rng.standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("seconds", LENGTHS_S)
@pytest.mark.parametrize("kind", ["noise", "speech", "silence"])
def test_log_mel_equals_whisper_feature_extractor(feature_extractor, seconds, kind):
    rng = np.random.default_rng(int(seconds * 1000))
    n = round(seconds * SAMPLE_RATE)
    audio = {
        "noise": lambda: (0.1 * rng.standard_normal(n)).astype(np.float32),
        "speech": lambda: _speech_like(n, rng),
        "silence": lambda: np.zeros(n, np.float32),  # silent but not empty: a valid clip
    }[kind]()
    expected = feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
    compact, n_frames, pad_value = log_mel(audio)
    assert compact.shape == (80, n_frames) and compact.dtype == np.float32
    assert n_frames == min(N_FRAMES, -(-(n + 200) // 160))  # only frames whose window sees audio
    assert np.all(expected[:, n_frames:] == np.float32(pad_value))  # the tail is the clip's floor
    assert np.abs(pad_features(compact, n_frames, pad_value) - expected).max() <= 1e-4


def test_store_reproduces_the_feature_extractor_to_fp16_rounding(tmp_path, sv_corpus, feature_extractor):
    out = tmp_path / "store"
    summary = build_features(f"cv:{sv_corpus}", "dev", out, FeatureConfig(model=PACKAGED_BASE), workers=1, progress=False)
    assert summary["clips_written"] == 6 and summary["rejected"] == {}
    store = FeatureStore(out)
    rows = list(store.dataset())
    assert len(rows) == len(store) == 6
    batch = collate_features(rows).numpy()
    assert batch.shape == (6, 80, N_FRAMES) and batch.dtype == np.float32
    for row, features in zip(rows, batch):
        audio = load_audio(sv_corpus / "clips" / row["clip_id"])
        expected = feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
        assert np.abs(features - expected).max() <= FP16_TOL
        assert row["duration"] == pytest.approx(len(audio) / SAMPLE_RATE, abs=1e-6)
        assert row["labels"][:4] == [50258, 50273, 50359, 50363]  # <|startoftranscript|><|sv|><|transcribe|><|notimestamps|>
        assert row["labels"][-1] == 50257  # <|endoftext|>


@pytest.mark.parametrize("spec", [
    Smoothing("gaussian", ksize=5, sigma=1.0),
    Smoothing("median", ksize=5),
    Smoothing("bilateral", d=5, sigma_color=0.2, sigma_space=2.0),
])
@pytest.mark.parametrize("seconds", [0.5, 29.97])
def test_smoothing_the_compact_part_equals_smoothing_the_padded_image(spec, seconds):
    audio = _speech_like(round(seconds * SAMPLE_RATE), np.random.default_rng(0))
    compact, n_frames, pad_value = log_mel(audio)
    smoothed, n_smoothed = smooth_log_mel(compact, n_frames, pad_value, spec)
    expected = smooth_image(pad_features(compact, n_frames, pad_value), spec)
    assert np.abs(pad_features(smoothed, n_smoothed, pad_value) - expected).max() <= 1e-5


def test_bad_smoothing_settings_say_what_to_do():
    with pytest.raises(ValueError, match="only 3 or 5"):
        Smoothing("median", ksize=7)
    with pytest.raises(ValueError, match="odd kernel"):
        Smoothing("gaussian", ksize=4)
    with pytest.raises(ValueError, match="pick one of"):
        FeatureConfig(smoothing="box")


# ---------------------------------------------------------------------------------------------
# The shard row and its formats.


def test_a_shard_holds_typed_rows_and_reads_them_back(tmp_path):
    rng = np.random.default_rng(0)
    rows = [
        ShardRow(f"clip{i}.mp3", f"Mening {i}.", 0.5 + i, rng.standard_normal((80, 3 + i)).astype(np.float16), 3 + i, -0.5 - i,
                 [50258, 100 + i, 50257], f"mbrola-sw{i}")
        for i in range(3)
    ]
    (tmp_path / "new.parquet").write_bytes(shard_bytes(rows, 80))
    table = read_shard(tmp_path / "new.parquet")
    assert tuple(table.column_names) == COLUMNS == tuple(f.name for f in dataclasses.fields(ShardRow))
    for row, back in zip(rows, (ShardRow.from_record(r) for r in table.to_pylist())):
        assert np.array_equal(back.input_features, row.input_features)
        assert dataclasses.replace(back, input_features=None) == dataclasses.replace(row, input_features=None)
    # Format 1 named the clip id column `path`; it reads back under today's name. Formats 1 and 2
    # have no speaker column; it reads back as "".
    (tmp_path / "old.parquet").write_bytes(shard_bytes(rows, 80, format_version=1))
    assert pq.read_schema(tmp_path / "old.parquet").names == ["path", *COLUMNS[1:-1]]
    assert read_shard(tmp_path / "old.parquet", columns=["clip_id"]).column("clip_id").to_pylist() == [r.clip_id for r in rows]
    (tmp_path / "v2.parquet").write_bytes(shard_bytes(rows, 80, format_version=2))
    assert pq.read_schema(tmp_path / "v2.parquet").names == list(COLUMNS[:-1])
    for old in ("old.parquet", "v2.parquet"):
        back = [ShardRow.from_record(r) for r in read_shard(tmp_path / old).to_pylist()]
        assert [r.speaker for r in back] == [""] * 3 and [r.clip_id for r in back] == [r.clip_id for r in rows]
    with pytest.raises(ValueError, match=r"expected \(80, 4\)"):  # features that do not match n_frames
        shard_bytes([dataclasses.replace(rows[0], n_frames=4)], 80)


def test_a_store_written_before_the_clip_id_column_still_reads_and_resumes_in_its_format(tmp_path, sv_corpus):
    """Stores of format 1 (the first) name the clip id column `path`. They still read,
    the column as `clip_id`, and a run that finishes one writes its missing shards as format 1 too,
    so no store mixes the two names."""
    out = tmp_path / "store"
    build_features(f"cv:{sv_corpus}", "test", out, FeatureConfig(model=PACKAGED_BASE, shard_size=2), workers=1, progress=False)
    ids = [r["clip_id"] for r in FeatureStore(out).dataset()]
    # What an older whisper-sv left: format 1 in the config, `path` in the shards, written by
    # pyarrow here rather than by shard_bytes; and its last shard not yet committed.
    config = json.loads((out / "feature_config.json").read_text())
    (out / "feature_config.json").write_text(json.dumps({**config, "format_version": 1}, indent=2, sort_keys=True) + "\n")
    lines = []
    for line in (out / "manifest.jsonl").read_text().splitlines():
        entry, shard = json.loads(line), out / json.loads(line)["shard"]
        table = pq.read_table(shard)
        table = table.drop_columns(["speaker"])  # format 3's column
        pq.write_table(table.rename_columns(["path" if n == "clip_id" else n for n in table.column_names]), shard,
                       compression="zstd", row_group_size=64)
        lines.append({**entry, "sha256": hashlib.sha256(shard.read_bytes()).hexdigest()})
    (out / lines[-1]["shard"]).unlink()
    (out / "manifest.jsonl").write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in lines[:-1]))
    kept = len(ids) - lines[-1]["rows"]

    store = FeatureStore(out)
    assert store.config.format_version == 1 and kept > 0
    assert [r["clip_id"] for r in store.dataset()] == [r.clip_id for r in store.rows()] == ids[:kept]
    assert [r["speaker"] for r in store.dataset()] == [""] * kept  # a column format 3 added
    assert [clip_id for clip_id, *_ in iter_inputs(str(out), "test", 80, [])] == ids[:kept]  # evaluation reads it

    again = build_features(f"cv:{sv_corpus}", "test", out, FeatureConfig(model=PACKAGED_BASE, shard_size=2), workers=1, progress=False)
    assert again["shards_written"] == 1 and FeatureStore(out).config.format_version == 1
    assert all(pq.read_schema(f).names[0] == "path" for f in FeatureStore(out).files)
    assert [r["clip_id"] for r in FeatureStore(out).dataset()] == ids


# ---------------------------------------------------------------------------------------------
# Crash safety.


def _corpus_copies(tmp_path: Path, sv_corpus: Path, copies: int) -> Path:
    """A Common Voice folder whose validated.tsv has `copies` renamed copies of each clip."""
    folder = tmp_path / "cv"
    (folder / "clips").mkdir(parents=True)
    rows = [line.split("\t") for line in (sv_corpus / "validated.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    out = ["\t".join(CV_HEADER)]
    for c in range(copies):
        for row in rows:
            name = f"copy{c}_{row[1]}"
            shutil.copy(sv_corpus / "clips" / row[1], folder / "clips" / name)
            out.append("\t".join([row[0], name] + row[2:]))
    (folder / "validated.tsv").write_text("\n".join(out) + "\n", encoding="utf-8")
    return folder


def _features_cmd(source: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "whisper_sv.cli", "features", "--source", f"cv:{source}", "--split", "validated",
        "--out", str(out), "--shard-size", "10", "--workers", "2", "--no-progress", "--model", PACKAGED_BASE, *extra,
    ]


def _manifest_lines(out: Path) -> int:
    path = out / "manifest.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.slow
def test_kill_9_at_three_random_points_then_resume_equals_an_uninterrupted_run(tmp_path, sv_corpus):
    source = _corpus_copies(tmp_path, sv_corpus, copies=4)  # 240 clips -> 24 shards of 10
    n_shards = 24
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(_features_cmd(source, reference), check=True, capture_output=True)

    rng = random.Random(3)
    for target in sorted(rng.sample(range(0, n_shards - 4), 3)):
        proc = subprocess.Popen(_features_cmd(source, killed), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while _manifest_lines(killed) < target and proc.poll() is None:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.05))  # land anywhere inside the next shard
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the parent and its workers, like an OOM kill
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        assert _manifest_lines(killed) < n_shards, "the run finished before the kill; the test proves nothing"

    committed = _manifest_lines(killed)
    done = subprocess.run(_features_cmd(source, killed), check=True, capture_output=True, text=True)
    assert f"({committed} already done)" in done.stdout  # only shards never committed were redone

    assert (killed / "manifest.jsonl").read_bytes() == (reference / "manifest.jsonl").read_bytes()
    manifest = FeatureStore(killed).manifest
    assert [m["index"] for m in manifest] == list(range(n_shards))
    for m in manifest:
        assert hashlib.sha256((killed / m["shard"]).read_bytes()).hexdigest() == m["sha256"]
        assert (killed / m["shard"]).read_bytes() == (reference / m["shard"]).read_bytes()
    ids = [i for m in manifest for i in read_shard(killed / m["shard"], columns=["clip_id"]).column("clip_id").to_pylist()]
    ids += [line.split("\t")[0] for line in (killed / "rejects.tsv").read_text().splitlines()[1:]]
    expected = [line.split("\t")[1] for line in (source / "validated.tsv").read_text().splitlines()[1:]]
    assert sorted(ids) == sorted(expected) and len(set(ids)) == len(ids)
    assert not [p for p in killed.iterdir() if p.name.endswith(".tmp")]


def test_a_different_config_on_resume_is_refused(tmp_path, sv_corpus):
    out = tmp_path / "store"
    build_features(f"cv:{sv_corpus}", "test", out, FeatureConfig(model=PACKAGED_BASE, shard_size=3), workers=1, progress=False)
    before = (out / "manifest.jsonl").read_bytes()
    with pytest.raises(ConfigMismatch, match="shard_size"):
        build_features(f"cv:{sv_corpus}", "test", out, FeatureConfig(model=PACKAGED_BASE, shard_size=4), workers=1, progress=False)
    with pytest.raises(ConfigMismatch, match="smoothing"):
        build_features(f"cv:{sv_corpus}", "test", out, FeatureConfig(model=PACKAGED_BASE, shard_size=3, smoothing="gaussian"),
                       workers=1, progress=False)
    assert (out / "manifest.jsonl").read_bytes() == before
    again = build_features(f"cv:{sv_corpus}", "test", out, FeatureConfig(model=PACKAGED_BASE, shard_size=3), workers=1, progress=False)
    assert again["shards_written"] == 0 and again["shards_skipped"] == 2


def test_each_kind_of_bad_clip_lands_in_rejects_with_its_reason(tmp_path, sv_corpus):
    folder = tmp_path / "bad"
    clips = folder / "clips"
    clips.mkdir(parents=True)
    good = sorted((sv_corpus / "clips").glob("*.mp3"))[:3]
    for g in good:
        shutil.copy(g, clips / g.name)
    noise = (0.1 * np.random.default_rng(0).standard_normal(31 * 16000)).astype(np.float32)
    sf.write(clips / "long.wav", noise, 16000)
    sf.write(clips / "empty.wav", np.zeros(0, np.float32), 16000)
    (clips / "garbage.mp3").write_bytes(os.urandom(4096))
    bad = {
        "long.wav": ("Den här är för lång.", "too_long"),
        "empty.wav": ("Tom fil.", "empty"),
        "garbage.mp3": ("Trasig fil.", "undecodable"),
        "missing.mp3": ("Finns inte.", "missing"),
        good[0].name: ("", "empty_text"),
        good[1].name: (" ".join(["hej"] * 500), "labels_too_long"),
    }
    rows = [(name, text) for name, (text, _) in bad.items()] + [(good[2].name, "En bra mening.")]
    lines = ["\t".join(CV_HEADER)] + [
        "\t".join({"path": p, "sentence": s, "locale": "sv-SE"}.get(c, "") for c in CV_HEADER) for p, s in rows
    ]
    (folder / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")

    out = tmp_path / "store"
    summary = build_features(f"cv:{folder}", "test", out, FeatureConfig(model=PACKAGED_BASE, shard_size=4), workers=1, progress=False)
    assert summary["clips_written"] == 1
    assert summary["rejected"] == {reason: 1 for _, reason in bad.values()}
    table = [line.split("\t") for line in (out / "rejects.tsv").read_text(encoding="utf-8").splitlines()]
    assert table[0] == ["id", "reason", "detail"]
    assert {r[0]: r[1] for r in table[1:]} == {name: reason for name, (_, reason) in bad.items()}
    assert [r["clip_id"] for r in FeatureStore(out).dataset()] == [good[2].name]


@pytest.mark.slow
def test_hub_source_with_smoothing_through_the_worker_pool(tmp_path, sv_corpus, feature_extractor):
    import datasets

    clips = sorted((sv_corpus / "clips").glob("*.mp3"))[:3]
    ds = datasets.Dataset.from_dict({
        "audio": [{"bytes": p.read_bytes(), "path": p.name} for p in clips],
        "transcription": ["En.", "Två.", "Tre."],
    }).cast_column("audio", datasets.Audio())
    (tmp_path / "hf" / "data").mkdir(parents=True)
    ds.to_parquet(str(tmp_path / "hf" / "data" / "test-00000-of-00001.parquet"))

    spec = {"kind": "gaussian", "ksize": 5, "sigma": 1.0}
    config = FeatureConfig(model=PACKAGED_BASE, shard_size=2, smoothing=spec)
    summary = build_features(f"hf:{tmp_path / 'hf'}", "test", tmp_path / "store", config, workers=2, progress=False)
    assert summary["clips_written"] == 3 and summary["shards_written"] == 2
    store = FeatureStore(tmp_path / "store")
    assert store.config.smoothing == Smoothing(**spec)
    assert json.loads((tmp_path / "store" / "feature_config.json").read_text())["smoothing"]["kind"] == "gaussian"
    rows = list(store.dataset())
    assert [r["sentence"] for r in rows] == ["En.", "Två.", "Tre."]
    for row, features, clip in zip(rows, collate_features(rows).numpy(), clips):
        exact = feature_extractor(load_audio(clip), sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
        assert np.abs(features - smooth_image(exact, Smoothing(**spec))).max() <= FP16_TOL
