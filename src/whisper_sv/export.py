"""Export a Whisper model spec to CTranslate2 for faster-whisper.

The tokenizer and preprocessor config are copied beside ``model.bin`` so faster-whisper loads the
folder on its own (it reads the mel count from ``preprocessor_config.json``). The export is written
to a temporary folder and renamed (`whisper_sv.fileio.atomic_folder`), so a killed export never
looks finished.
"""

from __future__ import annotations

import json
from pathlib import Path

from .audio import CHUNK_LENGTH
from .encoder_window import WINDOW_KEY
from .fileio import atomic_folder
from .models import DEFAULT_MODEL, resolve_model

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
    if out.exists() and not force:
        if (out / "model.bin").is_file():
            print(f"{out} already holds an export - skipping (pass --force to redo it)")
            return out
        raise FileExistsError(f"{out} exists and is not an export; pick another --out")
    source = resolve_model(model)
    local = Path(source).is_dir()
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
                        "window_s": _trained_window_s(source)}, indent=2)
        )
    return out


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
