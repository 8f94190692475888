"""The search against a hostile or clumsy world: a journal torn by a full disk or a copy cut short,
a study folder copied or renamed, a heartbeat that would flood the storage, and config mistakes,
each refused in one line before any work.

Trials here run a stand-in for `train` (no model): it "trains" the learning rate it is given into
``checkpoint.json`` in its run folder, resumes whatever checkpoint it finds there, and reports a
WER computed from the learning rate of the checkpoint it ended with. A trial that resumed another
trial's checkpoint therefore reports a WER that does not match its own parameters.
"""

import builtins
import errno
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from whisper_sv.common.errors import UserError
from whisper_sv.search.study import SearchConfig, open_study, search

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "src" / "whisper_sv" / "configs"  # the presets that ship in the package
TINY = json.loads((PRESETS / "tiny.json").read_text())


def _wer(lr: float) -> float:
    return round(abs(math.log10(lr) + 3) / 3, 9)


class FakeTrain:
    """`train` without a model: see the module docstring. `hooks[folder name]` runs mid-trial."""

    def __init__(self):
        self.calls: list[tuple[str, float, bool]] = []
        self.hooks: dict[str, callable] = {}

    def __call__(self, cfg, callbacks=None):
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        lr = cfg.training["learning_rate"]
        checkpoint = out / "checkpoint.json"
        resumed = checkpoint.is_file()
        trained = json.loads(checkpoint.read_text())["learning_rate"] if resumed else lr
        if not resumed:
            checkpoint.write_text(json.dumps({"learning_rate": lr}))
        self.calls.append((out.name, lr, resumed))
        hook = self.hooks.pop(out.name, None)
        if hook is not None:
            hook(out)
        (out / "config.json").write_text(json.dumps({**TINY, "learning_rate": lr, "output_dir": str(out)}))
        (out / "final").mkdir(exist_ok=True)
        return {"metrics": {"eval_wer": _wer(trained)}, "final": out / "final"}


@pytest.fixture
def fake_train(monkeypatch):
    """The stand-in `train` (and no plots); and every worker's identity is a dead process on this host, so a trial
    a run leaves running (a kill, a full disk) is seen by the next run as its dead worker's, as it
    is when that run was another process."""
    import whisper_sv.search.report
    import whisper_sv.search.study as search_module
    import whisper_sv.training.train

    fake = FakeTrain()
    monkeypatch.setattr(whisper_sv.training.train, "train", fake)
    monkeypatch.setattr(whisper_sv.search.report, "write_plots", lambda study, folder: [])  # seconds each, not tested here
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = {"host": search_module.HOST, "boot": search_module.BOOT, "pid": proc.pid, "start": 1.0}
    monkeypatch.setattr(search_module, "_worker_id", lambda: dict(dead))
    return fake


def _config(study_dir, trials, **settings) -> SearchConfig:
    values = {"train": {**TINY, "train_data": "f/train", "eval_data": "f/dev"},
              "space": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}},
              "study_dir": str(study_dir), "trials": trials, "sampler": "random", "pruner": "none"}
    return SearchConfig(**{**values, **settings})


def _finished(study_dir, trials=None):
    study = open_study(_config(study_dir, trials or 1), create=False)  # writes nothing
    return [t for t in study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")]


def _assert_sound(study_dir, n):
    """N finished trials, none doubled (one run folder each), each with the WER of its own parameters."""
    finished = _finished(study_dir, n)
    assert len(finished) == n
    folders = [Path(t.user_attrs["run_dir"]).name for t in finished]
    assert len(set(folders)) == n, f"two finished trials share a run folder: {folders}"
    for t in finished:
        assert t.value == _wer(t.params["learning_rate"]), f"trial {t.number} recorded another checkpoint's WER"
    return finished


def _journal_lines(study_dir) -> list[bytes]:
    data = (Path(study_dir) / "study.journal").read_bytes()
    assert data.endswith(b"\n")
    lines = data.split(b"\n")[:-1]
    for line in lines:
        json.loads(line)
    return lines


# ---------------------------------------------------------------------------------------------
# A torn journal


TORN_RECORD = b'{"op_code":8,"worker_id":"dead-worker","trial_id":1,"user_attr":{"heartb'


@pytest.mark.parametrize("tear", ["torn record appended", "cut short in its last record", "cut short in its first record"])
def test_a_torn_journal_is_repaired_and_the_study_finishes_with_no_trial_lost_or_doubled(fake_train, tmp_path, capsys, tear):
    study = tmp_path / "study"
    search(_config(study, 2))
    before = {t.number: (t.params, t.value) for t in _finished(study)}
    journal = study / "study.journal"
    if tear == "torn record appended":  # a write cut short by a full disk
        with open(journal, "ab") as f:
            f.write(TORN_RECORD)
    elif tear == "cut short in its last record":  # a copy or sync cut short
        os.truncate(journal, journal.stat().st_size - 25)
    else:
        os.truncate(journal, 30)
    original = journal.read_bytes()
    capsys.readouterr()

    outcome = search(_config(study, 4))

    out = capsys.readouterr().out
    assert "torn last record" in out and "the original is kept as study.journal.torn-" in out
    (backup,) = study.glob("study.journal.torn-*")
    assert backup.read_bytes() == original, "the backup is the journal as it was"
    _journal_lines(study)
    assert outcome["finished"] == 4
    finished = _assert_sound(study, 4)
    if tear != "cut short in its first record":  # nothing was written after a torn first record
        kept = {t.number: (t.params, t.value) for t in finished if t.number in before}
        resumed = [t for t in finished if t.user_attrs.get("retry_of") in before]
        assert len(kept) + len(resumed) == 2, "a trial finished before the tear was lost"
        assert all(t.params == before[t.user_attrs["retry_of"]][0] for t in resumed)
        assert all(kept[n] == before[n] for n in kept)
    if tear == "cut short in its last record":  # trial 1's end was cut off: its retry resumed its folder
        assert ("0001", before[1][0]["learning_rate"], True) in fake_train.calls


def test_damage_inside_the_journal_is_refused_in_one_line_and_repaired_on_request(fake_train, tmp_path, capsys, monkeypatch):
    """A torn record that other writers appended after (what Optuna itself leaves after a full disk)."""
    from whisper_sv import cli

    study = tmp_path / "study"
    search(_config(study, 2))
    glued = json.dumps({"op_code": 0, "worker_id": "w", "study_name": "x", "directions": [1]}, separators=(",", ":"))
    after = json.dumps({"op_code": 0, "worker_id": "w", "study_name": "y", "directions": [1]}, separators=(",", ":"))
    with open(study / "study.journal", "ab") as f:
        f.write(TORN_RECORD + glued.encode() + b"\n" + after.encode() + b"\n")
    config = tmp_path / "search.json"
    config.write_text(json.dumps({"train": {**TINY, "train_data": "f/train", "eval_data": "f/dev"}, "study_dir": str(study),
                                  "space": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}},
                                  "trials": 3, "sampler": "random", "pruner": "none"}))
    capsys.readouterr()
    assert cli.main(["search", str(config)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--repair-journal" in err and "Traceback" not in err

    assert cli.main(["search", str(config), "--repair-journal"]) == 0
    assert "unreadable record(s); dropped them" in capsys.readouterr().out
    assert len(list(study.glob("study.journal.torn-*"))) == 1
    _journal_lines(study)
    _assert_sound(study, 3)


class _FullDisk:
    """Writes into `root` write half their data and fail with ENOSPC while `on`."""

    def __init__(self, monkeypatch, root: Path):
        self.on, self.root, real_open = False, str(root), builtins.open
        disk = self

        class HalfWriter:
            def __init__(self, f):
                self._f = f

            def write(self, data):
                self._f.write(data[: len(data) // 2])
                self._f.flush()
                raise OSError(errno.ENOSPC, "No space left on device")

            def __getattr__(self, name):
                return getattr(self._f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._f.close()

        def full_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if disk.on and any(c in mode for c in "wax") and str(file).startswith(disk.root):
                return HalfWriter(f)
            return f

        monkeypatch.setattr(builtins, "open", full_open)


def test_disk_full_drill_the_worker_stops_in_one_line_and_the_next_run_resumes_the_trial(fake_train, tmp_path, monkeypatch):
    """The disk fills up in the middle of trial 1: its checkpoint save fails, then every journal
    write. The worker stops with one line, the journal stays readable, and once there is space
    again the same command resumes trial 1 from its checkpoint and finishes the study."""
    study = tmp_path / "study"
    disk = _FullDisk(monkeypatch, study)

    def fill_the_disk(out):
        disk.on = True
        with open(out / "checkpoint-2.bin", "wb") as f:
            f.write(b"weights" * 100)

    fake_train.hooks["0001"] = fill_the_disk
    with pytest.raises(UserError, match="the disk is full .* in trial 1: free space and run the same command again") as err:
        search(_config(study, 3))
    assert len(str(err.value).splitlines()) == 1
    disk.on = False
    _journal_lines(study)  # no torn record: a failed append is cut back off

    assert search(_config(study, 3))["finished"] == 3
    _assert_sound(study, 3)
    lr_1 = next(lr for name, lr, _ in fake_train.calls if name == "0001")
    assert ("0001", lr_1, True) in fake_train.calls, "trial 1's retry did not resume its folder"


def test_disk_full_drill_a_record_torn_while_a_trial_runs_is_dropped_and_the_run_goes_on(fake_train, tmp_path, capsys):
    """Another worker died in the middle of a journal write (its disk filled) while this one trains:
    this worker's next write drops the torn record instead of gluing its own onto it."""
    study = tmp_path / "study"

    def tear(out):
        with open(study / "study.journal", "ab") as f:
            f.write(TORN_RECORD)

    fake_train.hooks["0001"] = tear
    assert search(_config(study, 3))["finished"] == 3
    assert "torn last record" in capsys.readouterr().out
    assert len(list(study.glob("study.journal.torn-*"))) == 1
    _journal_lines(study)
    _assert_sound(study, 3)


# ---------------------------------------------------------------------------------------------
# A copied or renamed study folder


@pytest.mark.parametrize("move", ["copy", "rename", "rename, made before study.json"])
def test_a_copied_or_renamed_study_folder_continues_its_study(fake_train, tmp_path, capsys, move):
    old, new = tmp_path / "study", tmp_path / "study-2"
    search(_config(old, 2))
    before = {t.number: (t.params, t.value) for t in _finished(old)}
    if move.endswith("before study.json"):
        (old / "study.json").unlink(missing_ok=True)  # (older code wrote none)
        for record in old.glob("trials/*/trial.json"):
            record.unlink()
    (shutil.copytree if move == "copy" else shutil.move)(old, new)

    # Another seed: the sampler of a new study would not happen to draw trial 0's parameters again.
    assert search(_config(new, 4, seed=1))["finished"] == 4

    finished = _assert_sound(new, 4)
    assert {t.number: (t.params, t.value) for t in finished if t.number in before} == before
    assert sorted(p.name for p in (new / "trials").iterdir()) == ["0000", "0001", "0002", "0003"]
    assert json.loads((new / "best.json").read_text())["output_dir"] == str(new / "best")
    if move == "copy":
        assert len(_finished(old)) == 2 and sorted(p.name for p in (old / "trials").iterdir()) == ["0000", "0001"]
    if move.endswith("before study.json"):
        assert "holds study 'study' (named after the folder it was started in); continuing it" in capsys.readouterr().out


def test_a_study_name_that_would_start_another_study_in_the_folder_is_refused(fake_train, tmp_path):
    study = tmp_path / "study"
    search(_config(study, 1))
    with pytest.raises(UserError, match="is the folder of study 'study'.*study_name 'other' would start another study"):
        search(_config(study, 2, study_name="other"))
    assert sorted(p.name for p in (study / "trials").iterdir()) == ["0000"]


def test_a_trial_never_resumes_a_folder_another_trial_made(fake_train, tmp_path, capsys):
    """A run folder from another study (left in a reused folder, or its journal was lost) is left
    alone; the trial trains in a fresh folder beside it and records its own WER."""
    first, second = tmp_path / "first", tmp_path / "second"
    search(_config(first, 1))
    shutil.copytree(first / "trials", second / "trials")
    open_study(_config(second, 1)).enqueue_trial({"learning_rate": 5e-3})

    search(_config(second, 1))

    (trial,) = _assert_sound(second, 1)
    assert trial.params == {"learning_rate": 5e-3} and Path(trial.user_attrs["run_dir"]).name == "0000-2"
    assert "trials/0000 holds trial 0 with" in capsys.readouterr().out
    assert (second / "trials" / "0000" / "checkpoint.json").read_text() == (first / "trials" / "0000" / "checkpoint.json").read_text()


# ---------------------------------------------------------------------------------------------
# Config mistakes: one line, exit code 2, before any work


SPACE = {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}
BAD_CONFIGS = {
    "low is text": ({"space": {"learning_rate": {"low": "a", "high": 1e-3}}}, "low='a': give a number"),
    "low is null": ({"space": {"learning_rate": {"low": None, "high": 1e-3}}}, "low=None: give a number"),
    "negative step": ({"space": {"warmup_steps": {"low": 0, "high": 4, "step": -1}}}, "step=-1: use a step above 0"),
    "log with step": ({"space": {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True, "step": 1e-5}}}, "log and step cannot be combined"),
    "space is a list": ({"space": ["learning_rate"]}, "space must be an object"),
    "choices not a list": ({"space": {"warmup_steps": {"choices": "abc"}}}, "choices must be a list"),
    "trials is text": ({"trials": "5"}, "trials='5': expected an integer"),
    "pruner_args typo": ({"pruner": "median", "pruner_args": {"n_startup_trails": 2}}, "did you mean 'n_startup_trials'"),
    "study_dir is a number": ({"study_dir": 5}, "study_dir=5: expected a string"),
    "negative learning rate": ({"space": {"learning_rate": {"low": -1e-3, "high": 1e-3}}}, "learning_rate=-0.001 cannot work: a learning rate must be above 0"),
    "heartbeat of 0": ({"heartbeat_s": 0}, "heartbeat_s=0: a worker stamps its trial"),
    "features typo": ({"features": {"source": "cv:corpus", "shard_sise": 16}}, "unknown key 'shard_sise' (did you mean 'shard_size'?)"),
    "features without source": ({"features": {"shard_size": 16}}, 'features: no "source"'),
    "unknown source kind": ({"features": {"source": "xx:corpus"}}, "unknown source spec 'xx:corpus'"),
    "bad feature value": ({"features": {"source": "cv:corpus", "shard_size": 0}}, "features: shard_size=0"),
    "preset is broken JSON": ({"preset": "broken.json"}, "the training preset is not valid JSON"),
    "missing source folder": ({"features": {"source": "cv:no/such/corpus"}}, "features: cannot read train_split='train' of cv:no/such/corpus"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_a_config_mistake_is_one_line_and_exit_code_2_before_any_trial(tmp_path, capsys, case):
    from whisper_sv import cli

    settings, message = BAD_CONFIGS[case]
    study = tmp_path / "study"
    values = {"train": {**TINY, "train_data": "f/train", "eval_data": "f/dev"}, "space": SPACE,
              "study_dir": str(study), "trials": 2, "sampler": "random", "pruner": "none", **settings}
    (tmp_path / "broken.json").write_text('{"model": "random:tiny",')
    config = tmp_path / "search.json"
    config.write_text(json.dumps(values))
    assert cli.main(["search", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("whisper-sv search: error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err
    assert not (study / "trials").exists()
    if case != "missing source folder":  # refused by the config check: nothing written at all
        assert not study.exists()
