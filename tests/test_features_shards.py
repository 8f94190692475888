"""The ``--num-shards`` runs of one source merge into the store a one-machine run writes.

The corpus is made here (11 rows of short generated WAVs, one missing clip and one empty
transcript, so the merged rejects are checked too) and cut into shards of 3: four shards, of
which run 0 of 2 owns 0 and 2, run 1 owns 1 and 3.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from whisper_sv.cli import main
from whisper_sv.common.errors import UserError
from whisper_sv.common.locks import FileLock
from whisper_sv.data.feature_config import FeatureConfig
from whisper_sv.data.feature_store import FeatureStore
from whisper_sv.data.sources import CV_HEADER
from whisper_sv.features import shard_merge
from whisper_sv.features.build import build_features
from whisper_sv.features.shard_merge import done_record_path, merge_shards
from whisper_sv.models.specs import PACKAGED_BASE

CONFIG = FeatureConfig(model=PACKAGED_BASE, shard_size=3)
SENTENCES = ["Hej på dig.", "Det regnar i dag.", "Vi ses i morgon.", "Katten sover.", "Jag heter Anna.",
             "Tåget är sent.", "Kaffe, tack.", "Var ligger stationen?", "Tack så mycket."]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A Common Voice folder whose test.tsv has 9 good clips, a missing clip and an empty transcript."""
    folder = tmp_path_factory.mktemp("cv")
    (folder / "clips").mkdir()
    rng = np.random.default_rng(14)
    rows = []
    for i, sentence in enumerate(SENTENCES):
        name = f"clip{i}.wav"
        t = np.arange(int(16000 * (0.2 + 0.05 * i))) / 16000
        audio = 0.3 * np.sin(2 * np.pi * (150 + 20 * i) * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(folder / "clips" / name, audio.astype(np.float32), 16000)
        rows.append((name, sentence))
    rows.insert(4, ("gone.wav", "Den här finns inte."))  # reject: missing
    rows.insert(8, ("clip0.wav", ""))  # reject: empty_text
    lines = ["\t".join(CV_HEADER)] + ["\t".join({"path": p, "sentence": s}.get(c, "") for c in CV_HEADER) for p, s in rows]
    (folder / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def _run(corpus: Path, out: Path, index: int = 0, num: int = 1, config: FeatureConfig = CONFIG) -> dict:
    return build_features(f"cv:{corpus}", "test", out, config, workers=1, shard_index=index, num_shards=num, progress=False)


@pytest.fixture(scope="module")
def plain(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plain") / "store"
    _run(corpus, out)
    return out


@pytest.fixture(scope="module")
def two_folders(corpus, tmp_path_factory) -> tuple[Path, Path]:
    """Runs 0 and 1 of 2, each in its own folder, as two machines with local disks leave them."""
    root = tmp_path_factory.mktemp("machines")
    _run(corpus, root / "m0", 0, 2)
    _run(corpus, root / "m1", 1, 2)
    return root / "m0", root / "m1"


def _files(folder: Path) -> dict[str, str]:
    """Every visible file of a store and its sha256 (the lock files are hidden and empty)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest, dirs_exist_ok=True)
    return dest


def test_two_num_shards_runs_merged_equal_one_run(tmp_path, plain, two_folders, capsys):
    m0, m1 = two_folders
    before = (_files(m0), _files(m1))
    assert json.loads(done_record_path(m1, 1, 2).read_text())["source_shards"] == 4
    out = tmp_path / "merged"
    assert main(["features", "--out", str(out), "--merge", str(m0), str(m1), "--no-progress"]) == 0
    assert "9 clips in 4 shards" in capsys.readouterr().out

    assert (out / "manifest.jsonl").read_bytes() == (plain / "manifest.jsonl").read_bytes()
    assert _files(out) == _files(plain)  # shards, rejects files, rejects.tsv, config: names and sha256
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in plain.iterdir())  # and the lock files
    assert len((plain / "rejects.tsv").read_text().splitlines()) == 3  # header, missing, empty_text
    assert (_files(m0), _files(m1)) == before  # the runs' folders are only read
    store = FeatureStore(out)
    assert [r["clip_id"] for r in store.dataset()] == [r["clip_id"] for r in FeatureStore(plain).dataset()]


def test_a_plain_run_on_the_merged_store_finds_nothing_to_do(tmp_path, corpus, two_folders):
    out = tmp_path / "merged"
    merge_shards(out, two_folders, progress=False)
    summary = _run(corpus, out)
    assert (summary["shards_written"], summary["shards_skipped"]) == (0, 4)


def test_runs_copied_into_one_folder_merge_in_place_and_again(tmp_path, plain, two_folders):
    out = _copy(two_folders[1], _copy(two_folders[0], tmp_path / "shared"))
    summary = merge_shards(out, progress=False)
    assert (summary["shards"], summary["clips_written"], summary["files_copied"]) == (4, 9, 0)
    assert _files(out) == _files(plain)
    assert not list(out.glob("manifest-*")) and not list(out.glob(".manifest-*"))
    merge_shards(out, progress=False)  # a merge re-run finds a plain store and leaves it as it is
    assert _files(out) == _files(plain)


def test_runs_sharing_one_folder_merge(tmp_path, corpus, plain):
    out = tmp_path / "shared"
    _run(corpus, out, 1, 2)
    _run(corpus, out, 0, 2)
    merge_shards(out, progress=False)
    assert _files(out) == _files(plain)


@pytest.mark.parametrize("target, nth", [("_copy_checked", 2), ("write_rejects_table", 1)])
def test_a_killed_merge_run_again_finishes(tmp_path, plain, two_folders, monkeypatch, target, nth):
    """Killed after copying one of run 1's files in, or after writing manifest.jsonl."""
    out = _copy(two_folders[0], tmp_path / "out")  # run 0 is here already, run 1 is copied in
    real, calls = getattr(shard_merge, target), []

    def dies(*args, **kwargs):
        calls.append(1)
        if len(calls) == nth:
            raise KeyboardInterrupt  # as a kill would, midway
        return real(*args, **kwargs)

    monkeypatch.setattr(shard_merge, target, dies)
    with pytest.raises(KeyboardInterrupt):
        merge_shards(out, [two_folders[1]], progress=False)
    assert _files(out) != _files(plain)
    monkeypatch.undo()
    merge_shards(out, [two_folders[1]], progress=False)
    assert _files(out) == _files(plain)
    assert not list(out.glob(".*.tmp"))


def test_a_merge_killed_while_cleaning_up_run_again_finishes(tmp_path, plain, two_folders):
    out = tmp_path / "out"
    merge_shards(out, two_folders, progress=False)
    shutil.copy(two_folders[0] / "manifest-0-of-2.jsonl", out)  # its completion record was removed, it was not
    merge_shards(out, progress=False)
    assert _files(out) == _files(plain)


def test_a_missing_or_unfinished_run_is_refused(tmp_path, two_folders):
    m0, m1 = two_folders
    with pytest.raises(UserError, match="run 1 of 2 is missing"):
        merge_shards(tmp_path / "a", [m0], progress=False)
    assert not (tmp_path / "a").exists()  # a refused merge leaves no trace
    killed = _copy(m1, tmp_path / "killed")
    done_record_path(killed, 1, 2).unlink()  # what a run killed before its last shard leaves
    with pytest.raises(UserError, match="run 1 of 2 .* did not finish"):
        merge_shards(tmp_path / "b", [m0, killed], progress=False)
    assert not (tmp_path / "b" / "manifest.jsonl").exists()


def test_runs_of_two_num_shards_or_two_configs_are_refused(tmp_path, corpus, two_folders):
    m0, m1 = two_folders
    three = tmp_path / "three"
    _run(corpus, three, 0, 3)
    with pytest.raises(UserError, match="--num-shards 2 and 3 are mixed"):
        merge_shards(tmp_path / "a", [m0, m1, three], progress=False)
    other = tmp_path / "other"
    _run(corpus, other, 1, 2, FeatureConfig(model=PACKAGED_BASE, shard_size=3, max_label_tokens=400))
    with pytest.raises(UserError, match="different feature configs .*max_label_tokens"):
        merge_shards(tmp_path / "b", [m0, other], progress=False)


def test_a_damaged_copy_is_refused(tmp_path, two_folders):
    m0, m1 = two_folders
    damaged = _copy(m1, tmp_path / "damaged")
    shard = damaged / "test-00003.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])  # a copy cut short
    with pytest.raises(UserError, match="do not match the sha256 of test-00003.parquet"):
        merge_shards(tmp_path / "a", [m0, damaged], progress=False)
    manifest = damaged / "manifest-1-of-2.jsonl"
    manifest.write_text(manifest.read_text().splitlines()[0] + "\n")
    with pytest.raises(UserError, match="not the manifest its run finished with"):
        merge_shards(tmp_path / "b", [m0, damaged], progress=False)


def test_a_run_still_writing_is_refused(tmp_path, two_folders):
    shared = _copy(two_folders[0], tmp_path / "shared")
    lock = FileLock(shared / ".manifest-1-of-2.lock")
    assert lock.acquire()
    try:
        with pytest.raises(UserError, match="still being written by PID"):
            merge_shards(shared, [two_folders[1]], progress=False)
    finally:
        lock.release()


def test_cli_errors_are_one_line(tmp_path, two_folders, capsys):
    assert main(["features", "--out", str(tmp_path / "a"), "--merge", str(two_folders[0]), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "run 1 of 2 is missing" in err and len(err.strip().splitlines()) == 1
    assert main(["features", "--out", str(tmp_path / "b"), "--split", "test"]) == 2
    assert "--source and --split are required" in capsys.readouterr().err


def test_a_run_started_again_is_unfinished_until_it_ends(tmp_path, corpus, two_folders, monkeypatch):
    import whisper_sv.features.build

    folder = _copy(two_folders[1], tmp_path / "m1")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(whisper_sv.features.build, "_run_shards", killed)
    with pytest.raises(KeyboardInterrupt):
        _run(corpus, folder, 1, 2)  # say the source grew: this run may commit more shards before it ends
    assert not done_record_path(folder, 1, 2).exists()
