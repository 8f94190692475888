"""A transformers Whisper folder (model, processor, generation config) from a CTranslate2 one.

The weights come from `whisper_sv.models.ct2_state_dict`; this module adds what CTranslate2 keeps
elsewhere or not at all: a ``WhisperTokenizer`` with the 1501 timestamp tokens the CT2
``tokenizer.json`` lacks, and a generation config equivalent to ``openai/whisper-base``'s, built
from CT2's ``config.json`` (language ids, suppressed tokens, alignment heads).

The folder is written under a temporary name and renamed into place, with ``conversion.json``
written last, so it either holds a finished conversion or is absent.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..common.fileio import atomic_folder, sha256_file
from .ct2_format import read_ct2_model
from .ct2_state_dict import check_whisper_architecture, ct2_to_hf_state_dict, ct2_whisper_dims

CONVERSION_FILE = "conversion.json"
# Bump when the converter's output changes, so cached converted folders from older code are rebuilt.
CONVERTER_REVISION = 1

TIME_PRECISION = 0.02  # seconds per timestamp token
# openai/whisper decodes with max_initial_timestamp=1.0 s, i.e. 1.0 / 0.02 = 50 timestamp steps.
MAX_INITIAL_TIMESTAMP_INDEX = 50

SOT = "<|startoftranscript|>"
EOT = "<|endoftext|>"
TRANSCRIBE = "<|transcribe|>"
TRANSLATE = "<|translate|>"
NO_TIMESTAMPS = "<|notimestamps|>"
START_OF_PREV = "<|startofprev|>"

# mkdir and open() honour the umask; give finished entries ordinary permissions so a cache shared
# between users (WHISPER_SV_CACHE on a team disk) stays readable whatever the writer's umask.
FILE_MODE, DIR_MODE = 0o644, 0o755


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


def convert_ct2_to_transformers(
    ct2_dir: Path, out_dir: Path, *, source: Mapping[str, Any] | None = None, overwrite: bool = True
) -> Path:
    """Write a transformers Whisper folder (model, processor, generation config) from a CT2 one.

    ``ct2_dir`` needs model.bin, config.json and tokenizer.json. ``source`` says where that
    folder came from; its keys open conversion.json (default: ``{"source": str(ct2_dir)}``).
    The folder is assembled under a temporary name beside ``out_dir`` and renamed into place,
    so ``out_dir`` either holds a finished conversion (with conversion.json) or is absent. An
    existing ``out_dir`` is replaced, unless ``overwrite=False`` and it holds a finished
    conversion of the same source (another process got there first): then ours is discarded
    and theirs kept.
    """
    import torch
    import transformers
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    model_bin = ct2_dir / "model.bin"
    ct2 = read_ct2_model(model_bin, float32=True)
    check_whisper_architecture(ct2)
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

    source_sha256 = sha256_file(model_bin)
    # overwrite=False: a finished conversion of the same source already there (another process got
    # there first) is kept, and ours discarded.
    keep = None if overwrite else (lambda existing: finished_conversion(existing, source_sha256))
    with atomic_folder(out_dir, keep=keep) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        record = {
            **(source if source is not None else {"source": str(ct2_dir)}),
            "source_sha256": source_sha256,
            "ct2_binary_version": ct2.binary_version,
            "ct2_spec": f"{ct2.spec_name} revision {ct2.spec_revision}",
            "tool": __name__,
            "tool_version": _tool_version(),
            "converter_revision": CONVERTER_REVISION,
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
            "tie_word_embeddings": tied,
            "dims": dims,
        }
        # Written last: its presence is what marks the folder as a finished conversion (the folder
        # itself only gets its final name once complete).
        (tmp / CONVERSION_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        for path in tmp.iterdir():
            os.chmod(path, FILE_MODE)
        os.chmod(tmp, DIR_MODE)
    return out_dir


def finished_conversion(hf_dir: Path, source_sha256: str) -> bool:
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
