"""Test inputs shared by the app and inference tests."""

from __future__ import annotations

from pathlib import Path

from whisper_sv.synth import ClipJob, clip_name, render_clip
from whisper_sv.voices import VOICES_BY_ID

# A sentence, espeak voice and noise seed (the clip index) that the untuned packaged base
# transcribes well in every encoder window from 10 to 20 s ("Jonsklar inte ringa dig hela
# tiden.", CER 0.15), so "close to the reference" is a real check and not a coin flip: most espeak
# clips come out with CER 0.3-0.7 before fine-tuning, and which window suits a clip varies.
SENTENCE = "Jag ska inte ringa dig hela tiden."
# The tests' corpus (conftest's sv_corpus): espeak-ng's voices, clean, so the figures tests pin do
# not depend on MBROLA being installed or on the realism settings.
SV_CORPUS = {"clips": 60, "seed": 7, "voices": "espeak", "realism": False}
CLIP = ClipJob(4, "test", SENTENCE, VOICES_BY_ID["espeak-sv-m3"], 150, 50)


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

    from whisper_sv.checkpoints import COMPLETE_MARKER

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout_s
    while not (checkpoint / COMPLETE_MARKER).exists():
        assert proc.poll() is None, "the process ended before it could be killed"
        assert time.time() < deadline, f"no {checkpoint.name} within {timeout_s:.0f} s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (checkpoint.parent / "final").exists(), "killed too late to test anything"
