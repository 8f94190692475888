"""The search: a study that finishes N trials, resumes a killed trial from its checkpoint, shares
one storage between workers (journal file and PostgreSQL), prunes a bad trial, and refuses a bad
space before it starts."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import sigkill_after_checkpoint

from whisper_sv.search.study import SearchConfig, is_stale, load_search_config, recover

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "src" / "whisper_sv" / "configs"  # the presets that ship in the package
TINY = json.loads((PRESETS / "tiny.json").read_text())
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _config(**settings) -> SearchConfig:
    values = {"train": {**TINY, "train_data": "f/train", "eval_data": "f/dev"}, "space": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}}
    values.update(settings)
    return SearchConfig(**values)


# ---------------------------------------------------------------------------------------------
# Refused before any trial starts


def test_a_typo_in_the_space_names_the_closest_key():
    with pytest.raises(ValueError, match="unknown key 'learnig_rate' \\(did you mean 'learning_rate'\\?\\)"):
        _config(space={"learnig_rate": [1e-3]})
    with pytest.raises(ValueError, match="did you mean 'smoothing.sigma'"):
        _config(space={"smoothing.sigmaa": [1.0]}, features={"source": "cv:x"})


def test_an_incompatible_parameter_is_refused_with_its_reason():
    cached = {**TINY, "train_data": "f/train", "freeze_encoder": True, "encoder_cache": "cross_kv"}
    with pytest.raises(ValueError, match="apply_spec_augment=True cannot work with this config: encoder_cache needs freeze_encoder=true"):
        _config(train=cached, space={"apply_spec_augment": [False, True]})
    with pytest.raises(ValueError, match="add a \"features\" section"):
        _config(space={"smoothing": ["none", "gaussian"]})
    with pytest.raises(ValueError, match="median ksize=7"):
        _config(space={"smoothing.ksize": [3, 7]}, features={"source": "cv:x", "smoothing": {"kind": "median"}})
    with pytest.raises(ValueError, match="the search sets output_dir"):
        _config(space={"output_dir": ["a", "b"]})
    with pytest.raises(ValueError, match="sampler="):
        _config(sampler="cmaes-ish")


def test_a_space_of_lora_keys_gives_each_trial_its_lora_settings():
    from whisper_sv.search.config import trial_train_values
    from whisper_sv.training.config import build_config

    wide = ["q_proj", "k_proj", "v_proj", "out_proj"]
    cfg = _config(train={**TINY, "train_data": "f/train", "lora": {"dropout": 0.0}}, space={
        "lora.r": [4, 16], "lora.alpha": {"low": 8, "high": 64, "log": True, "type": "int"},
        "lora.dropout": {"low": 0.0, "high": 0.2}, "lora.part": ["decoder", "both"],
        "lora.target_modules": [["q_proj", "v_proj"], wide]})
    assert {p.name: p.kind for p in cfg.params}["lora.target_modules"] == "categorical"
    # As Optuna suggests them (target modules comma-joined: its choices are scalars).
    params = {"lora.r": 16, "lora.alpha": 32, "lora.part": "both", "lora.target_modules": ",".join(wide), "learning_rate": 1e-3}
    trial = build_config(trial_train_values(cfg, params, "t/0001", {"train": "s/train", "eval": "s/dev"}))
    assert trial.lora == {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": wide, "part": "both", "quantization": None}
    assert trial.training["learning_rate"] == 1e-3
    # Searching a lora key makes a full fine-tune preset a LoRA run (the defaults plus the trial's values).
    plain = _config(space={"lora.r": [8]})
    assert build_config(trial_train_values(plain, {"lora.r": 8}, "t", None)).lora["r"] == 8
    assert build_config(trial_train_values(plain, {}, "t", None)).lora is None


def test_a_bad_lora_key_or_value_in_the_space_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"unknown key 'lora\.rank' \(did you mean 'lora\.r'\?\); lora keys are lora\.alpha") as err:
        _config(space={"lora.rank": [8, 16]})
    assert len(str(err.value).splitlines()) == 1
    with pytest.raises(ValueError, match="lora.part='encoders' cannot work with this config"):
        _config(space={"lora.part": ["decoder", "encoders"]})
    with pytest.raises(ValueError, match="search its fields instead"):
        _config(space={"lora": [None]})
    with pytest.raises(ValueError, match="each a list of layer names"):
        _config(space={"lora.target_modules": {"low": 1, "high": 2}})
    cached = {**TINY, "train_data": "f/train", "freeze_encoder": True, "encoder_cache": "cross_kv"}
    with pytest.raises(ValueError, match="lora.part='both' cannot work with this config: lora part='both' trains the encoder"):
        _config(train=cached, space={"lora.part": ["decoder", "both"]})


def test_search_config_file_preset_and_overrides(tmp_path):
    cfg = load_search_config(PRESETS / "search-tiny.json", {"trials": 2, "max_steps": 3, "study_dir": str(tmp_path)})
    assert cfg.trials == 2 and cfg.train["max_steps"] == 3 and cfg.train["model"] == "random:tiny"
    assert cfg.study_dir == str(tmp_path) and {p.name for p in cfg.params} == {"learning_rate", "warmup_steps", "smoothing"}
    assert {p.name: p.kind for p in cfg.params} == {"learning_rate": "float", "warmup_steps": "categorical", "smoothing": "categorical"}
    load_search_config(PRESETS / "search-cpu.json")  # the shipped CPU config is valid
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"preset": "nosuch.json", "space": {"learning_rate": [1e-3]}}))
    with pytest.raises(ValueError, match="preset 'nosuch.json' not found"):
        load_search_config(bad)
    bad.write_text(json.dumps({"train": TINY, "space": {"learning_rate": [1e-3]}, "trails": 3}))
    with pytest.raises(ValueError, match="did you mean 'trials'"):
        load_search_config(bad)


def test_a_grid_runs_each_point_once():
    cfg = _config(sampler="grid", trials=50, space={"learning_rate": [1e-3, 2e-3], "warmup_steps": {"low": 0, "high": 4, "step": 2}})
    assert cfg.trials == 6


# ---------------------------------------------------------------------------------------------
# Workers: liveness and recovery, on an in-memory study


class _Trial:
    def __init__(self, worker=None, heartbeat=None):
        self.user_attrs = {k: v for k, v in (("worker", worker), ("heartbeat", heartbeat)) if v is not None}
        self.datetime_start = None


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_dead_worker_on_this_host_is_stale_at_once_and_a_silent_remote_one_after_the_grace():
    from whisper_sv.search.study import BOOT, HOST, _worker_id

    assert not is_stale(_Trial(_worker_id(), heartbeat=0), stale_after_s=600)  # alive, whatever the heartbeat
    assert is_stale(_Trial({"host": HOST, "boot": BOOT, "pid": _dead_pid(), "start": 1.0}, heartbeat=time.time()), stale_after_s=600)
    # A live PID that is another process (the PID was reused) is as dead as a missing one.
    assert is_stale(_Trial({**_worker_id(), "start": 12.0}, heartbeat=time.time()), stale_after_s=600)
    remote = {"host": HOST + "-elsewhere", "pid": os.getpid(), "start": 1.0}
    assert not is_stale(_Trial(remote, heartbeat=time.time() - 60), stale_after_s=600)
    assert is_stale(_Trial(remote, heartbeat=time.time() - 601), stale_after_s=600)


def test_recover_fails_a_dead_trial_once_and_queues_one_retry_with_its_parameters_and_folder():
    import optuna
    from optuna.trial import TrialState

    from whisper_sv.search.study import BOOT, HOST, _must_discard

    cfg = _config(trials=3)
    study = optuna.create_study()
    done = study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    study.tell(done, 0.5)
    dead = study.ask()
    dead.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
    dead.set_user_attr("run_dir", "study/trials/0001")
    dead.set_user_attr("worker", {"host": HOST, "boot": BOOT, "pid": _dead_pid(), "start": 1.0})
    assert recover(study, cfg) == [1]
    assert recover(study, cfg) == []  # the retry is queued once, however often workers look
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    retry = study.ask()
    assert retry.number == 2 and retry.user_attrs["retry_of"] == 1 and retry.user_attrs["run_dir"] == "study/trials/0001"
    assert retry.suggest_float("learning_rate", 1e-4, 1e-2, log=True) == dead.params["learning_rate"]
    assert _must_discard(study, retry, cfg.trials) is None
    # A second retry of the same trial (two workers queued one each) is discarded when it starts.
    study.enqueue_trial(dead.params, user_attrs={"run_dir": "study/trials/0001", "retry_of": 1})
    twin = study.ask()
    assert "already retries trial 1" in _must_discard(study, twin, cfg.trials)
    study.tell(twin, state=TrialState.FAIL)
    # Trials past the count: 1 complete + trial 2 running = 2 of 3; one more may start, not two.
    assert _must_discard(study, study.ask(), cfg.trials) is None
    assert "3 trials are already finished or running" in _must_discard(study, study.ask(), cfg.trials)


# ---------------------------------------------------------------------------------------------
# Whole studies through the CLI (the tiny preset: seconds a trial)


def _search_cmd(study_dir, corpus, *extra):
    features = {"source": f"cv:{corpus}", "train_split": "train", "eval_split": "dev", "shard_size": 16}
    return [sys.executable, "-m", "whisper_sv.cli", "search", str(PRESETS / "search-tiny.json"),
            "--study_dir", str(study_dir), "--features", json.dumps(features), *extra]


def _weights(path):
    from safetensors.numpy import load_file

    return load_file(str(path))


def _assert_same_weights(a, b):
    a, b = _weights(a), _weights(b)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _trials(study_dir, storage=None):
    import optuna

    if storage is None:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        path = str(Path(study_dir) / "study.journal")
        storage = JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    return optuna.load_study(study_name=Path(study_dir).name, storage=storage).get_trials()


def _finished(trials):
    return [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]


@pytest.mark.slow
def test_a_study_finishes_shares_stores_and_cache_and_best_json_retrains_the_best_trial(sv_corpus, tmp_path):
    study = tmp_path / "study"
    cached = ["--freeze_encoder", "true", "--encoder_cache", "states"]
    subprocess.run(_search_cmd(study, sv_corpus, "--trials", "3", *cached), check=True, env=ENV, capture_output=True)
    trials = _trials(study)
    assert len(_finished(trials)) == 3 and len(trials) == 3
    # One feature store per distinct feature config, one encoder cache per store, never per trial.
    kinds = {t.params["smoothing"] for t in trials}
    assert len([p for p in (study / "features").iterdir() if p.is_dir()]) == len(kinds)
    assert len([p for p in (study / "encoder_cache").iterdir() if p.is_dir()]) == len(kinds)
    assert not any((study / "trials").glob("*/encoder_cache"))
    for name in ("summary.md", "summary.csv", "best.json", "img/optimization_history.png", "img/intermediate_values.png"):
        assert (study / name).is_file(), name
    best = json.loads((study / "best.json").read_text())
    best_trial = min((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert best["learning_rate"] == best_trial.params["learning_rate"]
    subprocess.run([sys.executable, "-m", "whisper_sv.cli", "train", str(study / "best.json")], check=True, env=ENV, capture_output=True)
    _assert_same_weights(Path(best_trial.user_attrs["run_dir"]) / "final" / "model.safetensors", study / "best" / "final" / "model.safetensors")
    # Re-running a finished study trains nothing more.
    out = subprocess.run(_search_cmd(study, sv_corpus, "--trials", "3", *cached), check=True, env=ENV, capture_output=True, text=True)
    assert "search: trial" not in out.stdout and len(_trials(study)) == 3


@pytest.mark.slow
def test_a_killed_worker_s_trial_resumes_from_its_checkpoint_and_the_study_ends_with_n_trials(sv_corpus, tmp_path):
    study = tmp_path / "study"
    grid = ["--trials", "2", "--sampler", "grid", "--space", json.dumps({"learning_rate": [1e-3, 2e-3], "warmup_steps": [1]})]
    first = study / "trials" / "0000"
    sigkill_after_checkpoint(_search_cmd(study, sv_corpus, *grid), ENV, first / "checkpoint-3")

    out = subprocess.run(_search_cmd(study, sv_corpus, *grid), check=True, env=ENV, capture_output=True, text=True)
    assert "trial 0's worker is gone" in out.stdout and f"resuming from {first / 'checkpoint-3'}" in out.stdout
    trials = _trials(study)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    retry = trials[1]
    assert retry.user_attrs["retry_of"] == 0 and retry.user_attrs["run_dir"] == str(first)
    assert sorted(t.params["learning_rate"] for t in _finished(trials)) == [1e-3, 2e-3]
    # The resumed trial ends where an uninterrupted run of its config ends, bit for bit.
    straight = tmp_path / "straight"
    subprocess.run([sys.executable, "-m", "whisper_sv.cli", "train", str(first / "config.json"), "--output_dir", str(straight)],
                   check=True, env=ENV, capture_output=True)
    _assert_same_weights(straight / "final" / "model.safetensors", first / "final" / "model.safetensors")
    history = [json.loads(line) for line in (first / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if "loss" in h] == [3, 6], "one history, no step trained twice"


def _two_workers(cmd, env=ENV):
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    return outs


def _assert_no_trial_run_twice(trials, n):
    finished = _finished(trials)
    assert len(finished) == n
    ran = [t for t in trials if not t.user_attrs.get("discarded")]
    assert len({t.user_attrs["run_dir"] for t in ran}) == len(ran), "two trials trained in one folder"
    params = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(params)) == len(params), "two workers suggested the same parameters (one sampler seed)"
    assert all(Path(t.user_attrs["run_dir"], "final", "model.safetensors").is_file() for t in finished if t.state.name == "COMPLETE")


@pytest.mark.slow
def test_two_workers_share_one_journal_study_without_running_a_trial_twice(sv_corpus, tmp_path):
    study = tmp_path / "study"
    outs = _two_workers(_search_cmd(study, sv_corpus, "--trials", "4", "--pruner", "none"))
    _assert_no_trial_run_twice(_trials(study), 4)
    assert all("search: trial" in o for o in outs), "both workers trained"


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL cluster on a loopback port, torn down after the test."""
    import shutil
    import socket

    pytest.importorskip("psycopg")
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not installed (make setup installs Debian's postgresql)")
    import tempfile

    # Not under tmp_path: pytest makes that private to root, and PostgreSQL refuses to run as root.
    data = Path(tempfile.mkdtemp(prefix="whisper-sv-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = "postgres" if _has_user("postgres") else "nobody"
        shutil.chown(data, user)
        as_user = ["runuser", "-u", user, "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "search", "--auth=trust"], check=True, capture_output=True)
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", f"-h 127.0.0.1 -p {port} -k {data}", "-w", "start",
                        "-l", str(data / "server.log")], check=True, capture_output=True)
        subprocess.run([*as_user, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "search", "optuna"], check=True, capture_output=True)
        yield f"postgresql+psycopg://search@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.mark.slow
def test_two_workers_share_a_postgresql_study(sv_corpus, tmp_path, postgres):
    import optuna

    study = tmp_path / "study"
    _two_workers(_search_cmd(study, sv_corpus, "--trials", "3", "--pruner", "none", "--storage", postgres, "--study", "pg-study"))
    trials = optuna.load_study(study_name="pg-study", storage=postgres).get_trials()
    _assert_no_trial_run_twice(trials, 3)
    assert not (study / "study.journal").exists()


@pytest.mark.slow
def test_a_deliberately_bad_learning_rate_is_pruned(sv_corpus, tmp_path):
    """On the packaged base (the tiny model's WER is 100 % whatever it learns): two sane trials,
    then one whose learning rate wrecks the decoder by its first evaluation."""
    from whisper_sv.search.study import open_study, search

    overrides = {
        "study_dir": str(tmp_path / "study"), "trials": 3, "pruner_args": {"n_startup_trials": 2},
        "features": {"source": f"cv:{sv_corpus}", "shard_size": 16},
        "space": {"learning_rate": {"low": 1e-6, "high": 1.0, "log": True}},
        "model": "packaged:whisper-base", "freeze_encoder": True, "encoder_cache": "states",
        "max_train_samples": 8, "max_eval_samples": 4, "per_device_train_batch_size": 4,
        "max_steps": 4, "eval_steps": 2, "save_steps": 2, "generation_max_length": 32,
    }
    cfg = load_search_config(PRESETS / "search-tiny.json", overrides)
    study = open_study(cfg)
    for lr in (1e-6, 2e-6, 0.5):  # queued: run in this order, before the sampler picks anything
        study.enqueue_trial({"learning_rate": lr})
    outcome = search(cfg)
    trials = {t.params["learning_rate"]: t for t in open_study(cfg).get_trials()}
    assert trials[1e-6].state.name == trials[2e-6].state.name == "COMPLETE"
    bad = trials[0.5]
    assert bad.state.name == "PRUNED" and list(bad.intermediate_values) == [2]
    assert bad.intermediate_values[2] > max(trials[1e-6].value, trials[2e-6].value)
    assert outcome["finished"] == 3 and outcome["counts"] == {"COMPLETE": 2, "PRUNED": 1}
    assert "| PRUNED |" in (tmp_path / "study" / "summary.md").read_text()


@pytest.mark.slow
def test_a_lora_trial_trains_an_adapter_with_the_searched_settings(sv_corpus, tmp_path):
    from whisper_sv.search.study import open_study, search

    overrides = {
        "study_dir": str(tmp_path / "study"), "trials": 1, "sampler": "grid",
        "features": {"source": f"cv:{sv_corpus}", "shard_size": 16},
        "space": {"lora.r": [2], "lora.target_modules": [["q_proj", "k_proj"]]},
        "max_train_samples": 8, "max_eval_samples": 4, "max_steps": 2, "eval_steps": 2, "save_steps": 2,
    }
    outcome = search(load_search_config(PRESETS / "search-tiny.json", overrides))
    (trial,) = open_study(load_search_config(PRESETS / "search-tiny.json", overrides)).get_trials()
    assert outcome["counts"] == {"COMPLETE": 1} and trial.params == {"lora.r": 2, "lora.target_modules": "q_proj,k_proj"}
    run = Path(trial.user_attrs["run_dir"])
    assert json.loads((run / "config.json").read_text())["lora"]["target_modules"] == ["q_proj", "k_proj"]
    adapter = json.loads((run / "final" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 2 and "k_proj" in adapter["target_modules"]
    best = json.loads((tmp_path / "study" / "best.json").read_text())
    assert best["lora"]["r"] == 2  # best.json retrains the trial as a LoRA run


def test_the_wilcoxon_pruner_gets_each_eval_utterance_paired_by_step_and_clip(tmp_path):
    """With pruner "wilcoxon", an evaluation is reported as one WER per utterance, keyed so that two
    trials pair clip by clip; a resumed trial re-reports the evaluations it made before the crash."""
    import optuna
    from transformers import TrainerState

    from whisper_sv.search.study import _reporter
    from whisper_sv.training.run_report import write_eval_utterances

    cfg = _config(pruner="wilcoxon")
    trial = optuna.create_study(pruner=optuna.pruners.WilcoxonPruner()).ask()
    write_eval_utterances(tmp_path, 2, ["ett två tre", "fyra", ""], ["ett två", "fyra fem", "x"])
    write_eval_utterances(tmp_path, 4, ["ett två tre", "fyra", ""], ["ett två tre", "fyra", ""])
    callback = _reporter(trial, cfg, tmp_path)
    state = TrainerState()
    state.log_history = [{"step": 2, "eval_wer": 0.5}]
    callback.on_train_begin(None, state, None)  # the evaluation at step 2 happened before a crash
    state.global_step = 4
    callback.on_evaluate(None, state, None, metrics={"eval_wer": 0.0})
    frozen = trial.study.get_trials()[0]
    # Utterance 2 has no reference words after normalisation: it is left out, as in the corpus WER.
    assert frozen.intermediate_values == {200_000: pytest.approx(1 / 3), 200_001: 1.0, 400_000: 0.0, 400_001: 0.0}


def test_a_worker_whose_trial_was_taken_over_stops_training_it():
    """Two machines that share a host name, or a worker silent past stale_after_s: another worker
    fails its trial and queues the retry; the first worker's next heartbeat is refused and its
    next training step stops, so two trainers never share the run folder for long."""
    import optuna
    from optuna.trial import TrialState
    from transformers import TrainerState

    from whisper_sv.search.study import TrialTakenOver, _Heartbeat, _reporter

    study = optuna.create_study()
    trial = study.ask()
    with _Heartbeat(trial, interval=0.05) as heartbeat:
        callback = _reporter(trial, _config(), Path("unused"), heartbeat.lost)
        callback.on_step_end(None, TrainerState(), None)  # still ours: training goes on
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        assert heartbeat.lost.wait(timeout=30), "the refused heartbeat was not noticed"
        with pytest.raises(TrialTakenOver, match="was failed by another worker"):
            callback.on_step_end(None, TrainerState(), None)


def test_workers_of_a_grid_study_share_one_grid_order(tmp_path):
    """The grid sampler shuffles the grid with its seed; a worker with another seed would read
    "grid point 0" as other parameters and run one point twice (a restarted worker did)."""
    from whisper_sv.search.study import open_study

    cfg = _config(sampler="grid", study_dir=str(tmp_path / "study"), space={"learning_rate": [1e-3, 2e-3, 3e-3]})
    seen = []
    for _ in range(3):  # three workers (or restarts), each opening the study and taking one trial
        trial = open_study(cfg).ask()
        seen.append(trial.suggest_categorical("learning_rate", [1e-3, 2e-3, 3e-3]))
    assert sorted(seen) == [1e-3, 2e-3, 3e-3]
