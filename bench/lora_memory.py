"""Training memory of whisper small / medium / large-v3: full fine-tune, LoRA, LoRA on an 8-bit base.

COMPUTED, not measured (no GPU was at hand): parameter counts are exact, from the real model
classes built on the ``meta`` device from each size's public config (no download, no memory),
with LoRA applied by this toolkit's own `apply_lora` and bitsandbytes' own choice of which Linear
layers it quantizes. Memory is then

    weights + gradients + optimizer states + activations

* full fine-tune, fp16/bf16 mixed precision (the Trainer's AMP): fp32 weights 4 B, fp32 gradients
  4 B and AdamW's two fp32 moments 8 B per parameter: 16 B x P;
* LoRA: the base stays as loaded (fp32, 4 B x P_base, as `whisper-sv train` loads it); only the
  adapter has gradients and moments: 4 B x P_base + 16 B x P_lora;
* LoRA + 8-bit base: 1 B per weight of each quantized Linear (bitsandbytes' per-row scales add
  4 B per output row), the rest (embeddings, convolutions, norms, proj_out) in fp32 as
  `prepare_model_for_kbit_training` leaves it, plus 16 B x P_lora.

Activations: the tensors autograd keeps for the backward pass, in elements of b x h (batch x
d_model) times a sequence length (s_enc encoder, s_dec decoder positions), 2 B each under autocast,
with SDPA's memory-efficient attention (no s x s score matrix, as on a T4) and Whisper's dropout 0
(Korthikanti et al. 2022, "Reducing activation recomputation", Table 2, less the dropout masks and
the s^2 term). `--check` counts the bytes autograd really keeps for a whisper-base-shaped model on
this CPU and prints them beside this formula (they agree to 1 %):

* full fine-tune: encoder layer 17 s_enc (norm inputs 2, the q/k/v input 1, SDPA's q k v and
  output 4, out_proj input 1, fc1 input 1, GELU input 4, fc2 input 4); decoder layer 22 s_dec
  + 2 s_enc (cross-attention keys and values); once: the convolutions 5 s_enc + n_mels/h x 2 s_enc,
  the encoder output 1 s_enc and the final norms;
* LoRA (every base weight frozen: autograd keeps a frozen Linear's input only when something
  trainable reads it): encoder layer 11 s_enc, decoder layer 15 s_dec + 2 s_enc, plus r/h per
  adapted Linear (lora_B's input); with LoRA dropout each adapted Linear reads its own
  dropped-out copy (1 element) plus the mask (1 byte per element on a GPU: 0.5 of a 2-byte
  element), so q/v add 2 s_enc per encoder layer and 2.5 s_dec + 1.5 s_enc per decoder layer
  (the cross-attention's v reads the encoder output); nothing of the encoder when only the
  decoder is adapted, and less in encoder layer 0, whose input needs no gradient;
* logits: 12 B x b x s_dec x vocab (fp16 logits, their fp32 log-softmax and its gradient);
* with gradient checkpointing (both presets use it): each layer keeps only its fp32 input
  (4 B x b x h x s) and one layer at a time is recomputed in full during the backward pass.

s_enc = 1500 (30 s of audio), s_dec = --label-tokens (64: a padded batch of Common Voice
sentences). Not counted: the CUDA context and cuBLAS workspaces (about 0.5 GB), allocator
fragmentation, and evaluation with generate (smaller than a training step).

    python bench/lora_memory.py                      # the computed table, in seconds
    python bench/lora_memory.py --measure-store S    # plus peak RSS of a few CPU steps (tiny, base)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9
S_ENC = 1500  # encoder positions: 3000 mel frames after the stride-2 convolution
MEL_FRAMES = 3000

# The public configs (config.json on the Hub) of the sizes the presets are about; base for --check.
SIZES = {
    "small": dict(d_model=768, encoder_layers=12, decoder_layers=12, encoder_attention_heads=12,
                  decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, num_mel_bins=80, vocab_size=51865),
    "medium": dict(d_model=1024, encoder_layers=24, decoder_layers=24, encoder_attention_heads=16,
                   decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096, num_mel_bins=80, vocab_size=51865),
    "large-v3": dict(d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
                     decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120, num_mel_bins=128, vocab_size=51866),
}
BASE = dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8, decoder_attention_heads=8,
            encoder_ffn_dim=2048, decoder_ffn_dim=2048, num_mel_bins=80, vocab_size=51865)


@dataclass(frozen=True)
class Numbers:
    """How a device stores activations: bytes per element, a dropout mask in elements, bytes per logit."""

    element: int = 2  # fp16/bf16 under autocast
    mask: float = 0.5  # a CUDA dropout mask is bool: 1 B per 2-B element
    logit: int = 12  # fp16 logits + fp32 log-softmax + its gradient
    residual: int = 4  # the fp32 residual stream a checkpointed layer keeps


GPU = Numbers()
CPU_SAVED = Numbers(element=4, mask=1, logit=4, residual=4)  # fp32; CPU dropout keeps a float mask; saved only


@dataclass(frozen=True)
class Counts:
    """Exact parameter counts of one size, with and without LoRA."""

    total: int
    lora: int  # trainable with the preset's LoRA (r 32 on q_proj, v_proj)
    quantized: int  # weights bitsandbytes stores in 8 bits
    quantized_rows: int  # their output rows (one fp32 scale each)


def whisper(dims: dict, device: str = "meta"):
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    with torch.device(device):
        return WhisperForConditionalGeneration(WhisperConfig(**dims))


def count(size: str, r: int = 32, part: str = "both") -> Counts:
    """Parameter counts of `size` built on the meta device (no memory, no download)."""
    import torch
    from torch import nn
    from transformers.quantizers.base import get_keys_to_not_convert

    from whisper_sv.models.lora import LoraConfig, apply_lora

    model = whisper(SIZES[size])
    total = sum(p.numel() for p in model.parameters())
    skip = set(get_keys_to_not_convert(model))  # what load_in_8bit leaves unquantized (proj_out)
    linears = [m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name not in skip]
    quantized = sum(m.weight.numel() for m in linears)
    rows = sum(m.out_features for m in linears)
    with torch.device("meta"):  # the adapter's own weights on meta too
        peft_model = apply_lora(model, LoraConfig(r=r, alpha=2 * r, part=part))
    lora = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    return Counts(total, lora, quantized, rows)


def activations(dims: dict, batch: int, s_dec: int, lora: str | None, dropout: bool = True,
                checkpointing: bool = True, n: Numbers = GPU, r: int = 32) -> float:
    """Bytes of activations a training step keeps (the formula of the module docstring).

    `lora`: None (full fine-tune), "both" or "decoder" (the adapted stacks; q_proj and v_proj at
    rank `r`, with or without LoRA `dropout`)."""
    h, n_enc, n_dec, mels = dims["d_model"], dims["encoder_layers"], dims["decoder_layers"], dims["num_mel_bins"]
    if lora is None:
        enc, dec_d, dec_e = 17 * S_ENC, 22 * s_dec, 2 * S_ENC
        once = (5 + mels / h * MEL_FRAMES / S_ENC) * S_ENC + S_ENC + S_ENC + s_dec  # convs, output, final norms
        encoder_trains = True
    else:
        encoder_trains = lora == "both"
        copy = 1 + n.mask if dropout else 0  # per adapted Linear: its dropped-out input and the mask
        low = r / h  # per adapted Linear: the rank-r input of lora_B
        enc = ((11 + (2 * copy - 1 if dropout else 0) + 2 * low) * S_ENC) if encoder_trains else 0
        dec_d = (15 + ((2 * copy - 1) + (copy - 1) if dropout else 0) + 3 * low) * s_dec
        # Cross-attention k and v; v's own dropped-out copy of the encoder output (no mask when the
        # encoder output needs no gradient) and its rank-r input.
        v_copy = (copy if encoder_trains else 1) if dropout else 0
        dec_e = (2 + v_copy + low) * S_ENC
        first = (1 + 2 * n.mask if dropout else 1) * S_ENC if encoder_trains else 0  # layer 0's input needs no gradient
        once = (0 if dropout else S_ENC) + (S_ENC if encoder_trains else 0) + s_dec - first  # encoder output, final norms
    per = n.element * batch * h
    enc_layer, dec_layer = enc * per, (dec_d + dec_e) * per
    logits = n.logit * batch * s_dec * dims["vocab_size"]
    if checkpointing:
        kept = n.residual * batch * h * ((n_enc * S_ENC if encoder_trains else 0) + n_dec * s_dec)
        return kept + max(enc_layer, dec_layer) + once * per + logits
    return n_enc * enc_layer + n_dec * dec_layer + once * per + logits


def table(batches: dict[str, int], s_dec: int) -> list[dict]:
    """One row per size and method: GB of weights, gradients + optimizer, activations, total."""
    rows = []
    for size, dims in SIZES.items():
        c = count(size)
        methods = {  # method: (weights, gradients + AdamW moments, LoRA part or None)
            "full fine-tune, fp16/bf16 mixed": (4 * c.total, 12 * c.total, None),
            "LoRA r 32 (q, v; enc + dec)": (4 * c.total + 4 * c.lora, 12 * c.lora, "both"),
            "LoRA r 32 + 8-bit base": (c.quantized + 4 * c.quantized_rows + 4 * (c.total - c.quantized) + 4 * c.lora,
                                       12 * c.lora, "both"),
        }
        for method, (weights, states, part) in methods.items():
            batch = batches["full" if part is None else "lora"]
            act = activations(dims, batch, s_dec, part)
            act_plain = activations(dims, batch, s_dec, part, checkpointing=False)
            rows.append({
                "model": f"whisper-{size}", "method": method, "batch": batch,
                "params_M": c.total / 1e6, "trainable_M": (c.total if part is None else c.lora) / 1e6,
                "weights_GB": weights / GB, "grads_optimizer_GB": states / GB, "activations_GB": act / GB,
                "total_GB": (weights + states + act) / GB, "total_no_checkpointing_GB": (weights + states + act_plain) / GB,
            })
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | method | batch | params (M) | trainable (M) | weights | grads + AdamW | activations | total (GB) | total without checkpointing |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {r['batch']} | {r['params_M']:.1f} | {r['trainable_M']:.2f} | "
                     f"{r['weights_GB']:.2f} | {r['grads_optimizer_GB']:.2f} | {r['activations_GB']:.2f} | "
                     f"**{r['total_GB']:.1f}** | {r['total_no_checkpointing_GB']:.1f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Measured on this CPU: the bytes autograd keeps (the formula's check), and peak RSS of real steps


def saved_bytes(model, batch: int, s_dec: int) -> int:
    """Bytes of the tensors autograd keeps for backward in one training forward (weights excluded)."""
    import torch

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()  # a tensor kept twice is one storage
        return t

    torch.manual_seed(0)
    features = torch.randn(batch, model.config.num_mel_bins, MEL_FRAMES)
    labels = torch.randint(0, model.config.vocab_size, (batch, s_dec))
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_features=features, labels=labels)
    return sum(kept.values())


def check(batch: int = 2, s_dec: int = 64) -> list[dict]:
    """The activation formula (fp32 CPU numbers) against what autograd keeps, whisper-base-shaped."""
    from whisper_sv.models.lora import LoraConfig, apply_lora

    rows = []
    for lora, dropout in ((None, False), ("both", False), ("both", True), ("decoder", True)):
        model = whisper(BASE, device="cpu")
        if lora:
            model = apply_lora(model, LoraConfig(part=lora, dropout=0.05 if dropout else 0.0))
        counted = saved_bytes(model, batch, s_dec)
        formula = activations(BASE, batch, s_dec, lora, dropout, checkpointing=False, n=CPU_SAVED)
        rows.append({"method": "full fine-tune" if lora is None else f"LoRA {lora}, dropout {0.05 if dropout else 0}",
                     "counted_MB": counted / 1e6, "formula_MB": formula / 1e6})
    return rows


def measure(store: Path, model: str, lora: dict | None, steps: int, batch: int) -> dict:
    """Peak RSS (MB) of a `whisper-sv train` process: `steps` steps, no evaluation."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "whisper_sv.cli", "train", str(ROOT / "configs" / "tiny.json"),
               "--model", model, "--train_data", str(store), "--eval_data", "null", "--output_dir", out,
               "--max_steps", str(steps), "--save_steps", "1000", "--logging_steps", "1",
               "--per_device_train_batch_size", str(batch), "--lora", json.dumps(lora)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise SystemExit(f"{model} lora={lora}: training failed:\n{err[-2000:]}")
        return {"model": model, "lora": lora, "steps": steps, "batch": batch, "peak_rss_MB": usage.ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full-batch", type=int, default=None, help="full fine-tune batch (default: configs/colab-small.json's)")
    p.add_argument("--lora-batch", type=int, default=None, help="LoRA batch (default: configs/colab-large-lora.json's)")
    p.add_argument("--label-tokens", type=int, default=64, help="decoder positions of a padded batch (default: %(default)s)")
    p.add_argument("--check", action="store_true", help="also count what autograd keeps on this CPU (about a minute)")
    p.add_argument("--measure-store", type=Path, default=None, help="a feature store: also measure CPU peak RSS on it")
    p.add_argument("--steps", type=int, default=3, help="training steps per RSS measurement (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)

    def preset_batch(name: str) -> int:
        return json.loads((ROOT / "configs" / name).read_text())["per_device_train_batch_size"]

    batches = {"full": args.full_batch or preset_batch("colab-small.json"), "lora": args.lora_batch or preset_batch("colab-large-lora.json")}
    rows = table(batches, args.label_tokens)
    print(f"COMPUTED (s_enc {S_ENC}, s_dec {args.label_tokens}, gradient checkpointing on; GB = 1e9 bytes)\n")
    print(markdown(rows))
    result = {"computed": rows, "check": [], "measured": []}
    if args.check:
        result["check"] = check()
        print("\nMEASURED: what autograd keeps for one training forward of whisper-base's shape on this CPU "
              "(fp32, batch 2, 64 label tokens, no checkpointing) against the formula\n")
        print("| method | counted (MB) | formula (MB) |\n| --- | ---: | ---: |")
        for r in result["check"]:
            print(f"| {r['method']} | {r['counted_MB']:.0f} | {r['formula_MB']:.0f} |")
    if args.measure_store:
        runs = [(model, lora, batch) for model, batch in (("random:tiny", 8), ("packaged:whisper-base", 4))
                for lora in (None, {"part": "decoder"}, {"part": "both"})]
        result["measured"] = [measure(args.measure_store, model, lora, args.steps, batch) for model, lora, batch in runs]
        print(f"\nMEASURED on this CPU (fp32, {args.steps} steps, no evaluation; peak RSS of the whole process)\n")
        print("| model | method | batch | peak RSS (MB) |\n| --- | --- | ---: | ---: |")
        for m in result["measured"]:
            method = "full fine-tune" if m["lora"] is None else f"LoRA r 32, {m['lora']['part']}"
            print(f"| {m['model']} | {method} | {m['batch']} | {m['peak_rss_MB']:.0f} |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
