"""A shorter encoder window than Whisper's 30 s, the same in training, evaluation and serving.

Whisper's encoder always sees 30 s (3,000 log-mel frames, 1,500 positions), whatever the clip's
length. The app's CTranslate2 backend encodes a window fitted to the chunk instead (the chunk + 1 s,
at least 15 s: `decoding.window_frames`), which on 2 CPU cores makes the encoder ~3x faster at no
measurable WER cost. A model fine-tuned on 30 s windows is then served on windows it never saw in
training; training on the window it is served with removes that mismatch, halves the encoder's
work and halves a cross-attention cache (encoder_cache.py).

The model's weights do not change: the window is a run setting, recorded in the model's config as
``whisper_sv_window_s`` so that `evaluate` scores a model on the window it was trained on by
default. Transformers' encoder refuses any input but 3,000 frames; `accept_short_windows` lets one
encoder instance take a shorter (even) number of frames by giving it the first positions of its
sinusoidal position table for that call. The exported CTranslate2 model takes any window as it is.
"""

from __future__ import annotations

import types

from ..audio.io import CHUNK_LENGTH, N_FRAMES

WINDOW_KEY = "whisper_sv_window_s"  # in the model's config.json: the encoder window it was trained on
MIN_WINDOW_S = 1.0


def check_window_s(seconds: float) -> float:
    """`seconds` as a float, or ValueError with the range to use (1 to 30 s in 0.02 s steps)."""
    seconds = float(seconds)
    if not MIN_WINDOW_S <= seconds <= CHUNK_LENGTH:
        raise ValueError(f"encoder_window_s={seconds:g}: use {MIN_WINDOW_S:g} to {CHUNK_LENGTH} s ({CHUNK_LENGTH} = Whisper's own window)")
    if round(seconds * 100) % 2:
        raise ValueError(f"encoder_window_s={seconds:g}: use a whole number of 0.02 s (the encoder halves the frame count)")
    return seconds


def frames_for(seconds: float) -> int:
    """Log-mel frames (100 per second) of an encoder window of `seconds`."""
    return int(round(check_window_s(seconds) * 100))


def trained_window_s(config) -> float:
    """The window a model was fine-tuned on (its config's ``whisper_sv_window_s``), else 30 s."""
    return float(getattr(config, WINDOW_KEY, None) or CHUNK_LENGTH)


def record_window(model, seconds: float) -> None:
    """Write the training window into the model's config (saved with it); 30 s writes nothing."""
    if frames_for(seconds) < N_FRAMES:
        setattr(model.config, WINDOW_KEY, float(seconds))
    elif hasattr(model.config, WINDOW_KEY):
        delattr(model.config, WINDOW_KEY)


def accept_short_windows(model) -> None:
    """Let `model`'s encoder take input of fewer than 3,000 frames (idempotent).

    For a call with T frames the encoder gets, for that call only, a position table of its first
    T/2 rows (a view of the same tensor) and a config that expects T frames; 3,000 frames take the
    library's own path unchanged. The saved model is the same as before.
    """
    import torch  # deferred: importing this module must stay cheap for the CLI

    encoder = model.get_encoder()
    if getattr(encoder, "_whisper_sv_short_windows", False):
        return
    library_forward = encoder.forward
    stride = encoder.conv1.stride[0] * encoder.conv2.stride[0]

    def forward(self, input_features, *args, **kwargs):
        positions = input_features.shape[-1] // stride
        table, expected = self.embed_positions, self.config.max_source_positions
        if positions >= table.num_embeddings:
            return library_forward(input_features, *args, **kwargs)
        # Whisper's table is sinusoidal and frozen: a view of its first rows is the same numbers.
        self.embed_positions = torch.nn.Embedding.from_pretrained(table.weight[:positions], freeze=True)
        self.config.max_source_positions = positions
        try:
            return library_forward(input_features, *args, **kwargs)
        finally:
            self.embed_positions, self.config.max_source_positions = table, expected

    encoder.forward = types.MethodType(forward, encoder)
    encoder._whisper_sv_short_windows = True
