"""A lean GGUF parser: metadata as Python values, tensor data memory-mapped.

gguf-py's reader builds a numpy object per metadata array element (tens of thousands for a
vocabulary), which costs ~170 MB and seconds; this reads the same header sequentially.
gguf-py still decodes the quantized blocks (``gguf.quants.dequantize``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFFormatError(ValueError):
    """The bytes are not a well-formed GGUF file."""


@dataclass
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # ggml order (fastest dimension first)
    tensor_type: object  # gguf.GGMLQuantizationType
    data: np.ndarray  # memory-mapped: (rows, row bytes) for quantized types, else the numpy shape


class _Cursor:
    def __init__(self, buffer: np.ndarray):
        self.buffer, self.pos = buffer, 0

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.buffer):
            raise GGUFFormatError(f"unexpected end of file at byte {self.pos} (truncated?)")
        out = self.buffer[self.pos : self.pos + size].tobytes()
        self.pos += size
        return out

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        length = self.scalar("<Q")
        if length > len(self.buffer):
            raise GGUFFormatError(f"string length {length} at byte {self.pos} exceeds the file")
        return self.take(length).decode("utf-8", errors="replace")

    def value(self, kind: int):
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.scalar("<I"), self.scalar("<Q")
            if count > len(self.buffer):
                raise GGUFFormatError(f"array length {count} at byte {self.pos} exceeds the file")
            if item_kind in _SCALARS and item_kind != 7:
                dtype = np.dtype(_SCALARS[item_kind])
                return np.frombuffer(self.take(dtype.itemsize * count), dtype=dtype).tolist()
            return [self.value(item_kind) for _ in range(count)]
        raise GGUFFormatError(f"unknown metadata value type {kind} at byte {self.pos}")


def read_gguf(path: Path) -> tuple[dict, list[GGUFTensor]]:
    """(metadata, tensors) of a GGUF file; raises GGUFFormatError on malformed input."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    cursor = _Cursor(mapped)
    if cursor.take(4) != MAGIC:
        raise GGUFFormatError("missing the GGUF magic bytes")
    version = cursor.scalar("<I")
    if version not in SUPPORTED_VERSIONS:
        raise GGUFFormatError(f"GGUF version {version} is not supported ({SUPPORTED_VERSIONS})")
    tensor_count, kv_count = cursor.scalar("<Q"), cursor.scalar("<Q")
    metadata = {}
    for _ in range(kv_count):
        key = cursor.string()
        metadata[key] = cursor.value(cursor.scalar("<I"))
    infos = []
    for _ in range(tensor_count):
        name = cursor.string()
        dims = tuple(cursor.scalar("<Q") for _ in range(cursor.scalar("<I")))
        infos.append((name, dims, cursor.scalar("<I"), cursor.scalar("<Q")))
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    data_start = -(-cursor.pos // alignment) * alignment
    tensors = []
    for name, dims, type_id, offset in infos:
        try:
            qtype = GGMLQuantizationType(type_id)
        except ValueError as err:
            raise GGUFFormatError(f"tensor {name} has unknown ggml type {type_id}") from err
        block, block_bytes = GGML_QUANT_SIZES[qtype]
        count = int(np.prod(dims, dtype=np.int64))
        nbytes = count // block * block_bytes
        begin = data_start + offset
        if begin + nbytes > len(mapped) or count % block:
            raise GGUFFormatError(f"tensor {name} lies past the end of the file (truncated?)")
        raw = mapped[begin : begin + nbytes]
        numpy_shape = tuple(reversed(dims))
        if block == 1:  # plain float/int types
            data = raw.view(np.dtype(_plain_dtype(qtype))).reshape(numpy_shape)
        else:
            data = raw.reshape(*numpy_shape[:-1], numpy_shape[-1] // block * block_bytes)
        tensors.append(GGUFTensor(name, dims, qtype, data))
    return metadata, tensors


def _plain_dtype(qtype) -> str:
    names = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I8": "i1", "I16": "<i2", "I32": "<i4", "I64": "<i8"}
    if qtype.name not in names:
        raise GGUFFormatError(f"unsupported ggml type {qtype.name}")
    return names[qtype.name]
