"""LoRA fine-tuning: only the adapter trains, final/ is a plain merged Whisper, resume is exact."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import sigkill_after_checkpoint

from whisper_sv.common.errors import UserError
from whisper_sv.models.lora import LoraConfig, target_pattern
from whisper_sv.training.config import build_config

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "src" / "whisper_sv" / "configs"  # the presets that ship in the package


def _tensors(path):
    from safetensors.numpy import load_file

    return load_file(str(path))


def test_settings_are_checked_in_one_line():
    with pytest.raises(UserError, match="unknown lora key"):
        LoraConfig.parse({"rank": 8})
    with pytest.raises(UserError, match="part='decoders'"):
        LoraConfig.parse({"part": "decoders"})
    with pytest.raises(UserError, match="r=0"):
        LoraConfig.parse({"r": 0})
    with pytest.raises(ValueError, match="trains the encoder"):
        build_config({"output_dir": "o", "train_data": "t", "model": "random:tiny", "freeze_encoder": True,
                      "encoder_cache": "cross_kv", "lora": {"part": "both"}})
    cfg = build_config({"output_dir": "o", "train_data": "t", "model": "random:tiny", "lora": {"r": 4}})
    assert cfg.lora == {**LoraConfig(r=4).to_dict()}  # resolved: the run folder's config.json says every value


def test_a_quantized_base_is_refused_on_a_cpu(tmp_path, sv_stores, capsys):
    from whisper_sv.cli import main

    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal is for CPU-only machines")
    code = main(["train", str(PRESETS / "tiny.json"), "--train_data", str(sv_stores["train"]),
                 "--output_dir", str(tmp_path / "run"), "--lora", '{"quantization": "8bit"}'])
    err = capsys.readouterr().err
    assert code == 2 and "needs a CUDA GPU" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # refused before the run folder or any data


def test_every_preset_in_configs_loads_and_validates():
    from whisper_sv.search.config import load_search_config
    from whisper_sv.training.config import load_config

    kinds = []
    for path in sorted((PRESETS).glob("*.json")):
        is_search = "space" in json.loads(path.read_text())  # a search config names its space
        (load_search_config if is_search else load_config)(path)
        kinds.append(is_search)
    assert False in kinds and True in kinds
    # The large-v3 Colab preset is the peft recipe: LoRA r 32, alpha 64 on q/v of both stacks, 8-bit base.
    cfg = load_config(PRESETS / "colab-large-lora.json")
    assert cfg.model == "openai/whisper-large-v3" and cfg.precision == "fp16"
    assert cfg.lora == {"r": 32, "alpha": 64, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"],
                        "part": "both", "quantization": "8bit"}
    args = cfg.training_arguments()
    assert args["learning_rate"] == 1e-3 and args["predict_with_generate"] and args["activation_checkpointing"]


@pytest.mark.parametrize("cached, part, expected", [
    (False, "decoder", {"d.self_attn.q_proj", "d.self_attn.v_proj", "d.encoder_attn.q_proj", "d.encoder_attn.v_proj"}),
    (True, "decoder", {"d.self_attn.q_proj", "d.self_attn.v_proj", "d.encoder_attn.q_proj"}),  # cached: k/v stay
    (False, "encoder", {"e.self_attn.q_proj", "e.self_attn.v_proj"}),
])
def test_target_pattern_picks_the_attention_projections_of_the_part(cached, part, expected):
    blocks = {"encoder": ("self_attn",), "decoder": ("self_attn", "encoder_attn")}  # Whisper's attention blocks
    names = [f"model.{stack}.layers.1.{block}.{proj}" for stack in blocks for block in blocks[stack]
             for proj in ("q_proj", "k_proj", "v_proj", "out_proj")]
    names += ["model.decoder.layers.1.fc1", "proj_out", "model.decoder.embed_tokens"]
    pattern = target_pattern(LoraConfig(part=part), cached_cross_kv=cached)
    short = {n.replace("model.encoder.layers.1.", "e.").replace("model.decoder.layers.1.", "d.")
             for n in names if re.fullmatch(pattern, n)}
    assert short == expected


def test_adapter_init_is_drawn_from_the_seed_alone():
    """A fresh process's torch generator is seeded at random: an unseeded lora_A made a killed run
    and its uninterrupted twin train different adapters (the resume test below caught it)."""
    import torch

    from whisper_sv.models.lora import apply_lora
    from whisper_sv.models.specs import load_model

    def lora_a(seed):
        model = apply_lora(load_model("random:tiny")[0], LoraConfig(r=4), seed=seed)
        return {k: v.clone() for k, v in model.state_dict().items() if "lora_A" in k}

    torch.manual_seed(1)
    first = lora_a(42)
    after = torch.rand(3)  # the global generator is left where it was
    torch.manual_seed(2)  # another state before the init: the same adapter
    second = lora_a(42)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), after)
    assert first.keys() == second.keys() and first
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(next(iter(lora_a(7).values())), next(iter(first.values())))


def _train_cmd(out, stores, lora_dropout=0.0, **extra):
    cmd = [sys.executable, "-m", "whisper_sv.cli", "train", str(PRESETS / "tiny.json"),
           "--train_data", str(stores["train"]), "--eval_data", str(stores["dev"]), "--output_dir", str(out),
           "--lora", json.dumps({"r": 4, "alpha": 8, "dropout": lora_dropout})]
    for key, value in extra.items():
        cmd += [f"--{key}", json.dumps(value)]
    return cmd


@pytest.mark.slow
def test_lora_trains_only_the_adapter_and_merges_into_a_plain_whisper(sv_stores, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    from whisper_sv.models.specs import resolve_model

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    steps = dict(max_steps=8, save_steps=2, eval_steps=4, logging_steps=1)
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(straight, sv_stores, **steps), check=True, env=env, capture_output=True)

    # Checkpoints hold the adapter alone; WER was measured with generate during training.
    ckpt = straight / "checkpoint-4"
    assert (ckpt / "adapter_model.safetensors").is_file() and not (ckpt / "model.safetensors").exists()
    assert all("lora_" in k for k in _tensors(ckpt / "adapter_model.safetensors"))
    history = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if "eval_wer" in h] == [4, 8]

    # final/ is the merged model: only the adapted projections differ from the base, all else is bit-identical.
    base = _tensors(Path(resolve_model("random:tiny")) / "model.safetensors")
    merged = _tensors(straight / "final" / "model.safetensors")
    assert merged.keys() == base.keys()
    adapted = re.compile(r"model\.decoder\.layers\.\d+\.(self_attn|encoder_attn)\.(q_proj|v_proj)\.weight")
    changed = {k for k in base if not np.array_equal(base[k], merged[k])}
    assert changed and all(adapted.fullmatch(k) for k in changed), sorted(changed)

    # The merged model (a plain from_pretrained) gives the adapter model's logits.
    plain = WhisperForConditionalGeneration.from_pretrained(straight / "final").eval()
    with_adapter = PeftModel.from_pretrained(WhisperForConditionalGeneration.from_pretrained(resolve_model("random:tiny")),
                                             straight / "final" / "adapter").eval()
    torch.manual_seed(0)
    features = torch.randn(2, plain.config.num_mel_bins, 3000)
    decoder_ids = torch.tensor([[plain.config.decoder_start_token_id, 50259, 50359, 50363]] * 2)
    with torch.no_grad():
        a = plain(input_features=features, decoder_input_ids=decoder_ids).logits
        b = with_adapter(input_features=features, decoder_input_ids=decoder_ids).logits
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4)


@pytest.mark.slow
def test_lora_resume_after_sigkill_gives_the_weights_of_an_uninterrupted_run(sv_stores, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # LoRA dropout on: the resumed run must also draw the dropout masks the uninterrupted one drew.
    steps = dict(max_steps=8, save_steps=2, eval_steps=4, logging_steps=1, lora_dropout=0.1)
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(straight, sv_stores, **steps), check=True, env=env, capture_output=True)
    merged = _tensors(straight / "final" / "model.safetensors")
    killed = tmp_path / "killed"
    sigkill_after_checkpoint(_train_cmd(killed, sv_stores, **steps), env, killed / "checkpoint-4")
    out = subprocess.run(_train_cmd(killed, sv_stores, **steps), check=True, env=env, capture_output=True, text=True)
    assert "resuming from" in out.stdout
    again = _tensors(killed / "final" / "model.safetensors")
    for name in merged:
        np.testing.assert_array_equal(merged[name], again[name], err_msg=name)


@pytest.mark.slow
def test_merged_lora_model_exports_to_ctranslate2(sv_stores, tmp_path):
    from whisper_sv.serving.export import export_ct2

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_train_cmd(tmp_path / "run", sv_stores, max_steps=2, eval_steps=2, save_steps=2),
                   check=True, env=env, capture_output=True)
    out = export_ct2(str(tmp_path / "run" / "final"), tmp_path / "ct2", quantization="int8")
    assert (Path(out) / "model.bin").is_file()
