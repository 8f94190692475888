"""What `train` and `export` refuse before any work, in one line: a run folder resumed with settings
that change the weights, contradicting precision settings, LoRA settings the model cannot take, a
folder that is not a whole model; and a finished run re-run, which trains nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from whisper_sv.cli import main
from whisper_sv.training.config import EVAL_KEYS, HARMLESS_KEYS, load_config, toolkit_keys, training_argument_names, weight_changes

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "src" / "whisper_sv" / "configs"  # the presets that ship in the package
TINY = str(PRESETS / "tiny.json")


def _train_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["train", TINY, *args])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------
# Which differences change the weights.


def test_the_harmless_keys_are_real_keys():
    known = toolkit_keys() | training_argument_names()
    assert (HARMLESS_KEYS | EVAL_KEYS) <= known, sorted((HARMLESS_KEYS | EVAL_KEYS) - known)


def test_weight_changes_names_what_changes_the_weights_and_nothing_else(tmp_path):
    base = {"output_dir": "runs/a", "train_data": "features/t", "model": "random:tiny", "learning_rate": 1e-3}
    assert weight_changes(base, {**base, "learning_rate": 1e-4}) == ["learning_rate"]
    for key, value in (("logging_steps", 5), ("max_steps", 100), ("save_total_limit", 1), ("output_dir", "elsewhere"),
                       ("figure", None), ("eval_steps", 7), ("push_to_hub", True)):
        assert weight_changes(base, {**base, key: value}) == [], key
    # Evaluation decides the final model when the best evaluation's weights are kept.
    stopping = {**base, "early_stopping_patience": 2}
    assert weight_changes(stopping, {**stopping, "eval_steps": 7}) == ["eval_steps"]
    # A key one config leaves out has its default there (a config.json older than the key).
    assert weight_changes(base, {**base, "seed": 42, "encoder_cache_bf16": False}) == []
    assert weight_changes(base, {**base, "seed": 1, "lora": {"r": 8}}) == ["lora", "seed"]
    # One folder spelled two ways is one value; two folders are two.
    (tmp_path / "store").mkdir()
    (tmp_path / "other").mkdir()
    here = {**base, "train_data": str(tmp_path / "store")}
    assert weight_changes(here, {**here, "train_data": str(tmp_path / "other" / ".." / "store")}) == []
    assert weight_changes(here, {**here, "train_data": str(tmp_path / "other")}) == ["train_data"]


# ---------------------------------------------------------------------------------------------
# Checks before any work: the data folders do not exist, so only a check made before reading them
# answers with its own message.


@pytest.mark.parametrize(("args", "cuda", "message"), [
    (["--fp16", "true"], False, "needs a CUDA GPU"),
    (["--bf16", "true", "--precision", "fp32"], None, "bf16=true contradicts precision='fp32'"),
    (["--fp16", "true", "--bf16", "true"], None, "contradicts"),
    (["--fp16", "false", "--precision", "fp16"], None, "fp16=false contradicts precision='fp16'"),
    (["--lora", '{"target_modules": ["self_attn"]}'], None, "'self_attn' is not a Linear layer"),
    (["--lora", '{"target_modules": ["q_proj", "v_prj"]}'], None, "'v_prj' (did you mean 'v_proj'?) is not a Linear layer"),
    (["--lora", '{"r": 100000}'], None, "lora r=100000 is larger than the layers it adapts"),
    (["--lora", '{"r": 65, "target_modules": ["fc1"]}'], None, "use r <= 64"),
])
def test_contradicting_or_impossible_settings_are_refused_before_any_work(tmp_path, capsys, monkeypatch, args, cuda, message):
    import torch

    if cuda is not None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    code, _, err = _train_cli(capsys, "--train_data", str(tmp_path / "no-store"), "--output_dir", str(tmp_path / "run"), *args)
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_fp16_true_under_auto_is_precision_fp16():
    cfg = load_config(TINY, {"fp16": True, "output_dir": "o"})
    assert cfg.precision == "fp16" and "fp16" not in cfg.training  # said once, as precision
    assert load_config(TINY, {"bf16": False, "output_dir": "o"}).precision == "auto"


def test_lora_targets_are_checked_against_the_loaded_model():
    from whisper_sv.common.errors import UserError
    from whisper_sv.models.lora import LoraConfig, check_targets
    from whisper_sv.models.specs import RANDOM_TINY, load_model

    model, _ = load_model(RANDOM_TINY)
    check_targets(model, LoraConfig(r=64))
    with pytest.raises(UserError, match="r=65 is larger than the layers it adapts"):
        check_targets(model, LoraConfig(r=65))


# ---------------------------------------------------------------------------------------------
# Export refuses a folder that is not a whole model.


@pytest.fixture(scope="module")
def tiny_model_folder(tmp_path_factory) -> Path:
    from whisper_sv.models.specs import RANDOM_TINY, load_model

    model, processor = load_model(RANDOM_TINY)
    folder = tmp_path_factory.mktemp("model") / "final"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    processor.feature_extractor.save_pretrained(folder)
    return folder


def _truncate(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


@pytest.mark.parametrize(("damage", "message"), [
    ("features", "is a feature store (whisper-sv features), not a model"),
    ("empty", "has no config.json, so it is not a model folder"),
    ("truncated", "model.safetensors is cut short"),
    ("no config", "has no config.json"),
    ("broken config", "config.json is not readable JSON"),
    ("run folder", "is a training run folder; export its model: --model"),
])
def test_export_refuses_what_is_not_a_whole_model_in_one_line(tiny_model_folder, sv_stores, tmp_path, capsys, damage, message):
    if damage == "features":
        folder = sv_stores["dev"]
    elif damage == "empty":
        folder = tmp_path / "empty"
        folder.mkdir()
    elif damage == "run folder":
        folder = tmp_path / "run"
        shutil.copytree(tiny_model_folder, folder / "final")
        (folder / "config.json").write_text(json.dumps({"model": "random:tiny"}))
    else:
        folder = tmp_path / "final"
        shutil.copytree(tiny_model_folder, folder)
        if damage == "truncated":
            _truncate(folder)
        elif damage == "no config":
            (folder / "config.json").unlink()
        else:
            (folder / "config.json").write_text('{"model_type": "whisper", "d_model":')
    code = main(["export", "--model", str(folder), "--out", str(tmp_path / "ct2")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "ct2").exists()


def test_a_whole_model_folder_passes_the_check(tiny_model_folder):
    from whisper_sv.serving.export import check_model_folder

    check_model_folder(tiny_model_folder)


# ---------------------------------------------------------------------------------------------
# Resuming a run folder.


def _weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def test_a_run_folder_resumes_only_with_settings_that_keep_its_weights(sv_stores, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--train_data", str(sv_stores["train"]), "--output_dir", str(run), "--eval_data", "null",
              "--max_steps", "4", "--save_steps", "2"]
    code, _, err = _train_cli(capsys, *common)
    assert code == 0, err
    # As if killed after checkpoint-2: the run has trained 2 of its 4 steps.
    for done in ("checkpoint-4", "final"):
        shutil.rmtree(run / done)
    (run / "finished.json").unlink()
    code, _, err = _train_cli(capsys, *common, "--learning_rate", "1e-4")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "learning_rate=0.001, not learning_rate=0.0001" in err and "start a new output_dir" in err and f"delete {run}" in err
    code, _, err = _train_cli(capsys, *common, "--max_steps", "1")
    assert code == 2 and "has trained 2 steps, more than max_steps=1" in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2"]  # the refusals trained nothing
    # logging_steps says what is written down, not what is trained: the run resumes.
    code, out, err = _train_cli(capsys, *common, "--logging_steps", "5")
    assert code == 0, err
    assert f"resuming from {run / 'checkpoint-2'}" in out
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert json.loads((run / "config.json").read_text())["logging_steps"] == 5
    # A raised max_steps trains the finished run on.
    code, out, err = _train_cli(capsys, *common, "--max_steps", "6")
    assert code == 0 and f"resuming from {run / 'checkpoint-4'}" in out, err
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


def test_a_finished_run_run_again_trains_nothing_and_returns_its_result(sv_stores, tmp_path, capsys):
    from whisper_sv.training.train import train

    run = tmp_path / "run"
    cfg = load_config(TINY, {"train_data": str(sv_stores["train"]), "eval_data": str(sv_stores["dev"]), "output_dir": str(run),
                             "max_steps": 1, "save_steps": 1, "eval_steps": 1})
    first = train(cfg)
    weights = _weights(first["final"] / "model.safetensors")
    capsys.readouterr()
    for _ in range(2):
        again = train(cfg)
        out = capsys.readouterr().out
        assert "is finished (1 steps, final/ whole): nothing to train" in out and len(out.splitlines()) == 1, out
        assert again["metrics"] == json.loads(json.dumps(first["metrics"])) and again["resumed_from"] is None
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1"]
    # Killed after its last checkpoint and before final/ was whole: final/ is written from that
    # checkpoint, without a step past max_steps.
    (run / "finished.json").unlink()
    shutil.rmtree(run / "final")
    result = train(cfg)
    assert result["resumed_from"] == str(run / "checkpoint-1")
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1"]
    rewritten = _weights(result["final"] / "model.safetensors")
    assert rewritten.keys() == weights.keys() and all(np.array_equal(rewritten[k], weights[k]) for k in weights)
    assert result["metrics"]["eval_wer"] == first["metrics"]["eval_wer"]
    assert train(cfg)["resumed_from"] is None  # finished again
