"""`whisper_sv.common.fileio`: a killed write never shows under the final name, litter is told apart by PID,
and a folder refuses a configuration other than the one it was made with, in one line."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import asdict

import pytest

from whisper_sv.common import fileio
from whisper_sv.common.errors import UserError
from whisper_sv.common.fileio import (
    atomic_folder,
    claim_folder,
    remove_dead_temp_files,
    sha256_file,
    write_atomic,
    write_json,
)
from whisper_sv.synth import corpus as synth


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(done.stdout)


def _run_killed(code: str) -> int:
    """Run `code` in a child that SIGKILLs itself where the code says; returns the child's PID."""
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    return int(child.stdout.split()[0])


# ---------------------------------------------------------------------------------------------
# Files


def test_write_atomic_replaces_the_content_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "report.json"
    write_atomic(path, "old")
    write_json(path, {"wer": 0.5, "ord": "å"})
    assert path.read_text(encoding="utf-8") == '{\n  "wer": 0.5,\n  "ord": "\\u00e5"\n}\n'
    assert os.listdir(tmp_path) == ["report.json"]


def test_a_write_that_fails_before_the_rename_leaves_the_old_content(tmp_path, monkeypatch):
    path = tmp_path / "manifest.json"
    write_atomic(path, b"old")

    def no_rename(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(fileio.os, "replace", no_rename)
    with pytest.raises(OSError, match="disk gone"):
        write_atomic(path, b"new, and longer than the old")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["manifest.json"]  # the temp file went with the error


def test_a_write_killed_midway_leaves_the_old_content_and_litter_of_its_pid(tmp_path):
    path = tmp_path / "shard.parquet"
    path.write_bytes(b"old")
    pid = _run_killed(f"""
        import os, signal
        from whisper_sv.common.fileio import atomic_file
        print(os.getpid(), flush=True)
        with atomic_file({str(path)!r}) as f:
            f.write(b"half of the new")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert path.read_bytes() == b"old"
    litter = [p for p in tmp_path.iterdir() if p != path]
    assert len(litter) == 1 and litter[0].name.endswith(f".{pid}.tmp"), litter
    assert remove_dead_temp_files(tmp_path) == litter
    assert list(tmp_path.iterdir()) == [path]


def test_temp_files_of_dead_writers_are_removed_and_a_live_writers_kept(tmp_path):
    live = tmp_path / f".train-00001.parquet.{os.getpid()}.tmp"
    dead = tmp_path / f".train-00000.parquet.{_dead_pid()}.tmp"
    dead_folder = tmp_path / f".hf.0a1b2c3d.{_dead_pid()}.tmp"
    not_temp = tmp_path / "train-00000.parquet"
    for p in (live, dead, not_temp):
        p.write_bytes(b"x")
    dead_folder.mkdir()
    (dead_folder / "model.safetensors").write_bytes(b"x")
    remove_dead_temp_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, not_temp.name])


def test_sha256_file_reads_in_chunks(tmp_path, monkeypatch):
    import hashlib

    monkeypatch.setattr(fileio, "COPY_CHUNK", 3)
    path = write_atomic(tmp_path / "parts", b"hello world")
    assert sha256_file(path) == hashlib.sha256(b"hello world").hexdigest()


# ---------------------------------------------------------------------------------------------
# Folders


def test_atomic_folder_leaves_nothing_when_the_build_fails(tmp_path):
    dest = tmp_path / "ct2"
    with pytest.raises(RuntimeError, match="converter crashed"):
        with atomic_folder(dest) as tmp:
            (tmp / "model.bin").write_bytes(b"half")
            raise RuntimeError("converter crashed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_folder_replaces_an_existing_folder_whole(tmp_path):
    dest = tmp_path / "hf"
    dest.mkdir()
    (dest / "old.bin").write_bytes(b"old")
    with atomic_folder(dest) as tmp:
        assert tmp.parent == tmp_path and tmp != dest
        (tmp / "new.bin").write_bytes(b"new")
        assert (dest / "old.bin").is_file()  # readers still see the old one while the new is built
    assert [p.name for p in dest.iterdir()] == ["new.bin"]
    assert list(tmp_path.iterdir()) == [dest]  # neither the new folder's temp name nor the old one set aside


def test_atomic_folder_puts_the_old_folder_back_when_the_rename_fails(tmp_path, monkeypatch):
    dest = tmp_path / "export"
    dest.mkdir()
    (dest / "model.bin").write_bytes(b"old")
    real_rename = os.rename

    def rename(src, dst):  # the new folder may not take the name; putting the old one back works
        if str(dst) == str(dest) and ".old." not in str(src):
            raise OSError("rename refused")
        real_rename(src, dst)

    monkeypatch.setattr(fileio.os, "rename", rename)
    with pytest.raises(OSError, match="rename refused"):
        with atomic_folder(dest) as tmp:
            (tmp / "model.bin").write_bytes(b"new")
    assert (dest / "model.bin").read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [dest]


def test_atomic_folder_keeps_a_folder_another_process_finished(tmp_path):
    dest = tmp_path / "random-tiny-0"
    dest.mkdir()
    (dest / "model.safetensors").write_bytes(b"theirs")
    with atomic_folder(dest, keep=lambda d: (d / "model.safetensors").is_file()) as tmp:
        (tmp / "model.safetensors").write_bytes(b"ours")
    assert (dest / "model.safetensors").read_bytes() == b"theirs"
    assert list(tmp_path.iterdir()) == [dest]


def test_a_folder_build_killed_midway_never_shows_under_the_final_name(tmp_path):
    dest = tmp_path / "final"
    pid = _run_killed(f"""
        import os, signal
        from whisper_sv.common.fileio import atomic_folder
        print(os.getpid(), flush=True)
        with atomic_folder({str(dest)!r}) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert not dest.exists()
    [litter] = list(tmp_path.iterdir())
    assert litter.name.endswith(f".{pid}.tmp")
    remove_dead_temp_files(tmp_path)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Claiming a folder for one configuration


def test_claim_folder_writes_the_record_then_recognises_it(tmp_path):
    folder = tmp_path / "corpus" / "x"
    config = {"clips": 6, "seed": 0, "splits": ("train", "dev")}
    assert claim_folder(folder, "synth.json", config, "a corpus") is False
    assert json.loads((folder / "synth.json").read_text()) == {"clips": 6, "seed": 0, "splits": ["train", "dev"]}
    assert claim_folder(folder, "synth.json", config, "a corpus") is True  # tuples read back as lists


def test_claim_folder_refuses_another_config_in_one_line_naming_only_what_differs(tmp_path):
    folder = tmp_path / "x"
    claim_folder(folder, "synth.json", {"clips": 6, "seed": 0, "splits": {"train": 0.8}}, "a corpus")
    before = (folder / "synth.json").read_bytes()
    with pytest.raises(UserError) as err:
        claim_folder(folder, "synth.json", {"clips": 7, "seed": 0, "splits": {"train": 0.8}, "voices": 2}, "a corpus")
    message = str(err.value)
    assert message == f"{folder} holds a corpus made with clips=6, no voices, not clips=7, voices=2; pick another --out or delete it"
    assert "\n" not in message and "seed" not in message and "splits" not in message
    assert (folder / "synth.json").read_bytes() == before  # a refusal changes nothing


def test_claim_folder_compares_only_the_comparable_part(tmp_path):
    def comparable(record):
        return {k: v for k, v in record.items() if k != "source"}

    claim_folder(tmp_path, "feature_config.json", {"source": "cv:a", "n_mels": 80}, "a run", comparable=comparable)
    assert claim_folder(tmp_path, "feature_config.json", {"source": "cv:b", "n_mels": 80}, "a run", comparable=comparable)
    assert json.loads((tmp_path / "feature_config.json").read_text())["source"] == "cv:a"  # the first record stays
    with pytest.raises(UserError, match=r"made with n_mels=80, not n_mels=128; start a new output_dir$"):
        claim_folder(tmp_path, "feature_config.json", {"source": "cv:b", "n_mels": 128}, "a run",
                     comparable=comparable, hint="start a new output_dir")


def test_an_older_record_that_matches_is_rewritten_in_todays_form(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"clips": 6}))

    def upgrade(record):
        return {**record, "version": 2} if "version" not in record else record

    assert claim_folder(tmp_path, "r.json", {"clips": 6, "version": 2}, "a corpus", upgrade=upgrade)
    assert json.loads((tmp_path / "r.json").read_text()) == {"clips": 6, "version": 2}


# ---------------------------------------------------------------------------------------------
# The synthetic corpus's record: sentences compared by content, wherever the checkout is


def test_the_corpus_record_names_the_shipped_sentences_by_their_name_not_the_install_path():
    record = synth.corpus_record(synth.SynthConfig(clips=8))
    assert record["sentences"] == "data/sv_sentences.txt"
    assert record["sentences_sha256"] == sha256_file(synth.SENTENCES)
    assert str(synth.SHIPPED) not in json.dumps(record)


def _claim_corpus(folder, cfg):
    return claim_folder(folder, synth.RECORD_NAME, synth.corpus_record(cfg), "a corpus",
                        comparable=synth._compared, upgrade=synth._upgrade_record)


def test_a_corpus_from_another_checkout_with_the_same_sentences_is_resumed(tmp_path):
    other_checkout = tmp_path / "elsewhere" / "data" / "sv_sentences.txt"
    other_checkout.parent.mkdir(parents=True)
    other_checkout.write_bytes(synth.SENTENCES.read_bytes())
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    old = {"clips": 8, "seed": 0, "splits": {"train": 0.8, "dev": 0.1, "test": 0.1}, "sentences": str(other_checkout)}
    (corpus / "synth.json").write_text(json.dumps(old, indent=2))  # as written before sentences were hashed
    legacy = synth.SynthConfig(clips=8, voices="espeak", realism=False)  # what corpora were before voice families
    assert _claim_corpus(corpus, legacy) is True
    assert json.loads((corpus / "synth.json").read_text())["sentences_sha256"] == sha256_file(synth.SENTENCES)
    other_checkout.unlink()  # the record no longer depends on the other checkout's file
    assert _claim_corpus(corpus, legacy) is True


def test_a_corpus_from_other_sentences_is_refused_saying_so(tmp_path):
    changed = tmp_path / "sentences.txt"
    changed.write_text("En mening.\nTvå meningar.\n", encoding="utf-8")
    corpus = tmp_path / "corpus"
    assert _claim_corpus(corpus, synth.SynthConfig(clips=8, sentences=str(changed))) is False
    with pytest.raises(UserError) as err:
        _claim_corpus(corpus, synth.SynthConfig(clips=8))
    message = str(err.value)
    assert f"sentences_sha256={sha256_file(changed)}, not sentences_sha256={sha256_file(synth.SENTENCES)}" in message
    assert "clips" not in message

    gone = tmp_path / "old"
    gone.mkdir()
    old = {**asdict(synth.SynthConfig(clips=8)), "sentences": str(tmp_path / "moved" / "sv_sentences.txt")}
    (gone / "synth.json").write_text(json.dumps(old))
    with pytest.raises(UserError, match=r"sentences_sha256=unknown \(.*moved/sv_sentences.txt is gone\), not"):
        _claim_corpus(gone, synth.SynthConfig(clips=8))
