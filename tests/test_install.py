"""The package works outside a checkout: presets and sentence lists ship inside it, and a wheel
installed into a fresh virtual environment runs synth -> features -> train -> transcribe from an
empty folder elsewhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from whisper_sv.common.errors import UserError
from whisper_sv.common.presets import packaged_presets, preset_path
from whisper_sv.synth.corpus import SHIPPED, SynthConfig, sentences_file

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "whisper_sv"


def test_every_preset_ships_and_is_found_by_name_or_old_path_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = packaged_presets()
    assert set(shipped) == {p.stem for p in (PACKAGE / "configs").glob("*.json")} >= {"tiny", "cpu-demo", "colab-small", "search-tiny"}
    for spec in ("cpu-demo", "cpu-demo.json", "configs/cpu-demo.json"):
        assert preset_path(spec) == shipped["cpu-demo"]


def test_a_file_of_the_name_wins_over_the_shipped_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("configs").mkdir()
    Path("configs/tiny.json").write_text(json.dumps({"max_steps": 3}))
    assert preset_path("configs/tiny.json") == Path("configs/tiny.json")
    assert preset_path("tiny") == packaged_presets()["tiny"]  # a bare name is the shipped one unless a file "tiny" exists


def test_an_unknown_preset_is_one_line_naming_the_closest_and_the_shipped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"'cpu-dmeo'.*did you mean 'cpu-demo'.*shipped: colab-large-lora, colab-small, cpu-demo"):
        preset_path("cpu-dmeo")
    with pytest.raises(UserError, match="no such file"):
        preset_path("notes/tiny.txt")  # not a JSON name: never silently a preset


def test_the_sentence_lists_ship_in_the_package_under_their_config_names():
    assert SHIPPED == (PACKAGE / "synth" / "sentences").resolve()
    assert sentences_file("data/sv_sentences.txt") == SHIPPED / "sv_sentences.txt"
    assert sentences_file("data/en_sentences.txt") == SHIPPED / "en_sentences.txt"
    assert SynthConfig(language="en").sentences == "data/en_sentences.txt"
    assert (SHIPPED / "LICENSE.md").read_text(encoding="utf-8").count("CC0") >= 2


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} -> {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_a_wheel_in_a_fresh_venv_runs_the_pipeline_from_an_empty_folder(tmp_path):
    # Build from a copy of the sources, so the build's own folders never land in the repository.
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(tree)],
         tmp_path, dict(os.environ))
    (wheel,) = dist.glob("whisper_sv-*.whl")

    # A fresh environment; its dependencies (torch, transformers, ...) come from this interpreter's
    # site-packages, the package itself only from the wheel.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", PATH=f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)], tmp_path, env)

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run([str(python), "-c", "import whisper_sv; print(whisper_sv.__file__)"], work, env).strip()
    assert Path(where).is_relative_to(env_dir), f"imported {where}, not the wheel"
    cli = [str(env_dir / "bin" / "whisper-sv")]
    _run(cli + ["synth", "--out", "corpus", "--clips", "20", "--voices", "espeak", "--workers", "1"], work, env)
    assert json.loads((work / "corpus" / "synth.json").read_text())["sentences"] == "data/sv_sentences.txt"
    for split in ("train", "dev"):
        _run(cli + ["features", "--source", "cv:corpus", "--split", split, "--out", f"features/{split}", "--workers", "1"], work, env)
    _run(cli + ["train", "tiny", "--train_data", "features/train", "--eval_data", "features/dev", "--output_dir", "run",
                "--max_steps", "2", "--eval_steps", "2", "--save_steps", "2"], work, env)
    assert (work / "run" / "final" / "model.safetensors").is_file()
    clip = next((work / "corpus" / "clips").iterdir())
    out = _run(cli + ["transcribe", str(clip), "--model", "run/final", "--json"], work, env)
    assert json.loads(out.splitlines()[-1])["path"] == str(clip)
    assert sorted(p.name for p in work.iterdir()) == ["corpus", "features", "run"]  # nothing written beside them
