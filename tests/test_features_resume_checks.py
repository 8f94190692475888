"""Resuming checks what it skips, and stopping is clean: a committed feature shard whose file was
changed, truncated or deleted is redone (the store ends equal to a fresh one), and Ctrl-C stops
``whisper-sv synth`` in one line, leaving a corpus that the same command finishes."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import SV_CORPUS, ctrl_c_works

from whisper_sv.data.feature_config import FeatureConfig
from whisper_sv.features.build import build_features

# conftest's sv_stores: the train split of sv_corpus (48 clips) in shards of 16, so 3 shards.
STORE_CONFIG = FeatureConfig(shard_size=16)


def _files(folder: Path) -> dict[str, str]:
    """``{name: sha256}`` of the store's files (not the lock files, which say who last wrote)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".")}


def _resume(source: Path, out: Path) -> dict:
    return build_features(f"cv:{source}", "train", out, STORE_CONFIG, workers=1, progress=False)


def _damage(path: Path, how: str) -> None:
    if how == "changed":  # same length, a few bytes flipped in the middle
        data = bytearray(path.read_bytes())
        for i in range(len(data) // 2, len(data) // 2 + 8):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "deleted":
        path.unlink()
    elif how == "appended":  # a rejects file that is often empty: add a line rather than flip bytes
        with path.open("ab") as f:
            f.write(b'{"detail": "", "id": "x.mp3", "reason": "empty"}\n')


@pytest.mark.parametrize(("target", "how"), [
    ("parquet", "changed"), ("parquet", "truncated"), ("parquet", "deleted"),
    ("rejects.jsonl", "appended"), ("rejects.jsonl", "deleted"),
])
def test_a_damaged_committed_shard_is_redone_and_the_store_equals_a_fresh_one(tmp_path, sv_corpus, sv_stores, caplog,
                                                                           target, how):
    fresh = sv_stores["train"]
    out = tmp_path / "store"
    shutil.copytree(fresh, out)
    _damage(out / f"train-00001.{target}", how)  # the middle shard: its redone line lands after shard 2's

    with caplog.at_level(logging.WARNING, logger="whisper_sv.features.build"):
        summary = _resume(sv_corpus, out)

    assert (summary["shards_written"], summary["shards_skipped"], summary["shards_redone"]) == (1, 2, 1)
    said = [r.getMessage() for r in caplog.records if "redoing" in r.getMessage()]
    assert len(said) == 1 and f"train-00001.{target}" in said[0] and "\n" not in said[0]
    assert _files(out) == _files(fresh)  # manifest.jsonl (lines in shard order), shards, rejects: byte for byte
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_the_cli_redoes_every_damaged_shard_and_says_so_in_one_line(tmp_path, sv_corpus, sv_stores):
    fresh = sv_stores["train"]
    out = tmp_path / "store"
    shutil.copytree(fresh, out)
    _damage(out / "train-00000.parquet", "deleted")
    _damage(out / "train-00002.parquet", "truncated")

    cmd = [sys.executable, "-m", "whisper_sv.cli", "features", "--source", f"cv:{sv_corpus}", "--split", "train",
           "--out", str(out), "--shard-size", "16", "--workers", "1", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)

    assert done.returncode == 0, done.stderr
    redone = [line for line in done.stderr.splitlines() if "redoing" in line]
    assert len(redone) == 1, done.stderr
    assert "train-00000.parquet missing" in redone[0] and "train-00002.parquet changed" in redone[0]
    assert "wrote 32 clips in 2 shards (1 already done)" in done.stdout
    assert _files(out) == _files(fresh)


# ---------------------------------------------------------------------------------------------
# Ctrl-C in synth.


_PROGRESS = re.compile(r"synth:\s+\d+%\|")  # tqdm's bar, redrawn on stderr


def _corpus_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _synth_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "whisper_sv.cli", "synth", "--out", str(out), "--clips", str(SV_CORPUS["clips"]),
            "--seed", str(SV_CORPUS["seed"]), "--voices", SV_CORPUS["voices"], "--realism", str(SV_CORPUS["realism"]).lower(),
            "--workers", "2"]


def test_ctrl_c_stops_synth_in_one_line_and_the_same_command_finishes_the_corpus(tmp_path, sv_corpus):
    out = tmp_path / "corpus"
    clips = out / "clips"
    # Its own session, and SIGINT to the whole group: what Ctrl-C in a terminal does (the workers get it too).
    proc = subprocess.Popen(_synth_cmd(out), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ctrl_c_works)
    try:
        deadline = time.time() + 300
        while not (clips.is_dir() and len(list(clips.glob("*.mp3"))) >= 2):
            assert proc.poll() is None, "synth ended before it could be interrupted"
            assert time.time() < deadline, "no clip within 300 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert not (out / ".completed").exists(), "synth finished before the interrupt; the test proves nothing"
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    said = [line for line in re.split(r"[\r\n]", stderr) if line.strip() and not _PROGRESS.match(line)]
    assert len(said) == 1 and "run the same command again" in said[0], stderr
    # Nothing half-written: no temporary file left, and every clip under its final name is finished.
    assert not [p for p in clips.iterdir() if p.name.startswith(".")]
    made = sorted(clips.glob("*.mp3"))
    assert made and len(made) < SV_CORPUS["clips"]
    for clip in made:
        assert clip.read_bytes() == (sv_corpus / "clips" / clip.name).read_bytes()

    subprocess.run(_synth_cmd(out), check=True, capture_output=True, timeout=600)
    assert _corpus_digest(out) == _corpus_digest(sv_corpus)  # TSVs, synth.json, README, every clip: as uninterrupted
