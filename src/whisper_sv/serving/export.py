"""Export a Whisper model spec to CTranslate2 for faster-whisper.

The tokenizer and preprocessor config are copied beside ``model.bin`` so faster-whisper loads the
folder on its own (it reads the mel count from ``preprocessor_config.json``). The export is written
to a temporary folder and renamed (`whisper_sv.common.fileio.atomic_folder`), so a killed export never
looks finished.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from ..audio.io import CHUNK_LENGTH
from ..common.errors import UserError
from ..common.fileio import atomic_folder
from ..models.encoder_window import WINDOW_KEY
from ..models.specs import DEFAULT_LANGUAGE, DEFAULT_MODEL, resolve_model, whisper_language

QUANTIZATIONS = ("int8", "int8_float16", "int8_float32", "float16", "float32", "bfloat16")
COPY_FILES = ("tokenizer.json", "preprocessor_config.json")


def export_ct2(model: str = DEFAULT_MODEL, out: str | Path = "ct2", quantization: str = "int8", force: bool = False) -> Path:
    """Convert `model` (spec) to a CTranslate2 folder `out`; returns `out`.

    `quantization` is how the weights are stored (int8 for CPU serving, float16 for GPUs);
    faster-whisper can still pick another compute type at load time.
    """
    import ctranslate2

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization={quantization!r}: use one of {QUANTIZATIONS}")
    out = Path(out)
    source = resolve_model(model)
    if out.exists() and not force:
        if not (out / "model.bin").is_file():
            raise FileExistsError(f"{out} exists and is not an export; pick another --out")
        if not _is_stale(out, model, source, quantization):
            print(f"{out} already holds this export - skipping (pass --force to redo it)")
            return out
        print(f"{out} holds an export of older weights of {model} - exporting again")
    local = Path(source).is_dir()
    if local:
        check_model_folder(Path(source))
    # transformers 5 saves the feature extractor inside processor_config.json; such folders get a
    # preprocessor_config.json written from the loaded feature extractor instead of copied.
    copy = [f for f in COPY_FILES if not local or (Path(source) / f).is_file()]
    with atomic_folder(out) as tmp:  # an existing export (--force) is replaced only once this one is whole
        converter = ctranslate2.converters.TransformersConverter(source, copy_files=list(copy))
        converter.convert(str(tmp), quantization=quantization, force=True)
        _complete_side_files(source, tmp)
        (tmp / "whisper_sv_export.json").write_text(
            json.dumps({"model": model, "quantization": quantization, "ctranslate2": ctranslate2.__version__,
                        # the encoder window it was fine-tuned on: serve it with at least this --min-window
                        "window_s": _trained_window_s(source),
                        # the language its generation config forces (a fine-tune's target): served with it
                        "language": _forced_language(source),
                        # what the weights were when exported: a retrained final/ is exported again
                        "source_fingerprint": _fingerprint(source)}, indent=2)
        )
    return out


def _fingerprint(source: str) -> str | None:
    """Size and modification time of a local model's weights and config (None for a Hub id): cheap
    even for large models, and it changes whenever training writes final/ again."""
    folder = Path(source)
    if not folder.is_dir():
        return None
    files = sorted(f for f in folder.iterdir() if f.suffix in (".safetensors", ".bin") or f.name in ("config.json", "generation_config.json"))
    return ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def _is_stale(out: Path, model: str, source: str, quantization: str) -> bool:
    """Whether the export in `out` was made from other weights than `source` has now. An export of
    another model or quantization is refused (a UserError: --force or another --out)."""
    try:
        record = json.loads((out / "whisper_sv_export.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # an export made elsewhere (ct2-transformers-converter): keep it, as before
    if record.get("model") != model or record.get("quantization") != quantization:
        raise UserError(f"{out} holds an export of {record.get('model')} ({record.get('quantization')}), not {model} "
                        f"({quantization}); pass --force to replace it or pick another --out")
    return record.get("source_fingerprint") != _fingerprint(source)


def _forced_language(source: str) -> str:
    """The language `source`'s generation config forces (a fine-tune saves its target's), else the default."""
    try:
        config = json.loads((Path(source) / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return DEFAULT_LANGUAGE
    return whisper_language(config["language"]) if config.get("language") else DEFAULT_LANGUAGE


def check_model_folder(folder: Path) -> None:
    """Raise `UserError` in one line unless `folder` holds a whole Whisper checkpoint: a readable
    Whisper config.json and weights that are not cut short (read from the headers, nothing loaded)."""
    hint = "give a run's final/ folder, a Hub id or packaged:whisper-base"
    if (folder / "feature_config.json").is_file() or any(folder.glob("manifest*.jsonl")):
        raise UserError(f"{folder} is a feature store (whisper-sv features), not a model; {hint}")
    if (folder / "final").is_dir():
        raise UserError(f"{folder} is a training run folder; export its model: --model {folder / 'final'}")
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        raise UserError(f"{folder} holds a LoRA adapter alone; export the run's final/ folder (the merged model)")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UserError(f"{folder} has no config.json, so it is not a model folder; {hint}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{config_file} is not readable JSON ({err}); the model folder is damaged: save the model again") from None
    if not isinstance(config, dict) or config.get("model_type") != "whisper":
        found = config.get("model_type") if isinstance(config, dict) else None
        raise UserError(f"{config_file} is not a Whisper model's config (model_type {found!r}); {hint}")
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file():
        weights = [folder / "model.safetensors"]
    elif index.is_file():
        try:
            weights = [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise UserError(f"{index} is not a readable weight index ({err}); save the model again") from None
    elif (folder / "pytorch_model.bin").is_file():
        return  # the older format: no header to check without loading it
    else:
        raise UserError(f"{folder} has a config.json but no model.safetensors; save the model again ({hint})")
    for path in weights:
        problem = safetensors_problem(path)
        if problem:
            raise UserError(f"{path} {problem}; copy or save the model again")


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a .safetensors file's layout (its header names every tensor's byte range), or None.

    A copy or a save that was interrupted leaves a file shorter than its header says."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"is cut short: {size} bytes, not even a header (an interrupted copy or save)"
            n = struct.unpack("<Q", head)[0]
            if n > size - 8:
                return f"is cut short or not safetensors: {size} bytes, fewer than its {n}-byte header says"
            header = json.loads(f.read(n))
    except FileNotFoundError:
        return "is missing"
    except (ValueError, UnicodeDecodeError):
        return "has an unreadable header: not a whole safetensors file"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict) and "data_offsets" in t]
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        return f"is cut short: {size} of the {expected} bytes its header lists (an interrupted copy or save)"
    return None


def _trained_window_s(source: str) -> float:
    """The fine-tuning window recorded in a model folder's config.json (encoder_window.py), else 30."""
    try:
        config = json.loads((Path(source) / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    return float(config.get(WINDOW_KEY) or CHUNK_LENGTH)


def _complete_side_files(source: str, folder: Path) -> None:
    """Write what faster-whisper needs beside model.bin and the converter could not copy."""
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    try:
        if not (folder / "preprocessor_config.json").is_file():
            WhisperFeatureExtractor.from_pretrained(source).save_pretrained(folder)
        if not (folder / "tokenizer.json").is_file():
            AutoTokenizer.from_pretrained(source).backend_tokenizer.save(str(folder / "tokenizer.json"))
    except (OSError, ValueError, AttributeError) as err:
        raise FileNotFoundError(
            f"{source}: cannot find its feature extractor or fast tokenizer ({err}); faster-whisper needs "
            "preprocessor_config.json and tokenizer.json: save the processor into the model folder "
            "(WhisperProcessor.save_pretrained)"
        ) from err
    for name in COPY_FILES:
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: {name} missing after export")


def add_cli(sub) -> None:
    """Register ``whisper-sv export``."""
    p = sub.add_parser("export", help="export a model to CTranslate2 for faster-whisper")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model spec (a run's final/ folder, a Hub id, ...)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quantization", default="int8", choices=QUANTIZATIONS, help="weight type (default %(default)s)")
    p.add_argument("--force", action="store_true", help="overwrite an existing export")
    p.set_defaults(func=lambda a: print(export_ct2(a.model, a.out, a.quantization, a.force)))
