"""Shared fixtures: a small synthetic Swedish corpus, built once per test session; the folder
``make figures`` asks the figure-making tests to write to; and a check that a test session leaves
the repository as it found it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Test this checkout's code, whichever checkout `pip install -e .` last pointed at; PYTHONPATH
# carries it into the subprocesses (CLI kill tests) and notebook kernels the tests start.
SRC = str(ROOT / "src")
sys.path.insert(0, SRC)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)

# Tests are offline: never let a stray Hub id reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")



@pytest.fixture(scope="session")
def sv_corpus(tmp_path_factory) -> Path:
    """A 60-clip synthetic corpus in the Common Voice layout (train 48 / dev 6 / test 6): espeak-ng's
    voices, clean (`SV_CORPUS`), so the figures tests pin do not depend on MBROLA being installed."""
    from helpers import SV_CORPUS

    from whisper_sv.synth.corpus import SynthConfig, synthesize

    return synthesize(tmp_path_factory.mktemp("sv-synth"), SynthConfig(**SV_CORPUS), workers=2)


@pytest.fixture(scope="session")
def sv_stores(sv_corpus, tmp_path_factory) -> dict[str, Path]:
    """Feature stores of the corpus's train (48 clips) and dev (6 clips) splits, packaged tokenizer."""
    from whisper_sv.data.feature_config import FeatureConfig
    from whisper_sv.features.build import build_features

    root = tmp_path_factory.mktemp("stores")
    config = FeatureConfig(shard_size=16)
    for split in ("train", "dev"):
        build_features(f"cv:{sv_corpus}", split, root / split, config, workers=1, progress=False)
    return {"train": root / "train", "dev": root / "dev"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--figures-dir", type=Path, default=None,
                     help="write the figures tests make (the browser screenshot app.png) here; "
                          "`make figures` passes img/. Default: each test's temporary folder.")


@pytest.fixture(scope="session")
def figures_dir(request: pytest.FixtureRequest) -> Path | None:
    """Where a figure-making test saves its figure, or None for its own temporary folder."""
    folder = request.config.getoption("--figures-dir")
    return folder.resolve() if folder else None


# Written by Python, pytest, `pip install -e .` and `make setup`, or by benchmarks that may run
# beside the tests (bench/out/): not the test session's doing.
NOT_OURS = ("__pycache__", ".pytest_cache")
NOT_OURS_TOP = ("build", "bench/out", "src/whisper_sv.egg-info")


def _git_status(*args: str) -> list[str] | None:
    """Paths `git status` lists (porcelain, NUL-separated), or None outside a git checkout."""
    if shutil.which("git") is None:
        return None
    # --no-optional-locks: a look that never takes the index lock from a `git add` running beside it.
    result = subprocess.run(["git", "--no-optional-locks", "-C", str(ROOT), "status", "--porcelain", "-z", *args],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return None
    entries = result.stdout.split("\0")
    paths, skip_next = [], False
    for entry in entries:
        if skip_next or not entry:
            skip_next = False
            continue
        status, path = entry[:2], entry[3:]
        skip_next = "R" in status or "C" in status  # a rename is followed by its old path
        if not any(part in NOT_OURS for part in Path(path).parts) and path.rstrip("/") not in NOT_OURS_TOP:
            paths.append(f"{status} {path}")
    return paths


def _signature(path: Path) -> tuple[int, int] | list[str] | None:
    """What a test would change: a file's size and mtime, a folder's entries (one level)."""
    try:
        if path.is_dir():
            return sorted(p.name for p in path.iterdir() if p.name not in NOT_OURS)
        stat = path.stat()
        return stat.st_size, stat.st_mtime_ns
    except FileNotFoundError:
        return None


def repository_snapshot() -> dict[str, object] | None:
    """Every changed, new or ignored path `git status` shows (ignored folders collapsed) with its
    signature: a test that writes a tracked file, leaves a new file, or creates ``corpus/``,
    ``features/``, ``runs/`` or a folder inside them changes it. None outside a git checkout."""
    changed = _git_status("--untracked-files=all")
    ignored = _git_status("--ignored", "--untracked-files=normal")
    if changed is None or ignored is None:
        return None
    lines = set(changed) | {line for line in ignored if line.startswith("!!")}
    return {line: _signature(ROOT / line[3:]) for line in sorted(lines)}


@pytest.fixture(scope="session", autouse=True)
def repository_left_unchanged(figures_dir: Path | None):
    """Tests write into temporary folders only: fail the session if it changed the checkout, except
    in the folder ``--figures-dir`` names. (Someone editing the checkout while the tests run shows
    up here too.)"""
    before = repository_snapshot()
    yield
    after = repository_snapshot()
    if before is None or after is None:
        return
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if figures_dir is not None:
        changed = [k for k in changed if not (ROOT / k[3:]).resolve().is_relative_to(figures_dir)]
    assert not changed, "the test session wrote into the repository: " + ", ".join(changed)
