"""Which process of a multi-process training job this is, and waiting for the main one.

``torchrun --nproc_per_node N`` and ``accelerate launch --num_processes N`` start N copies of one
command and tell each its place in the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT). The Trainer shards the batches and averages the gradients; what it does not know
about is this toolkit's own writing. So the run folder (completion markers, ``metrics.jsonl``,
curves, the resolved config, ``evals/``, ``final/`` with its model card, the Hub push) and the
encoder cache are written by the main process (global rank 0) alone, and the others wait for it
where they read what it wrote (`main_process_first`).

Waits go through a gloo group of their own with a long timeout: the main process may build an
encoder cache for an hour while the others wait, far past the 30 minutes a training collective
is allowed (``ddp_timeout``), and gloo waits on the CPU whatever backend trains.

A single process (plain ``python``, a search trial) is the main one and every wait is a no-op;
nothing here imports torch unless the job has several processes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from datetime import timedelta
from typing import Any, Callable, Iterator, TypeVar

# How long the other processes wait for the main one's solo work (an encoder cache of a large
# corpus on a CPU, writing final/); a dead main process ends the job sooner: the launcher stops
# the others when one fails.
WAIT_TIMEOUT = timedelta(hours=24)

_wait_group: Any = None  # the gloo group `barrier` uses; made by `setup`
F = TypeVar("F", bound=Callable[..., Any])


def _dist() -> Any:
    """``torch.distributed`` when this process has joined a process group, else None (torch not imported)."""
    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_available() and dist.is_initialized() else None


def world_size() -> int:
    """How many processes the job has: the process group's size, else the launcher's WORLD_SIZE, else 1."""
    dist = _dist()
    return dist.get_world_size() if dist else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (0 without a launcher)."""
    dist = _dist()
    return dist.get_rank() if dist else int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """True in the process that writes the run folder: global rank 0, or the only process."""
    return rank() == 0


def setup(timeout_s: float = 1800) -> None:
    """Join the launcher's process group (once; a no-op for a single process).

    The Trainer would join it itself, but only when it builds its arguments; the run folder and the
    encoder cache are settled before that. `timeout_s` is the training collectives' limit (the
    Trainer's ``ddp_timeout``); the Trainer adopts the group made here. NCCL on CUDA, gloo on a CPU,
    as the Trainer (through accelerate) would pick.
    """
    global _wait_group
    if _wait_group is not None or world_size() == 1:
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            backend = "nccl"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    _wait_group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)


def barrier() -> None:
    """Wait until every process of the job gets here (a no-op for a single process)."""
    if world_size() == 1:
        return
    setup()
    import torch.distributed as dist

    dist.barrier(group=_wait_group)


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block in the main process first and in the others after it has finished.

    For work done once and then read: the main process builds (the encoder cache) or claims (the
    run folder), the others then find it done. If the main process fails inside, the others never
    start the block: the launcher ends the job.
    """
    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()


def main_only(fn: F) -> F:
    """Make `fn` run in the main process only; elsewhere it does nothing and returns None."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs) if is_main_process() else None

    return wrapper  # type: ignore[return-value]
