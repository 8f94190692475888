"""Hyper-parameter search that finishes: an Optuna study over `train(cfg)`, safe to kill and share.

`Trainer.hyperparameter_search` retrains every trial from zero, so a trial killed near its end is
lost; Optuna's heartbeat retry (RDB storages only) re-runs the parameters from zero too. Here:

- each trial is `train(cfg)` in its own run folder under the study folder, so a trial whose worker
  died is run again with the same parameters *in the same folder* and resumes from its last
  complete checkpoint (bit-identical to an uninterrupted trial, as `train` guarantees);
- every worker, before each trial, looks for trials whose worker is gone (a dead process on this
  host at once, a heartbeat older than `stale_after_s` on another), marks them failed and queues
  their retry; a restarted lone worker never waits out a grace period for its own dead trial;
- the study stops at exactly `trials` finished trials (COMPLETE or PRUNED), whatever the number of
  workers: a trial started past that count is discarded before it trains;
- work shared by trials (a feature store per feature config, the frozen encoder's cache per store)
  is built once, under a lock, and read by all;
- each evaluation reports the eval WER (the same `wer_report` as `evaluate`) so the pruner can
  stop a bad trial early.

What can go wrong around a study, and what it does then:

- a study is identified by ``study.json``, written once when the study is created (a random
  ``study_id`` and the ``study_name`` in the storage), not by the folder's name: a copied or
  renamed folder continues its own study. A folder from before ``study.json`` continues the one
  study its journal holds; a ``study_name`` other than the recorded one is refused (it would
  start a second study among the first one's run folders);
- each run folder holds ``trial.json`` (study id, trial number, parameters) and is reused only by
  that trial or a retry of it with the same parameters in the same study. A folder holding
  anything else (another study's trial in a reused folder, a run whose journal was lost) is left
  untouched and the trial runs in a fresh folder beside it, ``NNNN-2``, so no trial ever records
  a checkpoint trained with other parameters. Run folders are found by name in the study folder
  as it is now, wherever it was when they were made;
- the journal file never keeps a torn record: an append that fails (a full disk) is cut back
  off, and a torn last line left by a writer that died mid-write (or a copy cut short) is dropped
  when the study is opened and before every append, with one printed line and a copy of the
  journal as it was, ``study.journal.torn-TIME``. That line was never read by any worker (Optuna
  skips an unfinished last line), so nothing that counted is lost. An unreadable line with records
  after it may also be an old record damaged in place, so it is refused in one line naming
  ``--repair-journal``, which drops such lines (keeping the copy) and continues;
- a full disk stops the worker with one line (exit code 2): its trial is left running, and the
  next run, once there is space, resumes it from its last complete checkpoint;
- the search config is checked before any work, each mistake in one line (types, ranges, a
  ``step`` with ``log``, ``pruner_args`` and ``features`` keys with the closest name, a learning
  rate at or below 0, ``heartbeat_s`` under 1 s: every beat is a storage write); the ``features``
  source is read before the first trial, not found missing by three failed trials.

Study folder: ``search.json`` (the resolved search config), ``study.json`` (the study's id and
name), ``study.journal`` (the default storage: a file, so a study on a mounted Drive folder
survives the runtime), ``trials/NNNN/`` (run folders, each with ``trial.json``),
``features/KEY/{train,eval}`` (stores when the search builds them), ``encoder_cache/``, and after
the search ``best.json`` (a complete training preset), ``summary.md``/``summary.csv`` and
``img/*.png``.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..common.errors import UserError
from ..common.fileio import claim_folder, pid_is_alive, write_atomic, write_json
from ..common.locks import folder_lock
from ..common.options import add_options, options_from
from ..training.config import build_config, parse_overrides
from .config import (
    SearchConfig,
    check_features_source,
    feature_config,
    load_search_config,
    open_study,
    read_study_record,
    store_key,
    study_paths,
    trial_train_values,
)
from .report import counts, write_results

__all__ = ["SearchConfig", "load_search_config", "open_study", "search", "recover", "run_trial"]

log = logging.getLogger(__name__)

HOST = socket.gethostname()
# What makes a study the same study: a run asking for others is refused (trials, storage, ... may change).
STUDY_KEYS = ("train", "space", "features", "sampler")


# ---------------------------------------------------------------------------------------------
# Per-trial configuration and shared work


def ensure_stores(cfg: SearchConfig, study_dir: Path, params: dict[str, Any]) -> dict[str, str]:
    """Build (once, under a lock) the train and eval stores for the trial's feature config."""
    from ..features.build import build_features

    section = cfg.features or {}
    fc = feature_config(cfg, params)
    root = study_dir / "features" / store_key(fc)
    stores = {}
    for role, split in (("train", section.get("train_split", "train")), ("eval", section.get("eval_split", "dev"))):
        folder = root / role
        done = root / f"{role}.done"
        with folder_lock(folder):
            if not done.exists():
                print(f"features: {section['source']}:{split} -> {folder}")
                build_features(section["source"], split, folder, fc, workers=section.get("workers", 1))
                write_atomic(done, b"")
        stores[role] = str(folder)
    return stores


# ---------------------------------------------------------------------------------------------
# Workers: liveness, recovery, the count of trials


def _process_start(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _boot_id() -> str | None:
    """This kernel's boot id (Linux): with the host name, what makes a PID mean this process."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


BOOT = _boot_id()


def _worker_id() -> dict[str, Any]:
    return {"host": HOST, "boot": BOOT, "pid": os.getpid(), "start": _process_start(os.getpid())}


def is_stale(trial, stale_after_s: float, now: float | None = None) -> bool:
    """Whether a RUNNING trial's worker is gone: dead on this host, or silent too long elsewhere."""
    now = now or time.time()
    worker = trial.user_attrs.get("worker")
    if worker and worker.get("host") == HOST and worker.get("boot") == BOOT:
        return not pid_is_alive(int(worker["pid"]), started=float(worker.get("start") or 0))
    beat = trial.user_attrs.get("heartbeat")
    if beat is None and trial.datetime_start is not None:
        beat = trial.datetime_start.timestamp()
    return beat is None or now - float(beat) > stale_after_s


class TrialTakenOver(Exception):
    """Another worker judged this trial's worker dead and failed the trial (a heartbeat silent past
    `stale_after_s`, a host name shared by two machines): this worker must stop training it, since
    its retry resumes the same run folder."""


class _Heartbeat:
    """A thread that stamps the running trial every `interval` seconds; `lost` is set once the
    storage refuses a stamp because the trial was finished by someone else."""

    def __init__(self, trial, interval: float):
        self.trial, self.interval, self.stop, self.lost = trial, interval, threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, name="search-heartbeat", daemon=True)

    def _run(self):
        from optuna.exceptions import UpdateFinishedTrialError

        while not self.stop.wait(self.interval):
            try:
                self.trial.set_user_attr("heartbeat", time.time())
            except UpdateFinishedTrialError:
                self.lost.set()
                return
            except Exception as err:  # the storage hiccuped; the next beat tries again
                log.debug("heartbeat failed: %s", err)

    def __enter__(self):
        self.trial.set_user_attr("heartbeat", time.time())
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def recover(study, cfg: SearchConfig) -> list[int]:
    """Fail the trials whose worker is gone and queue their retries; returns the retried numbers.

    Safe with many workers: marking a trial failed succeeds for one of them only (the storage
    refuses to finish a trial twice), and a retry queued twice is discarded when it starts.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(t, cfg.stale_after_s):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "resume", True)
            if storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                print(f"search: trial {t.number}'s worker is gone; it will resume from {t.user_attrs.get('run_dir')}")
        except UpdateFinishedTrialError:
            continue  # another worker got there first, or the trial just finished
    trials = study.get_trials(deepcopy=False)
    successors = {t.user_attrs.get("retry_of") for t in trials if not t.user_attrs.get("discarded")}
    queued = []
    for t in trials:
        if t.state != TrialState.FAIL or not t.user_attrs.get("resume") or t.number in successors:
            continue
        retries = int(t.user_attrs.get("retries", 0))
        if retries >= cfg.max_retries:
            log.warning("trial %d died %d times; not retrying it again (see %s)", t.number, retries + 1, t.user_attrs.get("run_dir"))
            continue
        attrs = {"run_dir": t.user_attrs.get("run_dir"), "retry_of": t.number, "retries": retries + 1}
        study.enqueue_trial(t.params, user_attrs=attrs)
        queued.append(t.number)
    return queued


class _Discard(Exception):
    """A trial that must not run: past the requested count, or a retry another worker runs."""


class TrialError(Exception):
    """Training raised; the trial is recorded as failed with the error."""


def _must_discard(study, trial, wanted: int) -> str | None:
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("discarded") and t.number != trial.number]
    retry_of = trial.user_attrs.get("retry_of")
    if retry_of is not None:
        twins = [t for t in trials if t.user_attrs.get("retry_of") == retry_of and t.number < trial.number]
        return f"trial {twins[0].number} already retries trial {retry_of}" if twins else None
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    ahead = [t for t in trials if t.state in counted and (t.number < trial.number or t.user_attrs.get("retry_of") is not None)]
    return f"{wanted} trials are already finished or running" if len(ahead) >= wanted else None


# ---------------------------------------------------------------------------------------------
# One trial


def _reporter(trial, cfg: SearchConfig, run_dir: Path, lost: threading.Event | None = None):
    """A TrainerCallback that reports each evaluation to `trial` and prunes when told to; stops
    training once `lost` is set (the trial was taken over)."""
    import optuna
    from transformers import TrainerCallback

    from ..training.run_report import read_eval_utterances

    wilcoxon = cfg.pruner == "wilcoxon"

    class ReportToTrial(TrainerCallback):
        def __init__(self):
            self.reported: set[int] = set()

        def _report(self, step: int, wer: float) -> None:
            if step in self.reported:
                return
            self.reported.add(step)
            if not wilcoxon:
                trial.report(float(wer), step)
                return
            # Wilcoxon compares trials on the same instances: one value per eval utterance (its
            # WER), keyed by evaluation step and utterance, so two trials pair clip by clip.
            record = read_eval_utterances(run_dir, step)
            if record is None:
                return
            for i, (e, w) in enumerate(zip(record["errors"], record["words"])):
                if w:
                    trial.report(e / w, step * 100_000 + i)

        def on_train_begin(self, args, state, control, **kwargs):
            # A resumed trial: its evaluations before the crash count for pruning as before.
            for h in state.log_history:
                if "eval_wer" in h:
                    self._report(int(h["step"]), h["eval_wer"])

        def on_step_end(self, args, state, control, **kwargs):
            if lost is not None and lost.is_set():
                raise TrialTakenOver(f"trial {trial.number} was failed by another worker at step {state.global_step}; its retry resumes it")

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if metrics and "eval_wer" in metrics:
                self._report(state.global_step, metrics["eval_wer"])
                if trial.should_prune():
                    raise optuna.TrialPruned(f"eval WER {metrics['eval_wer']:.3f} at step {state.global_step}")

    return ReportToTrial()


def _rss_mb() -> float:
    """This process's resident memory now, in MiB."""
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20, 1)


def _peak_rss_mb() -> float | None:
    """The most resident memory this process has held so far, in MiB (None where unknown)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)  # bytes on macOS, KiB on Linux


def _set_attrs(trial, **attrs) -> None:
    """Record attributes on a trial that another worker may have failed meanwhile, or on a storage
    that cannot be written now (a full disk): then skip them."""
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
    except (UpdateFinishedTrialError, OSError) as err:
        log.debug("trial %d: attributes %s not recorded: %s", trial.number, sorted(attrs), err)


# ---------------------------------------------------------------------------------------------
# A full disk


DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "StorageFull")


def disk_full(err: BaseException | None) -> BaseException | None:
    """The error in `err`'s chain (causes and contexts) that says the disk is full, or None. Libraries
    wrap it (safetensors, torch.save) or replace it (Optuna's own assertion after a failed write)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS or any(w in str(err) for w in DISK_FULL_WORDS):
            return err
        err = err.__cause__ or err.__context__
    return None


class _StopWorker(BaseException):
    """Stop this worker at once, leaving its trial to be resumed by the next run (a full disk).

    A BaseException, so Optuna does not record the trial as failed (a write that would fail too):
    the trial stays running, its worker is gone when the process ends, and the next run's
    `recover` queues its retry, which resumes from the last complete checkpoint."""


# ---------------------------------------------------------------------------------------------
# Trial folders


TRIAL_RECORD = "trial.json"


def _normal(value: Any) -> Any:
    return json.loads(json.dumps(value))


def trial_folder(trial, study_dir: Path, params: dict[str, Any], study_id: str | None) -> Path:
    """The run folder of `trial`, claimed for it in ``trial.json`` (study id, trial number, params).

    A new trial gets ``trials/NNNN``; a retry the folder of the trial it retries (by name, inside
    this study folder, wherever the folder was when the trial started). A folder is reused only by
    the trial that made it or a retry of it with the same parameters in the same study; one that
    holds anything else (another study's trial left in a copied folder, a run whose journal was
    lost) is left as it is, and the trial runs in a fresh folder beside it, ``NNNN-2``, ...
    """
    recorded = trial.user_attrs.get("run_dir")
    name = Path(recorded).name if recorded else f"{trial.number:04d}"
    retry = "retry_of" in trial.user_attrs
    wanted = {"study_id": study_id, "trial": trial.number, "params": _normal(params)}
    first = folder = study_dir / "trials" / name
    n = 1
    while True:
        record = _trial_record(folder)
        if record is None:
            # No record: a fresh folder, or (a retry) one made by a search that wrote none yet.
            if not folder.exists() or not any(folder.iterdir()) or (retry and folder == first):
                break
        elif (record.get("study_id") == study_id and record.get("params") == wanted["params"]
              and (record.get("trial") == trial.number or retry)):
            break
        n += 1
        folder = study_dir / "trials" / f"{name}-{n}"
    if folder != first:
        held = _trial_record(first)
        held = f"trial {held.get('trial')} with {held.get('params')}" if held else "a run made without a trial record"
        print(f"search: {first} holds {held}, not trial {trial.number} of this study with {params}; it is left "
              f"as it is and trial {trial.number} runs in {folder}")
    if not (folder / TRIAL_RECORD).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / TRIAL_RECORD, wanted)
    return folder


def _trial_record(folder: Path) -> dict[str, Any] | None:
    """The folder's ``trial.json``; None where there is none, {} (matches nothing) where it is unreadable."""
    try:
        record = json.loads((folder / TRIAL_RECORD).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def run_trial(trial, cfg: SearchConfig) -> float:
    """The objective: train the trial's config in its run folder; the final eval WER."""
    import optuna

    from ..training.train import train

    study_dir = Path(cfg.study_dir)
    trial.set_user_attr("worker", _worker_id())
    reason = _must_discard(trial.study, trial, cfg.trials)
    if reason:
        trial.set_user_attr("discarded", reason)
        raise _Discard(reason)
    params = {p.name: p.suggest(trial) for p in cfg.params}
    record = read_study_record(study_dir)
    run_dir = trial_folder(trial, study_dir, params, record["study_id"] if record else None)
    trial.set_user_attr("run_dir", str(run_dir))
    started = time.time()
    try:
        with _Heartbeat(trial, cfg.heartbeat_s) as heartbeat:
            stores = ensure_stores(cfg, study_dir, params) if cfg.features else None
            train_cfg = build_config(trial_train_values(cfg, params, str(run_dir), stores))
            retry = f" (retry of trial {trial.user_attrs['retry_of']})" if "retry_of" in trial.user_attrs else ""
            print(f"search: trial {trial.number}{retry} {params} -> {run_dir}")
            result = train(train_cfg, callbacks=[_reporter(trial, cfg, run_dir, heartbeat.lost)])
    except KeyboardInterrupt:
        _set_attrs(trial, resume=True)  # stopped by hand: the next run resumes it
        raise
    except (optuna.TrialPruned, TrialTakenOver):
        raise
    except Exception as err:
        full = disk_full(err)
        if full is not None:  # not the trial's fault: stop, and let the next run resume it
            _set_attrs(trial, resume=True)
            raise _StopWorker(f"the disk is full ({full}) in trial {trial.number}: free space and run the same command "
                              f"again; the trial resumes from its last complete checkpoint in {run_dir}") from err
        _set_attrs(trial, error=f"{type(err).__name__}: {err}")
        raise TrialError(f"trial {trial.number} failed: {type(err).__name__}: {err}") from err
    finally:
        _set_attrs(trial, minutes=round((time.time() - started) / 60, 3), rss_mb=_rss_mb(), peak_rss_mb=_peak_rss_mb())
        if not cfg.keep_encoder_cache:
            shutil.rmtree(study_dir / "encoder_cache", ignore_errors=True)
    wer = result["metrics"].get("eval_wer")
    if wer is None:
        raise TrialError("the trial has no eval WER: the training preset needs eval_data (or a features section)")
    trial.set_user_attr("final", str(result["final"]))
    return float(wer)


# ---------------------------------------------------------------------------------------------
# The search


def search(cfg: SearchConfig, repair_journal: bool = False) -> dict[str, Any]:
    """Run (or continue) the study until `cfg.trials` trials are finished; returns the outcome.

    Re-running after a crash continues the same study: trials of dead workers resume from their
    run folders. Several processes may run this on one storage at once. Writes ``best.json``,
    ``summary.md``/``.csv`` and the plots into the study folder when it returns. A full disk
    stops the worker with a `UserError` (its trial resumes on the next run); `repair_journal`
    drops unreadable records from the middle of a journal file (a torn end is always dropped).
    """
    try:
        return _search(cfg, repair_journal)
    except _StopWorker as stop:
        raise UserError(str(stop)) from None
    except Exception as err:
        full = disk_full(err)
        if full is None:
            raise
        raise UserError(f"the disk is full ({full}): free space and run the same command again; "
                        "no finished trial is lost and a running one resumes from its last complete checkpoint") from None


def _search(cfg: SearchConfig, repair_journal: bool) -> dict[str, Any]:
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError

    study_dir, _, _ = study_paths(cfg)
    study_dir.mkdir(parents=True, exist_ok=True)
    _claim(study_dir, cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours to print
    study = open_study(cfg, repair_journal=repair_journal)
    c = counts(study)
    if c.get("COMPLETE", 0) + c.get("PRUNED", 0) < cfg.trials:
        check_features_source(cfg)  # a bad source fails here, not in three trials in a row
    failures = 0
    while True:
        recover(study, cfg)
        c = counts(study)
        done = c.get("COMPLETE", 0) + c.get("PRUNED", 0)
        if done >= cfg.trials:
            break
        if done + c.get("RUNNING", 0) >= cfg.trials and not c.get("WAITING"):
            print(f"search: the remaining {cfg.trials - done} trial(s) are running on other workers")
            break
        ran: list = []
        try:
            study.optimize(lambda t: run_trial(t, cfg), n_trials=1, catch=(_Discard, TrialError, TrialTakenOver),
                           gc_after_trial=True, callbacks=[lambda _, t: ran.append(t)])
        except UpdateFinishedTrialError:
            print("search: this worker's trial was failed by another worker (taken for dead); its retry resumes it")
        gc.collect()
        last = ran[-1] if ran else None
        failures = failures + 1 if last is not None and "error" in last.user_attrs and last.state.name == "FAIL" else 0
        if failures >= 3:
            raise UserError(f"3 trials in a row failed; the last: {last.user_attrs['error']} (see {last.user_attrs.get('run_dir')}); "
                            "fix it and run the same command again")
    return write_results(study, cfg)


def _claim(study_dir: Path, cfg: SearchConfig) -> None:
    """``search.json`` in the study folder; a different space or preset there is refused."""
    new = cfg.to_dict()
    if claim_folder(study_dir, "search.json", new, "a study",
                    comparable=lambda record: {k: record.get(k) for k in STUDY_KEYS},
                    hint="continue it with its own config or start a new study_dir"):
        write_json(study_dir / "search.json", new)  # the other settings (trials, storage, ...) may change


# ---------------------------------------------------------------------------------------------
# CLI


def add_cli(sub) -> None:
    """Register ``whisper-sv search``."""
    p = sub.add_parser(
        "search", help="Optuna hyper-parameter search over train(); crash-safe, resumable, many workers",
        description="Run (or continue) a study until N trials are finished. Start the same command on several "
        "machines with one --storage to share the work; re-run it after a crash to continue.",
    )
    p.add_argument("config", help="a search config JSON, or the name of one that ships: search-tiny, search-cpu")
    add_options(p, SearchConfig, skip=("train", "space"), aliases={"study_name": "--study"},
                title="search settings (override the config's)")
    p.add_argument("--repair-journal", action="store_true",
                   help="drop unreadable records from the middle of the study's journal file (a torn write that later "
                        "records were appended to); the original is kept beside it. A torn last record is always dropped.")
    p.set_defaults(func=_run_cli, takes_training_keys=True)
    p.epilog = "Any other --key value sets a training key of the trials (a TrainConfig or Seq2SeqTrainingArguments name)."


def _run_cli(args) -> int:
    overrides = {**parse_overrides(args.extra_keys), **options_from(args, SearchConfig)}
    try:
        result = search(load_search_config(args.config, overrides), repair_journal=args.repair_journal)
    except KeyboardInterrupt:
        print("whisper-sv search: interrupted; run the same command again to resume the trial from its last checkpoint", file=sys.stderr)
        return 130
    print(json.dumps(result, default=str))
    return 0
