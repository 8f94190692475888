"""Which checkpoints of a run folder are whole, and which one a resumed run starts from.

The Trainer writes ``checkpoint-N/`` file by file; a process killed in the middle leaves a folder
that looks like a checkpoint and is not. So after the Trainer finishes one, `mark_complete`
records the sizes of the files a resume needs in ``whisper_sv_complete.json``; a folder without
a marker that matches is never resumed from, and `resume_checkpoint` moves it out of the way.
Once ``final/`` is whole, `record_finished` writes ``finished.json`` beside it, so a finished run
is known as one (`finished_record`) and a re-run of it has nothing to do.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

from ..common.distributed import barrier, is_main_process
from ..common.fileio import write_atomic

log = logging.getLogger(__name__)

COMPLETE_MARKER = "whisper_sv_complete.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# What a checkpoint needs to resume exactly: weights, optimizer, scheduler, RNG, trainer state.
# A LoRA run's checkpoint holds adapter_model.safetensors instead of model.safetensors.
CHECKPOINT_FILES = ("model.safetensors", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json")
# The RNG states: rng_state.pth from one process, rng_state_<rank>.pth from each of several.
RNG_STATE_GLOB = "rng_state*.pth"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of `run_dir` that were finished, oldest first."""
    found = []
    for p in run_dir.glob("checkpoint-*"):
        m = CHECKPOINT_RE.match(p.name)
        if m and p.is_dir() and _is_complete(p):
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def _is_complete(ckpt: Path) -> bool:
    if not (ckpt / COMPLETE_MARKER).is_file():
        return False
    try:
        marker = json.loads((ckpt / COMPLETE_MARKER).read_text())
    except ValueError:
        return False
    sizes = marker.get("sizes", {})
    return all((ckpt / f).is_file() and (ckpt / f).stat().st_size == sizes.get(f) for f in sizes) and bool(sizes)


def set_aside_incomplete(run_dir: Path) -> list[Path]:
    """Move checkpoint folders without a valid completion marker out of the Trainer's way.

    They are renamed to ``incomplete-checkpoint-N-<time>`` (not deleted: a user may want to look),
    so neither resuming nor the Trainer's checkpoint rotation ever picks them up.
    """
    moved = []
    for p in sorted(run_dir.glob("checkpoint-*")):
        if CHECKPOINT_RE.match(p.name) and p.is_dir() and not _is_complete(p):
            dest = run_dir / f"incomplete-{p.name}-{int(time.time())}"
            os.rename(p, dest)
            log.warning("%s was half-written when the last run died; moved to %s", p.name, dest.name)
            moved.append(dest)
    return moved


def resume_checkpoint(run_dir: Path) -> str | None:
    """The last complete checkpoint to resume from, or None; half-written ones are set aside first
    (by the main process of a multi-process job; the others look after it has)."""
    if is_main_process():
        set_aside_incomplete(run_dir)
    barrier()
    done = complete_checkpoints(run_dir)
    return str(done[-1]) if done else None


def mark_complete(ckpt: Path) -> None:
    """Write `ckpt`'s completion marker: the sizes of the files a resume reads.

    In a multi-process job each process writes its own RNG state: call this in the main process
    once all have saved (train.py waits for them at a barrier first).
    """
    names = [*CHECKPOINT_FILES, *sorted(p.name for p in ckpt.glob(RNG_STATE_GLOB))]
    sizes = {f: (ckpt / f).stat().st_size for f in names if (ckpt / f).is_file()}
    write_atomic(ckpt / COMPLETE_MARKER, json.dumps({"sizes": sizes, "time": time.time()}))


# Written into the run folder once final/ is whole (model, processor, card, metrics): how long the
# run trained and its last evaluation, so a re-run of a finished run returns them without training.
FINISHED_RECORD = "finished.json"


def checkpoint_step(ckpt: str | Path) -> int:
    """The global step of ``checkpoint-N``."""
    m = CHECKPOINT_RE.match(Path(ckpt).name)
    if not m:
        raise ValueError(f"{ckpt} is not a checkpoint-N folder")
    return int(m.group(1))


def record_finished(run_dir: Path, final: Path, record: dict) -> None:
    """Write the run folder's `FINISHED_RECORD`: `record` plus the sizes of every file of `final`."""
    sizes = {str(p.relative_to(final)): p.stat().st_size for p in sorted(final.rglob("*")) if p.is_file()}
    write_atomic(run_dir / FINISHED_RECORD, json.dumps({**record, "sizes": sizes}, indent=2, default=str))


def finished_record(run_dir: Path) -> dict | None:
    """The finished-run record, if there is one and final/ still holds every file it lists at its size."""
    try:
        record = json.loads((run_dir / FINISHED_RECORD).read_text())
    except (OSError, ValueError):
        return None
    final = run_dir / "final"
    sizes = record.get("sizes") if isinstance(record, dict) else None
    if not sizes or not all((final / f).is_file() and (final / f).stat().st_size == n for f, n in sizes.items()):
        return None
    return record


def forget_finished(run_dir: Path) -> None:
    """Remove the finished-run record: final/ is about to be rewritten."""
    (run_dir / FINISHED_RECORD).unlink(missing_ok=True)
