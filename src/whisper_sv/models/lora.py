"""LoRA fine-tuning through `peft`: a bigger Whisper on a small GPU, trained as a full fine-tune is.

The recipe users follow (huggingface/blog ``fine-tune-whisper-peft.md``, Vaibhavs10/fast-whisper-
finetuning) trains a rank-32 update of the attention's query and value projections, about 1 % of
the weights, with the base in 8 bits. Here the same settings are one ``lora`` key of the training
config, and the run stays what a full fine-tune's is: WER with generate at every evaluation,
checkpoints (of the adapter) that a killed run resumes from, and a ``final/`` that is a plain
Whisper checkpoint (the adapter merged into the weights) that `evaluate`, `export`, the app and
the Hub take unchanged, with the adapter alone in ``final/adapter/``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..common.errors import UserError, check_field_types, with_closest
from .specs import load_model, model_errors, resolve_model

PARTS = ("decoder", "encoder", "both")
QUANTIZATIONS = (None, "8bit", "4bit")
ADAPTER_DIR = "adapter"  # final/adapter: the adapter alone, for PeftModel.from_pretrained
# The Linear layers of a Whisper encoder or decoder layer, which LoRA can adapt: the attention's
# projections (self_attn, and the decoder's encoder_attn) and the feed-forward pair. The rest of a
# layer (the attention blocks themselves, layer norms) are not Linear, and peft cannot adapt them.
LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


@dataclass(frozen=True)
class LoraConfig:
    """The ``lora`` key of a training preset (a JSON object; null trains every weight)."""

    r: int = 32  # rank of each low-rank update
    alpha: int = 64  # the update is scaled by alpha / r
    dropout: float = 0.05  # dropout on the LoRA branch's input
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")  # Linear layers of the attention blocks to adapt
    part: str = "decoder"  # decoder, encoder or both
    # The base's weights in 8 or 4 bits (bitsandbytes, CUDA only): whisper-large-v2 then trains in
    # about 8 GB. null: the base in the training precision.
    quantization: str | None = None

    def __post_init__(self):
        check_field_types(self)
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.r < 1 or self.alpha < 1:
            raise UserError(f"lora r={self.r}, alpha={self.alpha}: both must be at least 1 (the recipe: r 32, alpha 64)")
        if not 0 <= self.dropout < 1:
            raise UserError(f"lora dropout={self.dropout}: use a probability in [0, 1)")
        if self.part not in PARTS:
            raise UserError(f"lora part={self.part!r}: use one of {PARTS}")
        if self.quantization not in QUANTIZATIONS:
            raise UserError(f"lora quantization={self.quantization!r}: use null, \"8bit\" or \"4bit\"")
        if not self.target_modules or not all(isinstance(m, str) and m.isidentifier() for m in self.target_modules):
            raise UserError(f"lora target_modules={list(self.target_modules)}: name Linear layers, e.g. [\"q_proj\", \"v_proj\"]")
        unknown = [m for m in self.target_modules if m not in LINEAR_LAYERS]
        if unknown:
            raise UserError(f"lora target_modules: {', '.join(with_closest(m, LINEAR_LAYERS) for m in unknown)} "
                            f"{'is not a Linear layer' if len(unknown) == 1 else 'are not Linear layers'} of Whisper's "
                            f"layers; choose from {list(LINEAR_LAYERS)}")

    @classmethod
    def parse(cls, value: "LoraConfig | dict[str, Any] | None") -> "LoraConfig | None":
        if value is None or isinstance(value, LoraConfig):
            return value
        if not isinstance(value, dict):
            raise UserError(f"lora={value!r}: give a JSON object such as {{\"r\": 32, \"alpha\": 64}}, or null")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(value) - known)
        if unknown:
            raise UserError(f"unknown lora key(s) {unknown}; keys are {sorted(known)}")
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d


def target_pattern(settings: LoraConfig, cached_cross_kv: bool = False) -> str:
    """The regular expression of the module names LoRA adapts (peft matches it against the full name).

    With the decoder's cross-attention keys and values cached (``encoder_cache: cross_kv``), the
    decoder's ``encoder_attn.k_proj``/``v_proj`` are left out: the cache holds their outputs, so an
    update to them would train nothing.
    """
    stacks = {"decoder": "decoder", "encoder": "encoder", "both": "encoder|decoder"}[settings.part]
    names = "|".join(settings.target_modules)
    # model.decoder.layers.3.self_attn.q_proj, ...encoder_attn.v_proj, ...layers.3.fc1
    pattern = rf"model\.({stacks})\.layers\.\d+\.(?:\w+\.)?({names})"
    if cached_cross_kv:
        pattern = rf"(?!model\.decoder\.layers\.\d+\.encoder_attn\.(k_proj|v_proj)$)(?:{pattern})"
    return pattern


def check_device(settings: LoraConfig) -> None:
    """A quantized base needs CUDA (bitsandbytes): refuse anywhere else in one line, before any loading."""
    if settings.quantization is None:
        return
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            f"lora quantization={settings.quantization!r} needs a CUDA GPU (bitsandbytes); on this machine "
            "set \"quantization\": null (LoRA on a full-precision base works on a CPU)"
        )


def check_rank(settings: LoraConfig, spec: str) -> None:
    """Refuse an `r` larger than a layer it adapts is wide (from the model's config, before any weights load).

    A rank-r update of an m x n Linear layer has rank at most min(m, n): above that it adds only
    weights (r 100000 on whisper-tiny made 96.6 % of the model trainable) and no capacity."""
    from transformers import WhisperConfig

    path = resolve_model(spec)
    with model_errors(spec, path):
        config = WhisperConfig.from_pretrained(path)
    stacks = ("encoder", "decoder") if settings.part == "both" else (settings.part,)
    widths = {name: config.d_model if name.endswith("_proj") else min(config.d_model, getattr(config, f"{stack}_ffn_dim"))
              for stack in stacks for name in settings.target_modules}
    narrowest = min(widths.values())
    if settings.r > narrowest:
        raise UserError(
            f"lora r={settings.r} is larger than the layers it adapts ({', '.join(settings.target_modules)} of {spec} are "
            f"{narrowest} wide): a higher rank than that adds weights, not capacity; use r <= {narrowest} (the recipe: 32)"
        )


def quantization_config(settings: LoraConfig):
    """The `BitsAndBytesConfig` that loads the base in 8 or 4 bits, or None."""
    if settings.quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    if settings.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    import torch

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)


def apply_lora(model, settings: LoraConfig, cached_cross_kv: bool = False, seed: int = 42):
    """`model` wrapped in a `PeftModel` whose only trainable weights are the LoRA updates.

    Each ``lora_A`` starts as a random draw (``lora_B`` as zeros), so the draw is made from `seed`
    (the run's ``seed``): the torch generator of a fresh process is seeded at random, and an
    unseeded init made two runs of one preset, or a killed run and its uninterrupted twin, train
    different adapters (the merged weights differed by up to 0.005 on the tiny preset).
    The global generator is left as it was.
    """
    import peft
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training

    check_targets(model, settings, cached_cross_kv)
    if settings.quantization is not None:
        # The successor of prepare_model_for_int8_training (gone since peft 0.10): norms in fp32,
        # input gradients on so checkpointed activations can backpropagate into the adapters.
        model = prepare_model_for_kbit_training(model)
    config = peft.LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=target_pattern(settings, cached_cross_kv), bias="none",
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    return peft_model


def check_targets(model, settings: LoraConfig, cached_cross_kv: bool = False) -> None:
    """Raise `UserError` unless `settings` names Linear layers of `model` no narrower than `r` (what
    peft would otherwise refuse with a traceback, or accept and train a useless rank)."""
    import re

    import torch

    pattern = re.compile(target_pattern(settings, cached_cross_kv))
    matched = [(name, m) for name, m in model.named_modules() if pattern.fullmatch(name)]
    if not matched:
        raise UserError(f"lora target_modules={list(settings.target_modules)} matched no layer of the {settings.part}")
    other = sorted({type(m).__name__ for _, m in matched if not isinstance(m, torch.nn.Linear)})
    if other:
        raise UserError(f"lora target_modules={list(settings.target_modules)} matched {', '.join(other)} layers; "
                        f"LoRA adapts Linear layers: choose from {list(LINEAR_LAYERS)}")
    narrowest = min(min(m.in_features, m.out_features) for _, m in matched)
    if settings.r > narrowest:
        raise UserError(f"lora r={settings.r} is larger than the layers it adapts ({narrowest} wide); use r <= {narrowest}")


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def merge_for_final(peft_model, final: Path, unquantized_base: str | None = None):
    """Save the adapter in ``final/adapter`` and return the base model with the adapter merged in.

    The merged model is a plain `WhisperForConditionalGeneration`: what `evaluate`, `export`, the
    app and the Hub load. An 8- or 4-bit base cannot hold the merged weights exactly, so then the
    adapter is merged into the base loaded again in full precision (`unquantized_base`, its spec).
    """
    peft_model.save_pretrained(str(final / ADAPTER_DIR))
    if unquantized_base is None:
        return peft_model.merge_and_unload()
    from peft import PeftModel

    base, _ = load_model(unquantized_base)
    return PeftModel.from_pretrained(base, str(final / ADAPTER_DIR)).merge_and_unload()
