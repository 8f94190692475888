"""Shared fixtures: a small synthetic Swedish corpus, built once per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Test this checkout's code, whichever checkout `pip install -e .` last pointed at; PYTHONPATH
# carries it into the subprocesses (CLI kill tests) and notebook kernels the tests start.
SRC = str(Path(__file__).resolve().parents[1] / "src")
sys.path.insert(0, SRC)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)

# Tests are offline: never let a stray Hub id reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SV_CORPUS_CLIPS = 60


@pytest.fixture(scope="session")
def sv_corpus(tmp_path_factory) -> Path:
    """A 60-clip synthetic corpus in the Common Voice layout (train 48 / dev 6 / test 6)."""
    from whisper_sv.synth import SynthConfig, synthesize

    return synthesize(tmp_path_factory.mktemp("sv-synth"), SynthConfig(clips=SV_CORPUS_CLIPS, seed=7), workers=2)


@pytest.fixture(scope="session")
def sv_stores(sv_corpus, tmp_path_factory) -> dict[str, Path]:
    """Feature stores of the corpus's train (48 clips) and dev (6 clips) splits, packaged tokenizer."""
    from whisper_sv.features import FeatureConfig, build_features

    root = tmp_path_factory.mktemp("stores")
    config = FeatureConfig(shard_size=16)
    for split in ("train", "dev"):
        build_features(f"cv:{sv_corpus}", split, root / split, config, workers=1, progress=False)
    return {"train": root / "train", "dev": root / "dev"}
