"""Read CTranslate2's ``model.bin`` without CTranslate2: names, shapes, dtypes and raw weights.

Used by `whisper_sv.models.ct2_to_transformers` to convert the packaged Whisper base; general enough
for any CTranslate2 model of binary version 4 to 6.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

# ---------------------------------------------------------------------------------------------
# Reading CTranslate2's model.bin
# ---------------------------------------------------------------------------------------------
# Layout, as written by ctranslate2/specs/model_spec.py (ModelSpec._serialize) and read by
# src/models/model.cc (Model::load). Everything is packed with no padding, in the writer's
# native byte order (little-endian on every platform CTranslate2 ships wheels for):
#
#   uint32 binary_version                      (6 from CTranslate2 4.x's writer; 4+ read here)
#   string spec_name                           ("WhisperSpec"; absent before version 2)
#   uint32 spec_revision                       (WhisperSpec: 3)
#   uint32 num_variables, then per variable, sorted by name:
#       string name; uint8 rank; rank x uint32 dims; uint8 dtype_id; uint32 num_bytes; bytes
#   uint32 num_aliases, then per alias: string alias; string target_name
#
# string = uint16 length counting a trailing NUL, then the bytes (the Python writer counts
# characters, not bytes, so only ASCII names round-trip; all real names are ASCII).
# Config scalars (num_heads, activation, pre_norm, ...) are rank-0 variables.
# model.cc reads versions 4, 5 and 6 identically (it only branches at 2, 3 and 4); versions
# below 4 stored an item size instead of a dtype id and are not supported here.

MIN_BINARY_VERSION = 4
MAX_BINARY_VERSION = 6

# DataType enum order in include/ctranslate2/types.h (_dtype_to_type_id in model_spec.py).
# bfloat16 has no numpy dtype: it is read as uint16 and widened to float32 below.
CT2_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),  # float32
    1: np.dtype("i1"),  # int8
    2: np.dtype("<i2"),  # int16
    3: np.dtype("<i4"),  # int32
    4: np.dtype("<f2"),  # float16
    5: np.dtype("<u2"),  # bfloat16 (raw bits)
}
_BFLOAT16_ID = 5


@dataclass(frozen=True)
class Ct2Model:
    """The contents of a CTranslate2 ``model.bin``."""

    binary_version: int
    spec_name: str
    spec_revision: int
    variables: dict[str, np.ndarray]  # aliases included, sharing their target's array
    aliases: dict[str, str]  # alias name -> target variable name


class _Reader:
    """Sequential little-endian reads from a buffer, with errors that say where the file ended."""

    def __init__(self, buf: bytes | memoryview, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise ValueError(
                f"{self.path} is truncated: wanted {n} bytes at offset {self.pos}, file has {len(self.buf)}"
            )
        view = memoryview(self.buf)[self.pos : self.pos + n]
        self.pos += n
        return view

    def unpack(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        raw = bytes(self.take(self.unpack("H")))
        return raw.split(b"\0", 1)[0].decode("utf-8")  # C++ reads it as a C string


def _read_bytes(source: Path | BinaryIO) -> tuple[bytes, Path]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return path.read_bytes(), path
    return source.read(), Path(getattr(source, "name", "<stream>"))


def read_ct2_model(source: Path | BinaryIO, float32: bool = False) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin`` (binary versions 4-6) into numpy arrays.

    ``float32=True`` widens float16/bfloat16 variables to float32 (exact); otherwise they keep
    their stored dtype, except bfloat16, which numpy lacks and is always widened.
    """
    buf, path = _read_bytes(source)
    r = _Reader(buf, path)
    version = r.unpack("I")
    if not MIN_BINARY_VERSION <= version <= MAX_BINARY_VERSION:
        raise ValueError(
            f"{path}: CTranslate2 binary version {version} is not supported "
            f"(this reader handles {MIN_BINARY_VERSION} to {MAX_BINARY_VERSION})"
        )
    spec_name = r.string()
    spec_revision = r.unpack("I")

    variables: dict[str, np.ndarray] = {}
    for _ in range(r.unpack("I")):
        name = r.string()
        rank = r.unpack("B")
        shape = tuple(r.unpack("I") for _ in range(rank))
        dtype_id = r.unpack("B")
        num_bytes = r.unpack("I")
        if dtype_id not in CT2_DTYPES:
            raise ValueError(f"{path}: variable {name!r} has unknown dtype id {dtype_id}")
        dtype = CT2_DTYPES[dtype_id]
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize != num_bytes:
            raise ValueError(
                f"{path}: variable {name!r} has shape {shape} of {dtype} but {num_bytes} bytes"
            )
        array = np.frombuffer(r.take(num_bytes), dtype=dtype).reshape(shape)
        if dtype_id == _BFLOAT16_ID:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        elif float32 and array.dtype == np.float16:
            array = array.astype(np.float32)
        else:
            array = array.copy()  # own the memory, writable (torch.from_numpy wants that)
        variables[name] = array

    aliases: dict[str, str] = {}
    for _ in range(r.unpack("I")):
        alias, target = r.string(), r.string()
        if target not in variables:
            raise ValueError(f"{path}: alias {alias!r} points at missing variable {target!r}")
        aliases[alias] = target
        variables[alias] = variables[target]
    if r.pos != len(buf):
        raise ValueError(f"{path}: {len(buf) - r.pos} unexpected bytes after the aliases")
    return Ct2Model(version, spec_name, spec_revision, variables, aliases)

