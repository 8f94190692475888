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

Study folder: ``search.json`` (the resolved search config), ``study.journal`` (the default
storage: a file, so a study on a mounted Drive folder survives the runtime), ``trials/NNNN/``
(run folders), ``features/KEY/{train,eval}`` (stores when the search builds them),
``encoder_cache/``, and after the search ``best.json`` (a complete training preset),
``summary.md``/``summary.csv`` and ``img/*.png``.
"""

from __future__ import annotations

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

from .config import build_config, parse_overrides
from .fileio import claim_folder, write_atomic, write_json
from .locks import folder_lock
from .options import add_options, options_from
from .search_config import SearchConfig, feature_config, load_search_config, open_study, store_key, study_paths, trial_train_values
from .search_report import counts, write_results

__all__ = ["SearchConfig", "load_search_config", "open_study", "search", "recover", "run_trial"]

log = logging.getLogger(__name__)

HOST = socket.gethostname()
# What makes a study the same study: a run asking for others is refused (trials, storage, ... may change).
STUDY_KEYS = ("train", "space", "features", "sampler")


# ---------------------------------------------------------------------------------------------
# Per-trial configuration and shared work


def ensure_stores(cfg: SearchConfig, study_dir: Path, params: dict[str, Any]) -> dict[str, str]:
    """Build (once, under a lock) the train and eval stores for the trial's feature config."""
    from .features import build_features

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
        start = _process_start(int(worker["pid"]))
        return start is None or abs(start - float(worker.get("start") or 0)) > 1.0
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

    from .run_report import read_eval_utterances

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
    """Record attributes on a trial that another worker may have failed meanwhile (then: skip)."""
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
    except UpdateFinishedTrialError:
        pass


def run_trial(trial, cfg: SearchConfig) -> float:
    """The objective: train the trial's config in its run folder; the final eval WER."""
    import optuna

    from .train import train

    study_dir = Path(cfg.study_dir)
    trial.set_user_attr("worker", _worker_id())
    reason = _must_discard(trial.study, trial, cfg.trials)
    if reason:
        trial.set_user_attr("discarded", reason)
        raise _Discard(reason)
    run_dir = Path(trial.user_attrs.get("run_dir") or study_dir / "trials" / f"{trial.number:04d}")
    trial.set_user_attr("run_dir", str(run_dir))
    params = {p.name: p.suggest(trial) for p in cfg.params}
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


def search(cfg: SearchConfig) -> dict[str, Any]:
    """Run (or continue) the study until `cfg.trials` trials are finished; returns the outcome.

    Re-running after a crash continues the same study: trials of dead workers resume from their
    run folders. Several processes may run this on one storage at once. Writes ``best.json``,
    ``summary.md``/``.csv`` and the plots into the study folder when it returns.
    """
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError

    study_dir, _, _ = study_paths(cfg)
    study_dir.mkdir(parents=True, exist_ok=True)
    _claim(study_dir, cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours to print
    study = open_study(cfg)
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
            raise RuntimeError(f"3 trials in a row failed; the last: {last.user_attrs['error']} (see {last.user_attrs.get('run_dir')})")
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
    p.add_argument("config", help="search config JSON, e.g. configs/search-tiny.json")
    add_options(p, SearchConfig, skip=("train", "space"), aliases={"study_name": "--study"},
                title="search settings (override the config's)")
    p.set_defaults(func=_run_cli, takes_training_keys=True)
    p.epilog = "Any other --key value sets a training key of the trials (a TrainConfig or Seq2SeqTrainingArguments name)."


def _run_cli(args) -> int:
    overrides = {**parse_overrides(args.extra_keys), **options_from(args, SearchConfig)}
    try:
        result = search(load_search_config(args.config, overrides))
    except KeyboardInterrupt:
        print("whisper-sv search: interrupted; run the same command again to resume the trial from its last checkpoint", file=sys.stderr)
        return 130
    print(json.dumps(result, default=str))
    return 0
