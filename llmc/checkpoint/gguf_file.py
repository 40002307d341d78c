"""A lean, strict GGUF parser: metadata as Python values, tensor data memory-mapped.

gguf-py's reader builds a numpy object per metadata array element (tens of thousands for a
vocabulary), which costs ~170 MB and seconds; this reads the same header sequentially. The file is
untrusted input: every count and length is checked against the bytes that remain before anything
is allocated or looped over, numeric arrays are read in bulk, strings must be UTF-8, the alignment
must be a power of two, ggml types must be known to gguf-py, and tensor data ranges must be in
bounds, aligned and disjoint. gguf-py still decodes the quantized blocks (``gguf.quants.dequantize``).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_ALIGNMENT = 1 << 16
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_TENSOR_NAME_BYTES = 64  # GGML_MAX_NAME
MAX_ARRAY_DEPTH = 2  # arrays of arrays at most
MAX_STRING_ARRAY = 1 << 22  # 16x the largest vocabulary (256k tokens): a crafted count cannot loop for minutes
MAX_NESTED_ARRAYS = 1 << 20
MAX_ELEMENTS = 1 << 50  # per tensor; larger products cannot be real
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B", 10: "<Q", 11: "<q", 12: "<d"}
_INTEGER_KINDS = {0, 1, 2, 3, 4, 5, 10, 11}
_STRING, _ARRAY, _BOOL = 8, 9, 7
_INTEGER_TENSOR_TYPES = {"I8", "I16", "I32", "I64"}
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, the smallest value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset

# standardized keys (llama.cpp's GGUF spec) whose values the model mapping uses: wrong types or ranges
# here would otherwise surface as ZeroDivisionError / TypeError deep inside the config mapping
_POSITIVE_INT_KEYS = (
    "block_count",
    "context_length",
    "embedding_length",
    "feed_forward_length",
    "attention.head_count",
    "attention.key_length",
    "attention.value_length",
    "vocab_size",
)
_NONNEGATIVE_INT_KEYS = ("attention.head_count_kv",)
_POSITIVE_FLOAT_KEYS = ("attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon", "rope.freq_base")
TOKEN_ID_KEYS = (
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.eot_token_id",
    "tokenizer.ggml.eom_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.separator_token_id",
)


class GGUFFormatError(ValueError):
    """The bytes are not a well-formed GGUF file (the message names the key or tensor)."""


@dataclass
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # ggml order (fastest dimension first)
    tensor_type: object  # gguf.GGMLQuantizationType
    data: np.ndarray  # memory-mapped: (rows, row bytes) for quantized types, else the numpy shape


class _Cursor:
    """Sequential reads over the mapped file; every read is bounds-checked first."""

    def __init__(self, buffer: np.ndarray):
        self.buffer, self.pos, self.size = buffer, 0, len(buffer)
        self.view = memoryview(buffer) if self.size else memoryview(b"")

    @property
    def remaining(self) -> int:
        return self.size - self.pos

    def need(self, size: int, what: str) -> None:
        if size < 0 or size > self.remaining:
            raise GGUFFormatError(
                f"{what} needs {size} bytes at byte {self.pos} but only {self.remaining} remain (truncated?)"
            )

    def take(self, size: int, what: str = "a field") -> bytes:
        self.need(size, what)
        out = bytes(self.view[self.pos : self.pos + size])
        self.pos += size
        return out

    def scalar(self, fmt: str, what: str = "a field"):
        size = struct.calcsize(fmt)
        self.need(size, what)
        (value,) = struct.unpack_from(fmt, self.view, self.pos)
        self.pos += size
        return value

    def string(self, what: str) -> str:
        length = self.scalar("<Q", f"the length of {what}")
        self.need(length, f"{what} ({length} bytes)")
        raw = self.view[self.pos : self.pos + length]
        self.pos += length
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError as err:
            raise GGUFFormatError(f"{what} is not valid UTF-8 ({err.reason} at byte {err.start})") from err

    def strings(self, count: int, what: str) -> list[str]:
        """``count`` length-prefixed UTF-8 strings (a vocabulary): one tight loop, names built only on error."""
        view, pos, size, out = self.view, self.pos, self.size, []
        for index in range(count):
            if pos + 8 > size:
                self.pos = pos
                self.need(8, f"the length of {what}[{index}]")
            (length,) = struct.unpack_from("<Q", view, pos)
            pos += 8
            if length > size - pos:
                self.pos = pos
                self.need(length, f"{what}[{index}] ({length} bytes)")
            try:
                out.append(str(view[pos : pos + length], "utf-8"))
            except UnicodeDecodeError as err:
                raise GGUFFormatError(f"{what}[{index}] is not valid UTF-8 ({err.reason} at byte {err.start})") from err
            pos += length
        self.pos = pos
        return out

    def value(self, kind: int, what: str, depth: int = 0):
        if kind in _SCALARS:
            value = self.scalar(_SCALARS[kind], what)
            return _as_bool(value, what) if kind == _BOOL else value
        if kind == _STRING:
            return self.string(what)
        if kind == _ARRAY:
            return self.array(what, depth)
        raise GGUFFormatError(f"{what} has unknown value type {kind}")

    def array(self, what: str, depth: int) -> list:
        if depth >= MAX_ARRAY_DEPTH:
            raise GGUFFormatError(f"{what}: arrays nested deeper than {MAX_ARRAY_DEPTH} levels")
        item_kind = self.scalar("<I", f"the item type of {what}")
        count = self.scalar("<Q", f"the length of {what}")
        if item_kind in _SCALARS:
            dtype = np.dtype(_SCALARS[item_kind])
            self.need(count * dtype.itemsize, f"{what} ({count} items)")
            values = np.frombuffer(self.buffer, dtype=dtype, count=count, offset=self.pos)
            self.pos += count * dtype.itemsize
            if item_kind == _BOOL:
                if values.size and values.max() > 1:
                    raise GGUFFormatError(f"{what} holds a boolean that is neither 0 nor 1")
                return values.astype(bool).tolist()
            return values.tolist()
        if item_kind == _STRING:
            self.need(count * 8, f"{what} ({count} strings)")  # each string has at least its length
            if count > MAX_STRING_ARRAY:
                raise GGUFFormatError(f"{what} holds {count} strings (at most {MAX_STRING_ARRAY})")
            return self.strings(count, what)
        if item_kind == _ARRAY:
            self.need(count * 12, f"{what} ({count} arrays)")
            if count > MAX_NESTED_ARRAYS:
                raise GGUFFormatError(f"{what} holds {count} arrays (at most {MAX_NESTED_ARRAYS})")
            return [self.array(f"{what}[{i}]", depth + 1) for i in range(count)]
        raise GGUFFormatError(f"{what} has unknown item type {item_kind}")


def _as_bool(value: int, what: str) -> bool:
    if value > 1:
        raise GGUFFormatError(f"{what} is a boolean of value {value} (neither 0 nor 1)")
    return bool(value)


def read_gguf(path: Path) -> tuple[dict, list[GGUFTensor]]:
    """(metadata, tensors) of a GGUF file; raises GGUFFormatError on malformed input."""
    mapped = np.memmap(path, dtype=np.uint8, mode="r") if Path(path).stat().st_size else np.zeros(0, np.uint8)
    cursor = _Cursor(mapped)
    if cursor.remaining < 4 or cursor.take(4) != MAGIC:
        raise GGUFFormatError("missing the GGUF magic bytes (not a GGUF file)")
    version = cursor.scalar("<I", "the version")
    if version not in SUPPORTED_VERSIONS:
        raise GGUFFormatError(f"GGUF version {version} is not supported ({SUPPORTED_VERSIONS})")
    tensor_count = cursor.scalar("<Q", "the tensor count")
    kv_count = cursor.scalar("<Q", "the metadata count")
    if kv_count * _MIN_KV_BYTES > cursor.remaining:
        raise GGUFFormatError(f"metadata count {kv_count} cannot fit in the {cursor.remaining} bytes that remain")
    metadata: dict = {}
    for index in range(kv_count):
        key = cursor.string(f"metadata key #{index}")
        if key in metadata:
            raise GGUFFormatError(f"metadata key {key!r} appears twice")
        metadata[key] = cursor.value(cursor.scalar("<I", f"the type of {key!r}"), f"metadata {key!r}")
    if tensor_count * _MIN_TENSOR_INFO_BYTES > cursor.remaining:
        raise GGUFFormatError(f"tensor count {tensor_count} cannot fit in the {cursor.remaining} bytes that remain")
    infos = [_tensor_info(cursor, index) for index in range(tensor_count)]
    check_metadata(metadata)
    alignment = _alignment(metadata)
    data_start = -(-cursor.pos // alignment) * alignment
    if data_start > cursor.size and infos:
        raise GGUFFormatError(f"the tensor data would start at byte {data_start}, past the end of the file")
    placed = [_tensor(mapped, data_start, alignment, *info) for info in infos]
    _check_disjoint(placed, data_start, alignment, cursor.size)
    _check_block_indices(metadata, [tensor.name for tensor, _begin, _end in placed])
    return metadata, [tensor for tensor, _begin, _end in placed]


def _tensor_info(cursor: _Cursor, index: int) -> tuple[str, tuple[int, ...], int, int]:
    name = cursor.string(f"the name of tensor #{index}")
    if not name or len(name.encode()) > MAX_TENSOR_NAME_BYTES:
        raise GGUFFormatError(f"tensor #{index} has a name of {len(name.encode())} bytes (1..{MAX_TENSOR_NAME_BYTES})")
    n_dims = cursor.scalar("<I", f"the rank of tensor {name}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise GGUFFormatError(f"tensor {name} has {n_dims} dimensions (1..{MAX_DIMS})")
    cursor.need(8 * n_dims, f"the shape of tensor {name}")
    dims = tuple(int(d) for d in np.frombuffer(cursor.buffer, dtype="<u8", count=n_dims, offset=cursor.pos))
    cursor.pos += 8 * n_dims
    type_id = cursor.scalar("<I", f"the type of tensor {name}")
    offset = cursor.scalar("<Q", f"the data offset of tensor {name}")
    return name, dims, type_id, offset


def _alignment(metadata: dict) -> int:
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if (
        not isinstance(alignment, int)
        or isinstance(alignment, bool)
        or not 1 <= alignment <= MAX_ALIGNMENT
        or alignment & (alignment - 1)
    ):
        raise GGUFFormatError(
            f"metadata 'general.alignment' is {alignment!r}; it must be a power of two from 1 to {MAX_ALIGNMENT}"
        )
    return alignment


def _tensor(mapped: np.ndarray, data_start: int, alignment: int, name, dims, type_id, offset):
    """(tensor, first byte, end byte) of one tensor info, its range checked against the file."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        qtype = GGMLQuantizationType(type_id)
        block, block_bytes = GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError) as err:
        raise GGUFFormatError(f"tensor {name} has unknown ggml type {type_id}") from err
    if qtype.name in _INTEGER_TENSOR_TYPES:
        raise GGUFFormatError(f"tensor {name} has integer type {qtype.name}; model weights are float or quantized")
    if any(d < 1 for d in dims) or math.prod(dims) > MAX_ELEMENTS:
        raise GGUFFormatError(f"tensor {name} has an impossible shape {list(dims)}")
    if dims[0] % block:
        raise GGUFFormatError(f"tensor {name}: its row of {dims[0]} is not a whole number of {qtype.name} blocks")
    if offset % alignment:
        raise GGUFFormatError(f"tensor {name}: data offset {offset} is not a multiple of the alignment {alignment}")
    nbytes = math.prod(dims) // block * block_bytes
    begin = data_start + offset
    if begin + nbytes > len(mapped):
        raise GGUFFormatError(
            f"tensor {name} needs bytes {begin}..{begin + nbytes} but the file ends at {len(mapped)} (truncated?)"
        )
    raw = mapped[begin : begin + nbytes]
    numpy_shape = tuple(reversed(dims))
    if block == 1:  # plain float/int types
        data = raw.view(np.dtype(_plain_dtype(qtype))).reshape(numpy_shape)
    else:
        data = raw.reshape(*numpy_shape[:-1], numpy_shape[-1] // block * block_bytes)
    return GGUFTensor(name, dims, qtype, data), begin, begin + nbytes


def _check_disjoint(placed: list, data_start: int, alignment: int, file_size: int) -> None:
    """Tensor names unique; data ranges packed one after another from the data section's start, each
    padded to the alignment (as every GGUF writer lays them out): aliased or overlapping offsets would
    share weights, and a gap means a tensor's size (its type or shape) was changed."""
    seen: set[str] = set()
    ranges = []
    for tensor, begin, end in placed:
        if tensor.name in seen:
            raise GGUFFormatError(f"tensor {tensor.name} appears twice")
        seen.add(tensor.name)
        ranges.append((begin, end, tensor.name))
    ranges.sort()
    expected, previous = data_start, None
    for begin, end, name in ranges:
        if begin < expected:
            raise GGUFFormatError(f"tensors {previous} and {name} overlap in the data section")
        if begin > expected:
            raise GGUFFormatError(
                f"tensor {name}: {begin - expected} unused bytes before its data (after {previous or 'the header'}); "
                "a tensor's type or shape does not match the data layout"
            )
        expected, previous = -(-end // alignment) * alignment, name
    if ranges and file_size > expected:
        raise GGUFFormatError(
            f"{file_size - expected} bytes follow the last tensor ({previous}); "
            "a tensor's type or shape does not match the data layout"
        )


def _check_block_indices(metadata: dict, names: list[str]) -> None:
    """Tensors ``blk.N.*`` exist only for N < ``{arch}.block_count`` (a lowered count would drop layers)."""
    count = metadata.get(f"{metadata.get('general.architecture')}.block_count")
    if not _is_int(count):
        return
    for name in names:
        parts = name.split(".")
        if len(parts) > 2 and parts[0] == "blk" and parts[1].isdigit() and int(parts[1]) >= count:
            raise GGUFFormatError(f"tensor {name} belongs to a layer past block_count {count}")


def check_metadata(metadata: dict) -> None:
    """Types and ranges of the standardized keys the model mapping reads."""
    arch = metadata.get("general.architecture")
    if arch is not None and not isinstance(arch, str):
        raise GGUFFormatError(f"metadata 'general.architecture' is {type(arch).__name__}, not a string")
    for suffix in _POSITIVE_INT_KEYS + _NONNEGATIVE_INT_KEYS:
        key = f"{arch}.{suffix}"
        if key in metadata:
            _check_ints(key, metadata[key], minimum=1 if suffix in _POSITIVE_INT_KEYS else 0)
    for suffix in _POSITIVE_FLOAT_KEYS:
        key = f"{arch}.{suffix}"
        value = metadata.get(key)
        if key in metadata and (
            not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value <= 0
        ):
            raise GGUFFormatError(f"metadata {key!r} is {value!r}; expected a positive finite number")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is not None and not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)):
        raise GGUFFormatError("metadata 'tokenizer.ggml.tokens' is not an array of strings")
    merges = metadata.get("tokenizer.ggml.merges")
    if merges is not None and not (isinstance(merges, list) and all(isinstance(m, str) for m in merges)):
        raise GGUFFormatError("metadata 'tokenizer.ggml.merges' is not an array of strings")
    types = metadata.get("tokenizer.ggml.token_type")
    if types is not None and (
        not isinstance(types, list) or tokens is None or len(types) != len(tokens) or not all(_is_int(t) for t in types)
    ):
        raise GGUFFormatError("metadata 'tokenizer.ggml.token_type' is not one integer per token")
    vocab = len(tokens) if tokens is not None else None
    for key in TOKEN_ID_KEYS:
        if key in metadata:
            token_id = metadata[key]
            if not _is_int(token_id) or token_id < 0 or (vocab is not None and token_id >= vocab):
                raise GGUFFormatError(
                    f"metadata {key!r} is {token_id!r}, outside the vocabulary of {vocab} tokens"
                    if vocab is not None
                    else f"metadata {key!r} is {token_id!r}; expected a non-negative token id"
                )
    for key in ("tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token", "tokenizer.ggml.add_space_prefix"):
        if key in metadata and not isinstance(metadata[key], bool):
            raise GGUFFormatError(f"metadata {key!r} is {metadata[key]!r}; expected a boolean")
    template = metadata.get("tokenizer.chat_template")
    if template is not None and not isinstance(template, str):
        raise GGUFFormatError("metadata 'tokenizer.chat_template' is not a string")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_ints(key: str, value, minimum: int) -> None:
    """A positive integer; only the per-layer KV head count may be an array (of integers >= 0)."""
    if isinstance(value, list) and minimum == 0:
        if value and all(_is_int(v) and v >= 0 for v in value):
            return
    elif _is_int(value) and value >= 1:
        return
    shown = repr(value) if not isinstance(value, list) else f"an array of {len(value)} items"
    raise GGUFFormatError(f"metadata {key!r} is {shown}; expected a positive integer")


def _plain_dtype(qtype) -> str:
    names = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I8": "i1", "I16": "<i2", "I32": "<i4", "I64": "<i8"}
    if qtype.name not in names:
        raise GGUFFormatError(f"unsupported ggml type {qtype.name}")
    return names[qtype.name]
