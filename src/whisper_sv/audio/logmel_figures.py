"""Figures of log-mels for the notebooks and `make figures`: store rows, and one clip before and after smoothing.

Kept apart from `logmel` so training and serving never import plotting (matplotlib is loaded inside
each function, only when a figure is drawn).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..common.fileio import atomic_file
from .io import N_FRAMES
from .logmel import Smoothing, collate_features, log_mel, pad_features, smooth_log_mel


def plot_log_mels(rows: Iterable[dict[str, Any]], out: str | Path = "img/log_mels.png", max_rows: int = 4) -> Path:
    """Plot a few feature-store rows (padded, first seconds only) to `out`; returns the path."""
    import matplotlib  # figures only (the notebooks): not loaded by training or serving

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(rows)[:max_rows]
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 2.2 * len(rows)), squeeze=False)
    for ax, row in zip(axes[:, 0], rows):
        shown = min(N_FRAMES, int(row["n_frames"]) + 50)
        image = collate_features([row])[0, :, :shown].numpy()
        im = ax.imshow(image, origin="lower", aspect="auto", cmap="magma", extent=(0, shown / 100, 0, image.shape[0]))
        ax.set_title(f"{row['clip_id']}: {row['duration']:.2f} s, {row['n_frames']} frames", fontsize=9)
        ax.set_ylabel("mel bin")
        fig.colorbar(im, ax=ax, pad=0.01)
    axes[-1, 0].set_xlabel("time (s)")
    return _save(fig, out)


def plot_smoothing(audio: np.ndarray, spec: Smoothing, out: str | Path = "img/smoothing.png", n_mels: int = 80,
                   title: str = "") -> Path:
    """Plot one clip's log-mel before and after `spec` to `out`; returns the path."""
    import matplotlib  # figures only (the notebooks): not loaded by training or serving

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    compact, n_frames, pad_value = log_mel(audio, n_mels)
    smoothed, n_smoothed = smooth_log_mel(compact, n_frames, pad_value, spec)
    shown = min(N_FRAMES, n_frames + 50)
    before = pad_features(compact, n_frames, pad_value)[:, :shown]
    after = pad_features(smoothed, n_smoothed, pad_value)[:, :shown]
    fig, axes = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    params = {k: v for k, v in spec.to_dict().items() if k == "kind" or _used(spec.kind, k)}
    for ax, image, label in ((axes[0], before, "log-mel"), (axes[1], after, f"smoothed: {params}")):
        im = ax.imshow(image, origin="lower", aspect="auto", cmap="magma", extent=(0, shown / 100, 0, image.shape[0]),
                       vmin=before.min(), vmax=before.max())
        ax.set_title(f"{title} {label}".strip(), fontsize=9)
        ax.set_ylabel("mel bin")
        fig.colorbar(im, ax=ax, pad=0.01)
    axes[1].set_xlabel("time (s)")
    return _save(fig, out)


def _used(kind: str, field: str) -> bool:
    return field in {"gaussian": ("ksize", "sigma"), "median": ("ksize",), "bilateral": ("d", "sigma_color", "sigma_space")}[kind]


def _save(fig, out: str | Path) -> Path:
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_file(out) as f:  # a figure a notebook shows is never half-written
        fig.savefig(f, dpi=110, format=out.suffix.lstrip(".") or "png")
    plt.close(fig)
    return out
