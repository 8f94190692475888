"""CTranslate2 WhisperSpec weights -> a transformers Whisper state dict, and the checks it relies on.

CTranslate2 fuses Whisper's attention projections and renames every tensor; this module undoes
that on plain numpy arrays (no torch, no transformers), so the mapping can be tested against
CTranslate2's own converter on a tiny random model. `whisper_sv.models.ct2_to_transformers` builds the
model folder around it.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from .ct2_format import Ct2Model

WHISPER_SPEC = "WhisperSpec"
CT2_GELU = 3  # common_spec.Activation.GELU: the exact erf GELU, transformers' "gelu"
WHISPER_HEAD_DIM = 64  # every Whisper size uses 64-dim heads; fallback if num_heads is absent

_LAYER_RE = re.compile(r"^(encoder|decoder)/layer_(\d+)/")


def _layer_count(variables: dict[str, np.ndarray], stack: str) -> int:
    indices = {int(m.group(2)) for name in variables if (m := _LAYER_RE.match(name)) and m.group(1) == stack}
    if indices != set(range(len(indices))):
        raise ValueError(f"{stack} layers are not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


def _scalar(variables: dict[str, np.ndarray], name: str, default: int | None = None) -> int | None:
    value = variables.get(name)
    return default if value is None else int(value)


def ct2_whisper_dims(variables: dict[str, np.ndarray]) -> dict[str, int]:
    """Whisper hyperparameters (transformers ``WhisperConfig`` names) read off the CT2 weights."""
    vocab_size, d_model = variables["decoder/embeddings/weight"].shape
    default_heads = d_model // WHISPER_HEAD_DIM
    return {
        "vocab_size": int(vocab_size),
        "d_model": int(d_model),
        "num_mel_bins": int(variables["encoder/conv1/weight"].shape[1]),
        "encoder_layers": _layer_count(variables, "encoder"),
        "decoder_layers": _layer_count(variables, "decoder"),
        "encoder_attention_heads": _scalar(variables, "encoder/num_heads", default_heads),
        "decoder_attention_heads": _scalar(variables, "decoder/num_heads", default_heads),
        "encoder_ffn_dim": int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "decoder_ffn_dim": int(variables["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "max_source_positions": int(variables["encoder/position_encodings/encodings"].shape[0]),
        "max_target_positions": int(variables["decoder/position_encodings/encodings"].shape[0]),
    }


def check_whisper_architecture(model: Ct2Model) -> None:
    """Refuse anything the name mapping below would silently get wrong."""
    v = model.variables
    if model.spec_name != WHISPER_SPEC:
        raise ValueError(f"expected a CTranslate2 {WHISPER_SPEC}, got {model.spec_name!r}")
    expected = {
        "decoder/activation": CT2_GELU,
        "decoder/pre_norm": 1,  # layer norm before each block, as in Whisper
        "decoder/scale_embeddings": 0,  # Whisper does not multiply embeddings by sqrt(d_model)
        "decoder/alibi": 0,
    }
    for name, want in expected.items():
        got = _scalar(v, name)
        if got is not None and got != want:
            raise ValueError(f"{name} is {got}, Whisper needs {want}")
    for name, array in v.items():
        if name.endswith("_scale") or (array.dtype in (np.int8, np.int16) and array.ndim > 0):
            raise ValueError(
                f"{name} is quantized ({array.dtype}); convert from a float16/float32 CTranslate2 model"
            )


def _split_rows(array: np.ndarray, parts: int, name: str) -> list[np.ndarray]:
    if array.shape[0] % parts:
        raise ValueError(f"{name}: {array.shape[0]} rows do not split into {parts}")
    return np.split(array, parts, axis=0)


def _check_zero_key_bias(bias: np.ndarray, name: str) -> None:
    # Whisper's k_proj has no bias; CTranslate2's fuse_linear fills its slot with zeros.
    if np.any(bias != 0):
        raise ValueError(f"{name}: the key-projection slice of the fused bias is not zero")


def ct2_to_hf_state_dict(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map CTranslate2 WhisperSpec variable names to transformers Whisper state-dict names.

    CTranslate2 stores weights unscaled (the 1/sqrt(head_dim) query scaling happens at run
    time, as in transformers), so only names and the fused projections change:
    ``self_attention/linear_0`` is [q; k; v], ``attention/linear_0`` is the cross-attention q
    and ``attention/linear_1`` its [k; v]; ``linear_1``/``linear_2`` are the output projections.
    Layer norms are pre-norm: ``self_attention/layer_norm`` -> ``self_attn_layer_norm``,
    ``attention/layer_norm`` -> ``encoder_attn_layer_norm``, ``ffn/layer_norm`` ->
    ``final_layer_norm``; gamma/beta -> weight/bias. Scalars (num_heads, flags) are dropped.
    """
    sd: dict[str, np.ndarray] = {}
    consumed: set[str] = set()

    def take(name: str) -> np.ndarray:
        consumed.add(name)
        return variables[name]

    def layer_norm(src: str, dst: str) -> None:
        sd[f"{dst}.weight"] = take(f"{src}/gamma")
        sd[f"{dst}.bias"] = take(f"{src}/beta")

    def linear(src: str, dst: str, bias: bool = True) -> None:
        sd[f"{dst}.weight"] = take(f"{src}/weight")
        if bias:
            sd[f"{dst}.bias"] = take(f"{src}/bias")

    def fused(src: str, dst: str, heads: Sequence[str]) -> None:
        weights = _split_rows(take(f"{src}/weight"), len(heads), src)
        biases = _split_rows(take(f"{src}/bias"), len(heads), src)
        for proj, w, b in zip(heads, weights, biases):
            sd[f"{dst}.{proj}.weight"] = w
            if proj == "k_proj":
                _check_zero_key_bias(b, src)
            else:
                sd[f"{dst}.{proj}.bias"] = b

    def self_attention(src: str, dst: str) -> None:
        layer_norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        fused(f"{src}/self_attention/linear_0", f"{dst}.self_attn", ("q_proj", "k_proj", "v_proj"))
        linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")

    def ffn(src: str, dst: str) -> None:
        layer_norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
        linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
        linear(f"{src}/ffn/linear_1", f"{dst}.fc2")

    enc, dec = "model.encoder", "model.decoder"
    linear("encoder/conv1", f"{enc}.conv1")
    linear("encoder/conv2", f"{enc}.conv2")
    sd[f"{enc}.embed_positions.weight"] = take("encoder/position_encodings/encodings")
    for i in range(_layer_count(variables, "encoder")):
        src, dst = f"encoder/layer_{i}", f"{enc}.layers.{i}"
        self_attention(src, dst)
        ffn(src, dst)
    layer_norm("encoder/layer_norm", f"{enc}.layer_norm")

    sd[f"{dec}.embed_tokens.weight"] = take("decoder/embeddings/weight")
    sd[f"{dec}.embed_positions.weight"] = take("decoder/position_encodings/encodings")
    for i in range(_layer_count(variables, "decoder")):
        src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        self_attention(src, dst)
        layer_norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
        linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
        fused(f"{src}/attention/linear_1", f"{dst}.encoder_attn", ("k_proj", "v_proj"))
        linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
        ffn(src, dst)
    layer_norm("decoder/layer_norm", f"{dec}.layer_norm")
    # Whisper's output projection is the token embedding (CT2 stores it as an alias); a model
    # with an untied projection keeps its own matrix and gets tie_word_embeddings=False.
    sd["proj_out.weight"] = take("decoder/projection/weight")
    if "decoder/projection/bias" in variables:
        raise ValueError("decoder/projection/bias present: Whisper's output projection has no bias")

    leftovers = {n for n, a in variables.items() if n not in consumed and a.ndim > 0}
    if leftovers:
        raise ValueError(f"CTranslate2 variables with no transformers counterpart: {sorted(leftovers)}")
    return sd

