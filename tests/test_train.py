"""Training: config handling, the collator, resume after SIGKILL, refusing foreign features."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import sigkill_after_checkpoint

from whisper_sv.training.checkpoints import COMPLETE_MARKER, complete_checkpoints, mark_complete, resume_checkpoint, set_aside_incomplete
from whisper_sv.training.collator import SpeechCollator
from whisper_sv.training.config import TRAINING_DEFAULTS, build_config, load_config, parse_overrides
from whisper_sv.training.trainer import with_cached_encoder

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "src" / "whisper_sv" / "configs"  # the presets that ship in the package


def test_overrides_and_presets():
    assert parse_overrides(["--max_steps", "10", "--freeze-encoder", "true", "--model=openai/whisper-small"]) == {
        "max_steps": 10, "freeze_encoder": True, "model": "openai/whisper-small",
    }
    cfg = load_config(PRESETS / "colab-small.json")
    args = cfg.training_arguments()
    assert cfg.model == "openai/whisper-small"
    assert (args["learning_rate"], args["warmup_steps"], args["max_steps"]) == (1e-5, 500, 4000)
    assert (args["per_device_train_batch_size"], args["eval_steps"]) == (16, 1000)
    assert cfg.precision == "fp16"
    for name in ("tiny", "cpu-demo", "colab-small"):
        load_config(PRESETS / f"{name}.json")  # every preset is valid


def test_typos_and_missing_keys_say_what_to_do():
    with pytest.raises(ValueError, match="did you mean 'learning_rate'"):
        build_config({"output_dir": "r", "train_data": "f", "learnin_rate": 1e-4})
    with pytest.raises(ValueError, match="config lacks \\['train_data'\\]"):
        build_config({"output_dir": "r"})
    with pytest.raises(ValueError, match="needs eval_data"):
        build_config({"output_dir": "r", "train_data": "f", "early_stopping_patience": 2})
    with pytest.raises(ValueError, match="precision"):
        build_config({"output_dir": "r", "train_data": "f", "precision": "fp8"})


def test_no_eval_data_means_no_eval_strategy():
    args = build_config({"output_dir": "r", "train_data": "f"}).training_arguments()
    assert args["eval_strategy"] == "no" and "metric_for_best_model" not in args
    assert TRAINING_DEFAULTS["remove_unused_columns"] is False


def test_collator_pads_with_each_clips_floor_and_masks_labels():
    rows = [
        {"input_features": np.ones((80, 5), np.float16), "n_frames": 5, "pad_value": -0.5, "labels": [50258, 50312, 50359, 50363, 7, 50257]},
        {"input_features": np.zeros((80, 7), np.float16), "n_frames": 7, "pad_value": -1.25, "labels": [50258, 50312, 50359, 50363, 50257]},
    ]
    batch = SpeechCollator(decoder_start_token_id=50258)(rows)
    feats, labels = batch["input_features"].numpy(), batch["labels"].numpy()
    assert feats.shape == (2, 80, 3000) and feats.dtype == np.float32
    assert (feats[0, :, :5] == 1).all() and (feats[0, :, 5:] == -0.5).all()
    assert (feats[1, :, 7:] == -1.25).all()
    pad = [-100] * 27  # to the label width's multiple of 32
    assert labels.tolist() == [[50312, 50359, 50363, 7, 50257] + pad, [50312, 50359, 50363, 50257, -100] + pad]


def test_label_widths_are_few_whatever_the_lengths():
    """Every batch's label width is a multiple of 32, so a CPU's oneDNN makes kernels for a few
    shapes, not one per label length (which grew a recipe training by gigabytes until it was killed)."""
    widths = set()
    for n in range(1, 200, 7):
        rows = [{"input_features": np.zeros((80, 5), np.float16), "n_frames": 5, "pad_value": 0.0, "labels": [50258] + [7] * n + [50257]}]
        labels = SpeechCollator(decoder_start_token_id=50258)(rows)["labels"]
        assert labels.shape[1] >= n + 1 and (labels[0, n + 1:] == -100).all() and labels[0, n] == 50257
        widths.add(labels.shape[1])
    assert widths == {32, 64, 96, 128, 160, 192, 224}


def _train_cmd(out, stores, **extra):
    cmd = [sys.executable, "-m", "whisper_sv.cli", "train", str(PRESETS / "tiny.json"),
           "--train_data", str(stores["train"]), "--eval_data", "null", "--output_dir", str(out)]
    for key, value in extra.items():
        cmd += [f"--{key}", json.dumps(value)]
    return cmd


def _tensors(path):
    from safetensors.numpy import load_file

    return load_file(str(path))


# The CPU recipe's path too: batches from a cross_kv encoder cache, collated and read ahead in a
# DataLoader worker, embeddings frozen.
CACHED = dict(freeze_encoder=True, encoder_cache="cross_kv", freeze_embeddings=True, dataloader_num_workers=1)
# The cpu-demo preset's: a states cache in int8 at 15 s, training under bf16 autocast (float32 where
# the CPU has no bf16 units: then this repeats the float32 case).
DEMO = dict(CACHED, encoder_cache="states", encoder_cache_dtype="int8", encoder_window_s=15, precision="bf16")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [{}, CACHED, DEMO], ids=["features", "cross_kv_cache", "demo_states_bf16"])
def test_sigkill_midway_and_resume_gives_identical_weights_and_one_history(sv_stores, tmp_path, recipe):
    steps = dict(max_steps=8, save_steps=2, logging_steps=1, **recipe)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_train_cmd(tmp_path / "straight", sv_stores, **steps), check=True, env=env, capture_output=True)

    run = tmp_path / "killed"
    sigkill_after_checkpoint(_train_cmd(run, sv_stores, **steps), env, run / "checkpoint-4")
    # A checkpoint the process died inside: weights half-written, no completion marker.
    planted = run / "checkpoint-6"
    if planted.exists():  # the kill may have landed inside the real one; replace it by a worse one
        import shutil

        shutil.rmtree(planted)
    planted.mkdir()
    (planted / "model.safetensors").write_bytes(b"\x00" * 100)
    assert [p.name for p in complete_checkpoints(run)][-1] == "checkpoint-4"

    out = subprocess.run(_train_cmd(run, sv_stores, **steps), check=True, env=env, capture_output=True, text=True)
    assert "resuming from" in out.stdout and "checkpoint-4" in out.stdout
    assert list(run.glob("incomplete-checkpoint-6-*")), "the half-written checkpoint was not set aside"

    a, b = _tensors(tmp_path / "straight" / "final" / "model.safetensors"), _tensors(run / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    assert [s for s, _ in losses] == list(range(1, 9)), "one loss per step, none doubled or lost"
    straight = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert losses == [(h["step"], h["loss"]) for h in straight if "loss" in h]
    if recipe:
        from whisper_sv.models.specs import resolve_model

        start = _tensors(Path(resolve_model("random:tiny")) / "model.safetensors")
        for name in ("model.decoder.embed_tokens.weight", "model.decoder.embed_positions.weight",
                     "model.encoder.layers.0.fc1.weight"):
            np.testing.assert_array_equal(b[name], start[name], err_msg=f"{name} should be frozen")
        assert not np.array_equal(b["model.decoder.layers.0.fc1.weight"], start["model.decoder.layers.0.fc1.weight"])
        meta = json.loads((run / "encoder_cache" / "cache.json").read_text())
        assert meta["done"] == meta["shape"][0] and meta["kind"] == recipe["encoder_cache"]


def test_set_aside_incomplete_keeps_finished_ones(tmp_path):
    done = tmp_path / "checkpoint-2"
    done.mkdir()
    (done / "model.safetensors").write_bytes(b"12345")
    (done / COMPLETE_MARKER).write_text(json.dumps({"sizes": {"model.safetensors": 5}}))
    truncated = tmp_path / "checkpoint-4"
    truncated.mkdir()
    (truncated / "model.safetensors").write_bytes(b"123")  # shorter than its marker says
    (truncated / COMPLETE_MARKER).write_text(json.dumps({"sizes": {"model.safetensors": 5}}))
    unmarked = tmp_path / "checkpoint-6"
    unmarked.mkdir()
    moved = set_aside_incomplete(tmp_path)
    assert [p.name.rsplit("-", 1)[0] for p in moved] == ["incomplete-checkpoint-4", "incomplete-checkpoint-6"]
    assert complete_checkpoints(tmp_path) == [done]


def test_resume_checkpoint_is_the_last_marked_one(tmp_path):
    assert resume_checkpoint(tmp_path) is None
    for step in (2, 10):
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        (ckpt / "model.safetensors").write_bytes(b"12345")
        mark_complete(ckpt)
    (tmp_path / "checkpoint-12").mkdir()  # died inside: set aside, not resumed from
    # By step, not by name: checkpoint-10 sorts before checkpoint-2 as text.
    assert resume_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert [p.name.rsplit("-", 1)[0] for p in tmp_path.glob("incomplete-*")] == ["incomplete-checkpoint-12"]


def test_train_evaluates_writes_final_card_curves_and_refuses_foreign_features(sv_corpus, sv_stores, tmp_path):
    from whisper_sv.data.feature_config import FeatureConfig
    from whisper_sv.features.build import build_features
    from whisper_sv.training.train import train

    cfg = load_config(PRESETS / "tiny.json", {
        "train_data": str(sv_stores["train"]), "eval_data": str(sv_stores["dev"]),
        "output_dir": str(tmp_path / "run"), "max_steps": 2, "eval_steps": 2, "save_steps": 2,
        "figure": str(tmp_path / "img" / "train.png"),
    })
    result = train(cfg)
    final = result["final"]
    assert {"eval_wer", "eval_wer_ortho", "eval_cer"} <= set(result["metrics"])
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "preprocessor_config.json", "README.md"):
        assert (final / name).is_file(), name
    card = (final / "README.md").read_text()
    assert "model-index:" in card and "type: wer" in card
    assert json.loads((final / "config.json").read_text())["use_cache"] is True
    gen = json.loads((final / "generation_config.json").read_text())
    assert gen["language"] == "sv" and gen["task"] == "transcribe" and not gen.get("forced_decoder_ids")
    assert (tmp_path / "img" / "train.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "run" / "config.json").read_text())["max_steps"] == 2

    smoothed = tmp_path / "smoothed"
    build_features(f"cv:{sv_corpus}", "dev", smoothed, FeatureConfig(shard_size=16, smoothing={"kind": "gaussian", "ksize": 3, "sigma": 1.0}), workers=1, progress=False)
    with pytest.raises(ValueError, match="rebuild one of them"):
        train(load_config(None, {**cfg.to_dict(), "eval_data": str(smoothed)}))
    with pytest.raises(ValueError, match="start a new output_dir"):
        train(load_config(None, {**cfg.to_dict(), "train_data": str(smoothed), "eval_data": None}))


@pytest.mark.parametrize(("kind", "dtype", "window_s", "bf16", "rel"), [
    ("states", "float16", 30, False, 2e-3), ("cross_kv", "float16", 30, False, 2e-3),
    ("cross_kv", "int8", 15, False, 5e-3), ("states", "int8", 15, True, 5e-3),
])
def test_encoder_cache_gives_the_same_loss_as_the_features(sv_stores, tmp_path, kind, dtype, window_s, bf16, rel):
    """Training on the cache is training on the same model: equal loss to fp16 (or int8) rounding,
    at Whisper's 30 s window and at the app's 15 s one."""
    import torch

    from whisper_sv.data.feature_store import FeatureStore
    from whisper_sv.models.encoder_window import accept_short_windows, frames_for
    from whisper_sv.models.specs import load_model
    from whisper_sv.training.encoder_cache import _encode, build_encoder_cache, freeze_cross_attention_kv, readahead_for

    model, _ = load_model("random:tiny")
    model.freeze_encoder()
    accept_short_windows(model)
    if kind == "cross_kv":
        freeze_cross_attention_kv(model)
    data = FeatureStore(sv_stores["dev"]).dataset()
    cache = build_encoder_cache(model, data, tmp_path / "cache", key="k", kind=kind, batch_size=4,
                                frames=frames_for(window_s), dtype=dtype, bf16=bf16)
    positions = model.config.max_source_positions * window_s // 30
    assert len(cache) == len(data) and positions in cache.shape and (tmp_path / "cache" / "cache.json").is_file()
    rows = [dict(data[i], cache_row=i) for i in range(len(data))]
    start = model.config.decoder_start_token_id
    plain = SpeechCollator(start, window_s=window_s)([{k: v for k, v in r.items() if k != "cache_row"} for r in rows])
    assert plain["input_features"].shape[-1] == frames_for(window_s)
    light = SpeechCollator(start, readahead_for(cache), window_s)(rows)
    assert set(light) == {"cache_rows", "labels"} and light["cache_rows"].tolist() == list(range(len(rows)))
    cached = with_cached_encoder(light, cache, kind)
    assert "input_features" not in cached and "cache_rows" not in cached
    model.train()
    with torch.no_grad():
        expected = model(**plain).loss.item()
        got = model(**cached).loss.item()
    assert got == pytest.approx(expected, rel=rel)
    # The tiny random model's loss hardly depends on the encoder, so compare the cached numbers too:
    # each within 1 % of its vector's largest (int8) or float16's rounding of the encoder's own.
    fresh = _encode(model, rows[:3], kind, frames_for(window_s), bf16).numpy()
    read = cache.read([0, 1, 2]).numpy()
    step = np.abs(fresh).max(axis=-1, keepdims=True)
    assert (np.abs(read - fresh) <= step * (0.01 if dtype == "int8" else 1e-3)).all()
    # A finished cache is reused as it is; a different key rebuilds it.
    again = build_encoder_cache(model, data, tmp_path / "cache", key="k", kind=kind, frames=frames_for(window_s), dtype=dtype, bf16=bf16)
    np.testing.assert_array_equal(np.asarray(again.data), np.asarray(cache.data))
    np.testing.assert_array_equal(again.read([0, 1]).numpy(), cache.read([0, 1]).numpy())


def test_int8_cache_rounds_each_vector_to_within_half_a_step():
    import torch

    from whisper_sv.training.encoder_cache import quantize_int8

    values = torch.randn(4, 4, 64) * torch.tensor([0.0, 0.1, 1.0, 30.0]).view(4, 1, 1)
    q, scales = quantize_int8(values)
    assert q.dtype == np.int8 and scales.shape == (4, 4) and np.abs(q[1:]).max() == 127
    restored = q.astype(np.float32) * scales.astype(np.float32)[..., None]
    assert np.isfinite(restored).all() and not restored[0].any()  # an all-zero vector stays zero
    # Each value within half a step (plus the step's float16 rounding) of the original.
    assert (np.abs(restored - values.numpy()) < scales.astype(np.float32)[..., None] * 0.501).all()


def test_a_short_window_is_the_first_positions_of_the_same_encoder():
    """15 s of a clip's features through the patched encoder equals the library's encoder fed a
    model whose position table is cut to 750 rows: nothing but the window changes."""
    import copy

    import torch

    from whisper_sv.models.encoder_window import accept_short_windows, record_window, trained_window_s
    from whisper_sv.models.specs import load_model

    model, _ = load_model("random:tiny")
    reference = copy.deepcopy(model)
    accept_short_windows(model)
    accept_short_windows(model)  # idempotent
    features = torch.randn(2, model.config.num_mel_bins, 3000)
    with torch.no_grad():
        full = model.get_encoder()(features).last_hidden_state
        np.testing.assert_array_equal(full.numpy(), reference.get_encoder()(features).last_hidden_state.numpy())
        short = model.get_encoder()(features[..., :1500]).last_hidden_state
        encoder = reference.get_encoder()
        encoder.embed_positions = torch.nn.Embedding.from_pretrained(encoder.embed_positions.weight[:750].clone())
        reference.config.max_source_positions = 750
        np.testing.assert_allclose(short.numpy(), encoder(features[..., :1500]).last_hidden_state.numpy(), atol=1e-6)
    assert model.config.max_source_positions == 1500 and model.get_encoder().embed_positions.num_embeddings == 1500
    assert trained_window_s(model.config) == 30
    record_window(model, 15)
    assert trained_window_s(model.config) == 15
    with pytest.raises(ValueError, match="use 1 to 30 s"):
        record_window(model, 45)


def test_encoder_cache_needs_a_frozen_encoder():
    with pytest.raises(ValueError, match="needs freeze_encoder"):
        build_config({"output_dir": "r", "train_data": "f", "encoder_cache": "states"})
    with pytest.raises(ValueError, match="encoder_cache="):
        build_config({"output_dir": "r", "train_data": "f", "encoder_cache": "all", "freeze_encoder": True})


_RSS_AFTER_FREE = """
import os, sys
import numpy as np
from whisper_sv.training.trainer import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
block = np.ones(200_000_000 // 8)  # 200 MB, every page touched
del block
print(int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_keeps_big_blocks_for_the_next_step():
    """By default glibc returns a 200 MB block to the kernel when it is freed (and the next step
    faults it in again); after keep_freed_memory() the process keeps it for reuse."""
    def rss(mode):
        out = subprocess.run([sys.executable, "-c", _RSS_AFTER_FREE, mode], check=True, capture_output=True, text=True)
        return int(out.stdout.split()[-1])

    assert rss("keep") - rss("default") > 150_000_000


@pytest.mark.parametrize("cached", [False, True], ids=["features", "cross_kv_cache"])
def test_label_smoothing_trains_with_and_without_the_cache(sv_stores, tmp_path, cached):
    """`label_smoothing_factor` (a Seq2SeqTrainingArguments key a preset may set): the Trainer takes
    the labels out before the forward pass, so the decoder's inputs must come from elsewhere. The
    loss is the smoothed loss of the model's own right shift, and 0 gives the model's plain loss."""
    import torch
    from transformers import Seq2SeqTrainingArguments
    from transformers.trainer_pt_utils import LabelSmoother

    from whisper_sv.data.feature_store import FeatureStore
    from whisper_sv.models.specs import load_model
    from whisper_sv.training.encoder_cache import build_encoder_cache, freeze_cross_attention_kv
    from whisper_sv.training.trainer import trainer_class

    model, _ = load_model("random:tiny")
    model.freeze_encoder()
    freeze_cross_attention_kv(model)
    data = FeatureStore(sv_stores["dev"]).dataset()
    rows = [data[i] for i in range(4)]
    start = model.config.decoder_start_token_id
    plain = SpeechCollator(start)(rows)
    cache, batch = None, plain
    if cached:
        cache = build_encoder_cache(model, data, tmp_path / "cache", key="k", kind="cross_kv", dtype="float16")
        batch = SpeechCollator(start)([dict(r, cache_row=i) for i, r in enumerate(rows)])
    model.eval()  # no dropout: the losses are compared exactly
    with torch.no_grad():
        reference = model(**plain)
        smoothed = LabelSmoother(epsilon=0.1)(reference, plain["labels"], shift_labels=False).item()
        for factor, expected in ((0.1, smoothed), (0.0, reference.loss.item())):
            args = Seq2SeqTrainingArguments(output_dir=str(tmp_path / "run"), label_smoothing_factor=factor,
                                            use_cpu=True, report_to=[])
            trainer = trainer_class(cache, "cross_kv" if cached else None)(model=model, args=args)
            got = trainer.compute_loss(model, dict(batch)).item()
            assert got == pytest.approx(expected, rel=2e-3), factor


def test_precision_bf16_on_a_cpu_asks_the_trainer_for_cpu_autocast(monkeypatch):
    import torch

    import whisper_sv.training.train as train_module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(train_module, "cpu_has_bf16", lambda: True)
    assert train_module.pick_precision("bf16") == {"bf16": True, "fp16": False, "use_cpu": True}
    assert train_module.pick_precision("auto") == {"bf16": False, "fp16": False}  # exact unless asked
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        train_module.pick_precision("fp16")
    monkeypatch.setattr(train_module, "cpu_has_bf16", lambda: False)  # emulated bf16 is slower than float32
    assert train_module.pick_precision("bf16") == {"bf16": False, "fp16": False}


def test_the_encoder_cache_is_float32_on_a_cpu_without_bf16_units(monkeypatch, capsys):
    import torch

    import whisper_sv.training.train as train_module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(train_module, "cpu_has_bf16", lambda: True)
    assert train_module.cache_in_bf16(True) and not train_module.cache_in_bf16(False)
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(train_module, "cpu_has_bf16", lambda: False)  # emulated: ~7x slower than float32
    assert not train_module.cache_in_bf16(True)
    assert "computed in float32" in capsys.readouterr().out


def test_bf16_on_a_cpu_trains_under_autocast_and_saves_float32(sv_stores, tmp_path, monkeypatch):
    """The cpu-demo preset trains with `precision: bf16` on the CPU: the layers compute in bfloat16
    (autocast), the weights stay float32, and evaluation's generate runs under it too."""
    import torch
    from safetensors import safe_open
    from transformers import TrainerCallback

    import whisper_sv.training.train as train_module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(train_module, "cpu_has_bf16", lambda: True)  # emulated where not: slower, same numbers
    seen = set()

    class Watch(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            model.model.decoder.layers[0].fc1.register_forward_hook(lambda m, i, out: seen.add(out.dtype))

    cfg = load_config(PRESETS / "tiny.json", {
        "train_data": str(sv_stores["train"]), "eval_data": str(sv_stores["dev"]),
        "output_dir": str(tmp_path / "run"), "max_steps": 2, "eval_steps": 2, "save_steps": 2, "figure": None,
        "precision": "bf16", "freeze_encoder": True, "encoder_cache": "states", "encoder_cache_dtype": "int8",
    })
    result = train_module.train(cfg, callbacks=[Watch()])
    assert seen == {torch.bfloat16}
    assert np.isfinite(result["metrics"]["eval_wer"])
    with safe_open(str(result["final"] / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
