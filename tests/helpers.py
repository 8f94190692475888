"""Test inputs shared by the app and inference tests."""

from __future__ import annotations

from pathlib import Path

from whisper_sv.data.voices import VOICES_BY_ID
from whisper_sv.synth.corpus import ClipJob, clip_name, render_clip

# A sentence, espeak voice and noise seed (the clip index) that the untuned packaged base
# transcribes well in every encoder window from 10 to 20 s ("Jonsklar inte ringa dig hela
# tiden.", CER 0.15), so "close to the reference" is a real check and not a coin flip: most espeak
# clips come out with CER 0.3-0.7 before fine-tuning, and which window suits a clip varies.
SENTENCE = "Jag ska inte ringa dig hela tiden."
# The tests' corpus (conftest's sv_corpus): espeak-ng's voices, clean, so the figures tests pin do
# not depend on MBROLA being installed or on the realism settings.
SV_CORPUS = {"clips": 60, "seed": 7, "voices": "espeak", "realism": False}
CLIP = ClipJob(4, "test", SENTENCE, VOICES_BY_ID["espeak-sv-m3"], 150, 50)


def load_bench(name: str):
    """bench/NAME.py as a module (the benches are scripts, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_bench", Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render_test_clip(folder: Path) -> Path:
    """`SENTENCE` as a 48 kHz MP3 in `folder`, as the synthetic corpus stores it."""
    folder.mkdir(parents=True, exist_ok=True)
    render_clip(CLIP, folder)
    return folder / clip_name(CLIP.index)


def sigkill_after_checkpoint(cmd: list[str], env: dict, checkpoint: Path, timeout_s: float = 300) -> None:
    """Start `cmd`, SIGKILL it once `checkpoint` is marked complete, and check the kill left a run
    to resume (no ``final/`` beside the checkpoint yet)."""
    import signal
    import subprocess
    import time

    from whisper_sv.training.checkpoints import COMPLETE_MARKER

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout_s
    while not (checkpoint / COMPLETE_MARKER).exists():
        assert proc.poll() is None, "the process ended before it could be killed"
        assert time.time() < deadline, f"no {checkpoint.name} within {timeout_s:.0f} s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (checkpoint.parent / "final").exists(), "killed too late to test anything"


def stopping_tiny(folder, seed: int, stop_at: int = 10):
    """``random:tiny`` saved to `folder`, changed so that it says a few random tokens and then stops.

    The random model's end-of-text embedding is the padding row (zeros), so it never ends a text
    and every decode runs to the length limit through all of faster-whisper's temperature
    fallbacks (about 8.5 minutes for this test's card on two cores). Here decoder positions from `stop_at` on
    point at a non-zero end-of-text embedding, and the final layer norm is scaled so that the
    choices are confident: each decode takes a few steps. `seed` perturbs the weights (another model).
    """
    import shutil

    import torch
    from transformers import WhisperForConditionalGeneration

    from whisper_sv.models.specs import random_tiny_dir

    shutil.copytree(random_tiny_dir(), folder)
    model = WhisperForConditionalGeneration.from_pretrained(folder)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if seed:
            for p in model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=generator))
        eot = torch.randn(model.config.d_model, generator=generator)
        eot = 0.5 * eot / eot.norm()
        model.model.decoder.embed_tokens.weight[model.config.eos_token_id] = eot
        model.model.decoder.embed_positions.weight[stop_at:] = 100 * eot
        model.model.decoder.layer_norm.weight.mul_(10.0)
    model.save_pretrained(folder)
    return folder


def ctrl_c_works() -> None:
    """A Popen ``preexec_fn``: give the child Ctrl-C back. A suite started in the background by a
    shell without job control (``cmd &``) ignores SIGINT, children inherit that, and Python then
    never raises KeyboardInterrupt: a test that sends SIGINT would test nothing."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
