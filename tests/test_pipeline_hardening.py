"""The pipeline against clumsy input and crashes: the feature store never doubles a row or trains on a wrong
label, and every CLI user error is one line on stderr with exit code 2.

Each test here failed on the code before these fixes, except two guards
that keep the fixes honest: a dead writer's lock is taken over, and a bug keeps its traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from whisper_sv.cli import main
from whisper_sv.data.feature_config import FeatureConfig
from whisper_sv.data.feature_store import FeatureStore
from whisper_sv.data.shard_format import read_shard
from whisper_sv.features.build import build_features
from whisper_sv.models.specs import PACKAGED_BASE

ROOT = Path(__file__).resolve().parents[1]
CONFIG = FeatureConfig(model=PACKAGED_BASE, shard_size=4)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "whisper_sv.cli", *args]


def _exit_code(argv: list[str]) -> int:
    """What `whisper-sv ARGV` exits with, from `main` returning or argparse exiting."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def _stored_ids(out: Path) -> list[str]:
    return [i for f in FeatureStore(out).files for i in read_shard(f, columns=["clip_id"]).column("clip_id").to_pylist()]


def _rejects(out: Path) -> list[list[str]]:
    return [line.split("\t") for line in (out / "rejects.tsv").read_text(encoding="utf-8").splitlines()[1:]]


def _cv_copy(tmp_path: Path, sv_corpus: Path, split: str = "test") -> Path:
    folder = tmp_path / "cv"
    shutil.copytree(sv_corpus / "clips", folder / "clips")
    shutil.copy(sv_corpus / f"{split}.tsv", folder / f"{split}.tsv")
    return folder


# ---------------------------------------------------------------------------------------------
# 8. One writer per store, one layout per folder.


@pytest.mark.slow
def test_a_second_writer_is_refused_while_the_first_runs(tmp_path, sv_corpus):
    out, gate = tmp_path / "store", tmp_path / "go"
    args = ["features", "--source", f"cv:{sv_corpus}", "--split", "validated", "--out", str(out),
            "--shard-size", "4", "--workers", "1", "--no-progress", "--model", PACKAGED_BASE]
    # The first run commits shard 0, then waits at shard 1 until the test lets it go.
    first = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\n"
        "import whisper_sv.features.build as f\n"
        "real = f.process_shard\n"
        "def gated(index, *rest):\n"
        f"    while index > 0 and not os.path.exists({str(gate)!r}): time.sleep(0.05)\n"
        "    return real(index, *rest)\n"
        "f.process_shard = gated\n"
        "from whisper_sv.cli import main\n"
        f"sys.exit(main({args!r}))\n"
    )], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not (out / "manifest.jsonl").is_file() or not (out / "manifest.jsonl").read_bytes():
            assert first.poll() is None, first.communicate()
            time.sleep(0.05)
        second = subprocess.run(_cli(*args), capture_output=True, text=True)
        assert second.returncode == 2, second.stderr
        assert f"being written by PID {first.pid}" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1 and "Traceback" not in second.stderr
    finally:
        gate.touch()
        first.communicate(timeout=300)
    assert first.returncode == 0
    ids = _stored_ids(out) + [r[0] for r in _rejects(out)]
    assert len(ids) == len(set(ids)) == 60  # every clip once: nothing doubled by the refused run


def test_the_lock_of_a_dead_writer_is_taken_over(tmp_path, sv_corpus):
    out = tmp_path / "store"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / ".manifest.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": "here", "since": "then"}))
    summary = build_features(f"cv:{sv_corpus}", "test", out, CONFIG, workers=1, progress=False)
    assert summary["clips_written"] == 6


@pytest.mark.slow
def test_sharded_and_plain_runs_are_never_mixed(tmp_path, sv_corpus):
    source = f"cv:{sv_corpus}"
    sharded, plain = tmp_path / "sharded", tmp_path / "plain"
    build_features(source, "train", sharded, CONFIG, workers=1, shard_index=0, num_shards=2, progress=False)
    with pytest.raises(ValueError, match="--num-shards 2"):
        build_features(source, "train", sharded, CONFIG, workers=1, progress=False)
    with pytest.raises(ValueError, match="--num-shards 3"):  # another split of the source: also overlaps
        build_features(source, "train", sharded, CONFIG, workers=1, shard_index=1, num_shards=3, progress=False)
    build_features(source, "train", sharded, CONFIG, workers=1, shard_index=1, num_shards=2, progress=False)
    assert sorted(_stored_ids(sharded)) == sorted(set(_stored_ids(sharded))) and len(FeatureStore(sharded)) == 48

    build_features(source, "train", plain, CONFIG, workers=1, progress=False)
    with pytest.raises(ValueError, match="plain run"):
        build_features(source, "train", plain, CONFIG, workers=1, shard_index=0, num_shards=2, progress=False)
    assert len(FeatureStore(plain)) == 48

    # A folder mixed before this check existed (or filled by two runs at once) reads each shard once.
    shutil.copy(sharded / "manifest-0-of-2.jsonl", plain / "manifest-0-of-2.jsonl")
    with (plain / "manifest.jsonl").open("a") as f:
        f.write((plain / "manifest.jsonl").read_text().splitlines()[0] + "\n")
    ids = [row["clip_id"] for row in FeatureStore(plain).dataset()]
    assert len(ids) == len(set(ids)) == 48
    line = json.loads((plain / "manifest.jsonl").read_text().splitlines()[0])
    (plain / "manifest-1-of-2.jsonl").write_text(json.dumps({**line, "sha256": "0" * 64}) + "\n")
    with pytest.raises(ValueError, match="committed twice with different contents"):
        len(FeatureStore(plain))


def test_a_run_leaves_the_temp_files_of_live_writers_alone(tmp_path):
    from whisper_sv.common.fileio import remove_dead_temp_files

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = tmp_path / f".train-00001.parquet.{os.getpid()}.tmp"  # another --shard-index's shard, mid-write
    litter = tmp_path / f".train-00000.parquet.{int(dead.stdout)}.tmp"  # a killed run's
    live.write_bytes(b"x")
    litter.write_bytes(b"x")
    remove_dead_temp_files(tmp_path)
    assert live.exists() and not litter.exists()


# ---------------------------------------------------------------------------------------------
# 9-10. A truncated clip, bad bytes and short rows are rejects with their reasons.


def test_truncated_clip_bad_bytes_and_short_rows_are_rejects_that_add_up(tmp_path, sv_corpus):
    folder = _cv_copy(tmp_path, sv_corpus)
    lines = (folder / "test.tsv").read_bytes().splitlines(keepends=True)  # header + 6 rows
    assert len(lines) == 7
    truncated = lines[1].split(b"\t")[1].decode()
    clip = folder / "clips" / truncated
    data = clip.read_bytes()
    clip.write_bytes(data[: len(data) // 3])  # the header still declares the whole clip
    bad = lines[2].replace(b"\t", b"\t\xe5 ", 1)  # 'å' in Latin-1 inside the row: not UTF-8
    short = b"\t".join(lines[3].split(b"\t")[:4]) + b"\n"
    (folder / "test.tsv").write_bytes(b"".join([lines[0], lines[1], bad, short, *lines[4:]]))

    out = tmp_path / "store"
    summary = build_features(f"cv:{folder}", "test", out, CONFIG, workers=1, progress=False)
    assert summary["rejected"] == {"truncated": 1, "bad_encoding": 1, "bad_row": 1}
    rejects = {r[1]: r for r in _rejects(out)}
    assert rejects["truncated"][0] == truncated and "declares" in rejects["truncated"][2]
    assert rejects["bad_encoding"][0] == "test.tsv:3" and "0xe5" in rejects["bad_encoding"][2]
    assert rejects["bad_row"][0] == "test.tsv:4" and "4 fields, expected 13" in rejects["bad_row"][2]
    assert summary["clips_written"] + len(_rejects(out)) == len(lines) - 1  # every row accounted for
    assert truncated not in _stored_ids(out)


# ---------------------------------------------------------------------------------------------
# 11. A mistyped --source writes nothing; a folder it left behind does not block the right one.


def test_a_mistyped_source_writes_nothing_and_the_corrected_command_runs(tmp_path, sv_corpus, capsys):
    out = tmp_path / "store"

    def features(source: str, split: str = "test") -> int:
        return main(["features", "--source", source, "--split", split, "--out", str(out), "--workers", "1",
                     "--no-progress", "--model", PACKAGED_BASE])

    assert features(f"cv:{sv_corpus}-typo") == 2
    err = capsys.readouterr().err
    assert err.startswith("whisper-sv features: error: ") and "no such folder" in err and len(err.splitlines()) == 1
    assert not out.exists()
    assert features(f"cv:{sv_corpus}", split="nosuch") == 2
    assert "pass --split" in capsys.readouterr().err and not out.exists()

    # A folder such a typo left behind before this fix (a config, no shard) is taken over.
    stale = FeatureConfig(source=f"cv:{sv_corpus}-typo", split="test", model=PACKAGED_BASE, n_mels=80)
    out.mkdir()
    (out / "feature_config.json").write_text(json.dumps(stale.to_dict()))
    assert features(f"cv:{sv_corpus}") == 0
    assert FeatureStore(out).config.source == f"cv:{sv_corpus}" and len(FeatureStore(out)) == 6


# ---------------------------------------------------------------------------------------------
# 12. Workers die with their parent.


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
@pytest.mark.slow
def test_kill_9_of_the_parent_takes_its_workers_with_it(tmp_path, sv_corpus):
    out = tmp_path / "store"
    proc = subprocess.Popen(_cli("features", "--source", f"cv:{sv_corpus}", "--split", "validated", "--out", str(out),
                                 "--shard-size", "1", "--workers", "2", "--no-progress", "--model", PACKAGED_BASE),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    manifest = out / "manifest.jsonl"
    while proc.poll() is None and not (manifest.is_file() and manifest.read_bytes()):  # a shard is done
        workers |= _descendants(proc.pid)
        time.sleep(0.05)
    workers |= _descendants(proc.pid)
    assert proc.poll() is None, "the run finished before the kill; the test proves nothing"
    assert len(workers) >= 2
    proc.send_signal(signal.SIGKILL)  # the parent only, as `kill -9 PID` does
    proc.wait()
    deadline = time.monotonic() + 30  # a bound on "alive for minutes", not a speed requirement
    while any(_running(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = [p for p in workers if _running(p)]
    for pid in alive:  # leave no orphans behind a failing test
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"{len(alive)} worker processes outlived their parent"


# ---------------------------------------------------------------------------------------------
# 13. User errors: one line on stderr, exit 2, no traceback (unless --verbose); local paths stay local.


def _preset(tmp_path: Path, sv_stores, **extra) -> Path:
    values = {"model": "random:tiny", "train_data": str(sv_stores["train"]), "output_dir": str(tmp_path / "run"),
              "figure": None, "max_steps": 1, **extra}
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(values))
    return path


@pytest.mark.parametrize("argv, says", [
    (["--learning_rate", "abc"], "learning_rate='abc': expected a number"),
    (["--max_steps", "ten"], "max_steps='ten': expected an integer"),
    (["--freeze_encoder", "yes"], "freeze_encoder='yes': expected true or false"),
    (["--learnin_rate", "1e-4"], "did you mean 'learning_rate'"),
])
def test_train_refuses_bad_values_and_keys_in_one_line(tmp_path, sv_stores, capsys, argv, says):
    assert main(["train", str(_preset(tmp_path, sv_stores)), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("whisper-sv train: error: ") and says in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # refused before any data or model was loaded


def test_a_model_spec_that_looks_like_a_path_never_goes_to_the_hub(tmp_path, sv_stores, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("asked the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    from whisper_sv.models.specs import resolve_model

    for spec in ("runs/nosuch", "./nosuch", "runs/nosuch/final"):
        with pytest.raises(ValueError, match="no such folder"):
            resolve_model(spec)
    assert resolve_model("openai/whisper-small") == "openai/whisper-small"  # still a Hub id
    assert main(["train", str(_preset(tmp_path, sv_stores)), "--model", "runs/nosuch"]) == 2
    err = capsys.readouterr().err
    assert "model 'runs/nosuch': no such folder" in err and len(err.splitlines()) == 1


def test_every_stage_prints_user_errors_as_one_line_and_verbose_shows_the_traceback(tmp_path, capsys):
    (tmp_path / "features.json").write_text(json.dumps({"shard_size": "abc"}))
    cases = [
        (["features", "--source", "cv:x", "--split", "test", "--out", str(tmp_path / "f"), "--config",
          str(tmp_path / "features.json")], "shard_size='abc': expected an integer"),
        (["synth", "--out", str(tmp_path / "s"), "--clips", "1"], "need at least one clip per split"),
        (["evaluate", "--model", "random:tiny", "--data", str(tmp_path)], "neither a feature store"),
        (["evaluate", "--model", "random:tiny", "--data", "nosuch-spec"], "unknown source spec"),
        (["export", "--model", "./nosuch", "--out", str(tmp_path / "ct2")], "no such folder"),
        (["train", str(tmp_path / "nosuch.json")], "no such file, and no shipped preset"),
        (["features", "--source", "cv:x", "--split", "test", "--out", str(tmp_path / "f"), "--workers", "abc"],
         "invalid int value"),
    ]
    for argv, says in cases:
        assert _exit_code(argv) == 2, argv
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
    from whisper_sv.common.errors import UserError

    with pytest.raises(UserError, match="no such file"):
        main(["train", str(tmp_path / "nosuch.json"), "--verbose"])
    with pytest.raises(ValueError, match="unknown source spec"):
        main(["-v", "evaluate", "--model", "random:tiny", "--data", "nosuch-spec"])


def test_a_bug_keeps_its_traceback(monkeypatch):
    import whisper_sv.synth.corpus as synth

    def broken(*args, **kwargs):
        return {}["a bug"]

    monkeypatch.setattr(synth, "synthesize", broken)
    with pytest.raises(KeyError):
        main(["synth", "--out", "unused"])


def test_one_line_on_stderr_from_the_installed_entry_point(tmp_path):
    done = subprocess.run(_cli("features", "--source", f"cv:{tmp_path}/nosuch", "--split", "test", "--out", str(tmp_path / "o")),
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"whisper-sv features: error: {tmp_path}/nosuch: no such folder; a cv: source is a Common Voice release folder (clips/ + *.tsv)"
    ]


def test_an_eval_store_that_differs_only_in_shard_size_is_accepted(tmp_path, sv_corpus, sv_stores):
    from whisper_sv.training.config import build_config
    from whisper_sv.training.train import open_stores

    dev = tmp_path / "dev-shard-3"
    build_features(f"cv:{sv_corpus}", "dev", dev, FeatureConfig(shard_size=3), workers=1, progress=False)
    cfg = build_config({"model": "random:tiny", "train_data": str(sv_stores["train"]), "eval_data": str(dev),
                        "output_dir": str(tmp_path / "run")})
    (tmp_path / "run").mkdir()
    train, evals, _ = open_stores(cfg, tmp_path / "run")
    assert (len(train), len(evals)) == (48, 6)
    smoothed = tmp_path / "dev-smoothed"
    build_features(f"cv:{sv_corpus}", "dev", smoothed, FeatureConfig(shard_size=3, smoothing="gaussian"), workers=1, progress=False)
    with pytest.raises(ValueError, match="smoothing"):  # what changes the numbers is still refused
        open_stores(build_config({**cfg.to_dict(), "eval_data": str(smoothed)}), tmp_path / "run")
