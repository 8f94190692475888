"""Training under torchrun and accelerate launch: two gloo processes on the CPU.

The launchers start the unchanged command (``-m whisper_sv.cli train ...``) on the tiny preset. A
two-process run with 2 clips per process is compared with a one-process run with 4: the same clips
at every step, losses within what per-process token averaging explains, one copy of every
run-folder file. Then the whole job is SIGKILLed after a checkpoint and the same command resumes to
the uninterrupted run's weights. Both with the features and with the cached-encoder recipe, whose
cache the main process builds alone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from whisper_sv.common.distributed import barrier, is_main_process, main_only, main_process_first, rank, world_size
from whisper_sv.training.checkpoints import COMPLETE_MARKER, complete_checkpoints, mark_complete

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "src" / "whisper_sv" / "configs"  # the presets that ship in the package
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores
STEPS = 8  # configs/tiny.json: max_steps 8, save_steps 2, logging_steps 1, 4 clips per step
RECIPES = {  # eval_data names a store of the sv_stores fixture
    "features": dict(eval_data="dev"),  # evaluated at steps 4 and 8 (tiny.json's eval_steps)
    "cross_kv_cache": dict(eval_data=None, freeze_encoder=True, encoder_cache="cross_kv", freeze_embeddings=True,
                           dataloader_num_workers=1),
}

# `whisper-sv` with a record of what each process does, one JSON line per event in $RECORD.<rank>:
# the clips of each batch it collates (in a DataLoader worker when there is one), the clips its
# encoder runs on, and each file it creates, truncates, appends to or renames into inside the run
# folder $WATCH (Python's audit hook sees every open and rename made from Python; safetensors and
# torch.save write from Rust and C++, but save_pretrained writes config.json beside the weights
# from Python). The command line after the script is the CLI's own.
RECORDER = '''
import json, os, sys
from transformers.models.whisper import modeling_whisper
from whisper_sv.training import collator
from whisper_sv.cli import main

WATCH = os.path.join(os.environ["WATCH"], "")

def note(entry):
    with open(f"{os.environ['RECORD']}.{os.environ.get('RANK', '0')}", "a") as f:
        f.write(json.dumps(entry) + "\\n")

def audit(event, args):
    if event == "open" and isinstance(args[0], (str, os.PathLike)):
        mode, flags = args[1], args[2]
        writes = any(c in mode for c in "wax") if mode else flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        target = os.path.abspath(args[0]) if writes else ""
    elif event in ("os.rename", "os.replace") and isinstance(args[1], (str, os.PathLike)):
        target = os.path.abspath(args[1])
    else:
        return
    if target.startswith(WATCH):
        note({"wrote": target[len(WATCH):]})

collate, encode = collator.SpeechCollator.__call__, modeling_whisper.WhisperEncoder.forward
collator.SpeechCollator.__call__ = lambda self, rows: note({"batch": [r["clip_id"] for r in rows]}) or collate(self, rows)
modeling_whisper.WhisperEncoder.forward = lambda self, x, *a, **k: note({"encoded": len(x)}) or encode(self, x, *a, **k)
sys.addaudithook(audit)
sys.exit(main(sys.argv[1:]))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]


def _train_args(out: Path, stores: dict, recipe: str, **keys) -> list[str]:
    keys = {**RECIPES[recipe], **keys}
    keys["eval_data"] = keys["eval_data"] and str(stores[keys["eval_data"]])
    args = ["train", str(PRESETS / "tiny.json"), "--train_data", str(stores["train"]), "--output_dir", str(out)]
    for key, value in keys.items():
        args += [f"--{key}", json.dumps(value)]
    return args


def _records(out: Path, rank: int) -> list[dict]:
    path = Path(f"{out}.record.{rank}")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _losses(run: Path) -> list[tuple[int, float, float]]:
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(h["step"], h["loss"], h["grad_norm"]) for h in history if "loss" in h]


def _tensors(path: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _files(run: Path) -> list[str]:
    """Every file of a run folder, rng_state_<rank>.pth of a checkpoint counted as rng_state.pth."""
    names = [str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()]
    return sorted(n.replace("rng_state_0.pth", "rng_state.pth") for n in names if not n.endswith("rng_state_1.pth"))


@pytest.fixture(scope="module")
def runs(sv_stores, tmp_path_factory):
    """`runs(launcher, recipe)`: the run folder of an uninterrupted run, trained once per module.

    "one": one process, 4 clips a step; "torchrun": 2 processes of 2 clips. Both record what each
    process collates and encodes (RECORDER).
    """
    root = tmp_path_factory.mktemp("distributed")
    recorder = root / "record_run.py"
    recorder.write_text(RECORDER)
    made: dict[tuple[str, str], Path] = {}

    def run(launcher: str, recipe: str) -> Path:
        if (launcher, recipe) not in made:
            out = root / f"{launcher}-{recipe}"
            if launcher == "one":
                cmd = [sys.executable, str(recorder), *_train_args(out, sv_stores, recipe)]
            else:
                cmd = [*_torchrun(), str(recorder), *_train_args(out, sv_stores, recipe, per_device_train_batch_size=2)]
            subprocess.run(cmd, check=True, env={**ENV, "RECORD": f"{out}.record", "WATCH": str(out)}, capture_output=True)
            made[launcher, recipe] = out
        return made[launcher, recipe]

    return run


def sigkill_job_after_checkpoint(cmd: list[str], checkpoint: Path, timeout_s: float = 300) -> None:
    """Start a launcher, and once `checkpoint` is marked complete SIGKILL the whole job at once.

    torchrun starts each worker in a session of its own, so killing the launcher's process group
    alone would leave the workers training: every process group of the job is killed, the
    launcher's, each worker's and with it their DataLoader workers'.
    """
    import psutil

    proc = subprocess.Popen(cmd, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout_s
    while not (checkpoint / COMPLETE_MARKER).exists():
        assert proc.poll() is None, "the job ended before it could be killed"
        assert time.time() < deadline, f"no {checkpoint.name} within {timeout_s:.0f} s"
        time.sleep(0.05)
    job = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    groups = set()
    for p in job:
        try:
            groups.add(os.getpgid(p.pid))
        except ProcessLookupError:
            pass
    for group in groups:
        os.killpg(group, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while alive := [p for p in job if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]:
        assert time.time() < deadline, f"still running after SIGKILL: {alive}"
        time.sleep(0.05)
    assert len(groups) >= 3, f"expected the launcher's and two workers' process groups, got {groups}"
    assert not (checkpoint.parent / "final").exists(), "killed too late to test anything"


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_torchrun_steps_through_the_one_process_batches_and_writes_the_run_folder_once(runs, sv_stores, recipe):
    from whisper_sv.data.feature_store import FeatureStore

    one, two = runs("one", recipe), runs("torchrun", recipe)
    # The clips of each step: rank 0's 2 then rank 1's 2 are the one-process run's 4, in order.
    train_clips = set(FeatureStore(sv_stores["train"]).dataset()["clip_id"])

    def steps(run, k):  # the training batches a process collated (not the evaluations')
        return [r["batch"] for r in _records(run, k) if "batch" in r and set(r["batch"]) <= train_clips][:STEPS]

    single, ranks = steps(one, 0), [steps(two, k) for k in (0, 1)]
    assert len(single) == STEPS and all(len(b) == 4 for b in single)
    assert [a + b for a, b in zip(*ranks)] == single
    # Training losses: equal weights at step 1, so there the only difference is that each process averages
    # its loss over its own tokens and the two means are averaged (the one process averages over
    # all 4 clips' tokens); later steps add what those gradients did to the weights.
    a, b = _losses(one), _losses(two)
    assert [s for s, _, _ in a] == [s for s, _, _ in b] == list(range(1, STEPS + 1))
    assert b[0][1] == pytest.approx(a[0][1], rel=1e-3) and b[0][2] == pytest.approx(a[0][2], rel=1e-2)
    for (step, loss_1, _), (_, loss_2, _) in zip(a, b):
        assert loss_2 == pytest.approx(loss_1, rel=5e-3), f"step {step}"
    # One copy of each run-folder file: the same files as the one-process run's, each process's
    # RNG state in the checkpoints aside, and whole.
    assert _files(two) == _files(one)
    for ckpt in complete_checkpoints(two):
        sizes = json.loads((ckpt / COMPLETE_MARKER).read_text())["sizes"]
        assert {"rng_state_0.pth", "rng_state_1.pth", "model.safetensors"} <= set(sizes), ckpt.name
    assert len((two / "metrics.jsonl").read_text().splitlines()) == len((one / "metrics.jsonl").read_text().splitlines())
    assert json.loads((two / "config.json").read_text())["per_device_train_batch_size"] == 2
    # Only the main process writes the run folder: rank 1 takes the encoder cache's lock and writes
    # its RNG state into each checkpoint (torch.save, from C++: unseen here, but in the markers
    # above), nothing else. It also maps the finished cache read-and-write inside
    # build_encoder_cache, which writes nothing once every row is done (not counted here).
    wrote = [{r["wrote"] for r in _records(two, k) if "wrote" in r} for k in (0, 1)]
    assert {"metrics.jsonl", "config.json", "final/README.md", "final/config.json", "checkpoint-8/trainer_state.json"} <= wrote[0]
    assert {w for w in wrote[1] if not w.endswith("/rng_state_1.pth")} <= {".encoder_cache.lock"}, sorted(wrote[1])
    if RECIPES[recipe]["eval_data"]:  # each dev clip scored once (not the repeats a last batch is padded with)
        for step in (4, 8):
            scored = [json.loads((run / "evals" / f"step-{step}.json").read_text()) for run in (one, two)]
            assert [len(e["hypotheses"]) for e in scored] == [6, 6] and scored[0]["words"] == scored[1]["words"]
    if RECIPES[recipe].get("encoder_cache"):  # built by rank 0 alone, read by both
        assert [sum(r.get("encoded", 0) for r in _records(two, k)) for k in (0, 1)] == [48, 0]
        meta = json.loads((two / "encoder_cache" / "cache.json").read_text())
        assert meta["done"] == meta["shape"][0] == 48


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_torchrun_job_sigkilled_then_rerun_resumes_to_the_uninterrupted_weights(runs, sv_stores, tmp_path, recipe):
    straight = runs("torchrun", recipe)
    run = tmp_path / "killed"
    cmd = [*_torchrun(), "-m", "whisper_sv.cli", *_train_args(run, sv_stores, recipe, per_device_train_batch_size=2)]
    sigkill_job_after_checkpoint(cmd, run / "checkpoint-4")
    planted = run / "checkpoint-6"  # a checkpoint the job died inside: no completion marker
    if planted.exists():
        import shutil

        shutil.rmtree(planted)
    planted.mkdir()
    (planted / "rng_state_1.pth").write_bytes(b"\x00" * 10)  # rank 1 got here first, rank 0 never did
    assert [p.name for p in complete_checkpoints(run)][-1] == "checkpoint-4"

    cmd = [*_torchrun(), "-m", "whisper_sv.cli", *_train_args(run, sv_stores, recipe, per_device_train_batch_size=2)]
    out = subprocess.run(cmd, check=True, env=ENV, capture_output=True, text=True)
    assert out.stdout.count(f"resuming from {run / 'checkpoint-4'}") == 2, "both processes resume from checkpoint-4"
    assert len(list(run.glob("incomplete-checkpoint-6-*"))) == 1, "set aside once, by the main process"

    a, b = _tensors(straight / "final" / "model.safetensors"), _tensors(run / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert _losses(run) == _losses(straight), "one loss per step, none doubled or lost"


@pytest.mark.slow
def test_accelerate_launch_trains_as_torchrun_does(runs, sv_stores, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on a CPU machine: torchrun underneath, the
    Trainer told to use the CPU by train.py. (`--cpu` would run one process: accelerate 1.x starts
    several CPU processes only through mpirun.)"""
    straight = runs("torchrun", "features")
    run = tmp_path / "accelerate"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "whisper_sv.cli", *_train_args(run, sv_stores, "features", per_device_train_batch_size=2)]
    subprocess.run(cmd, check=True, env=ENV, capture_output=True)
    assert (run / "checkpoint-8" / "rng_state_1.pth").is_file(), "two processes trained"
    a, b = _tensors(straight / "final" / "model.safetensors"), _tensors(run / "final" / "model.safetensors")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert _files(run) == _files(straight)


def test_one_process_is_the_main_one_and_never_waits(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert (rank(), world_size(), is_main_process()) == (0, 1, True)
    barrier()  # a no-op: nothing to wait for
    with main_process_first():
        pass
    assert main_only(lambda x: x + 1)(1) == 2


def test_other_ranks_skip_main_only_work(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "1")  # a rank of its own: no process group to wait on
    written = []
    assert main_only(written.append)("metrics") is None and written == []
    assert not is_main_process()


def test_the_completion_marker_holds_every_process_rng_state(tmp_path):
    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    for name, size in (("model.safetensors", 5), ("rng_state_0.pth", 3), ("rng_state_1.pth", 4)):
        (ckpt / name).write_bytes(b"x" * size)
    mark_complete(ckpt)
    sizes = json.loads((ckpt / COMPLETE_MARKER).read_text())["sizes"]
    assert sizes == {"model.safetensors": 5, "rng_state_0.pth": 3, "rng_state_1.pth": 4}
    (ckpt / "rng_state_1.pth").write_bytes(b"x")  # a rank's state rewritten short: not resumable
    assert complete_checkpoints(tmp_path) == []
