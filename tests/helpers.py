"""Test inputs shared by the app and inference tests."""

from __future__ import annotations

from pathlib import Path

from whisper_sv.synth import ClipJob, clip_name, render_clip

# A sentence, espeak voice and noise seed (the clip index) that the untuned packaged base
# transcribes well in every encoder window from 10 to 20 s ("Jonsklar inte ringa dig hela
# tiden.", CER 0.15), so "close to the reference" is a real check and not a coin flip: most espeak
# clips come out with CER 0.3-0.7 before fine-tuning, and which window suits a clip varies.
SENTENCE = "Jag ska inte ringa dig hela tiden."
CLIP = ClipJob(4, "test", SENTENCE, "sv+m3", 150, 50)


def render_test_clip(folder: Path) -> Path:
    """`SENTENCE` as a 48 kHz MP3 in `folder`, as the synthetic corpus stores it."""
    folder.mkdir(parents=True, exist_ok=True)
    render_clip(CLIP, folder)
    return folder / clip_name(CLIP.index)
