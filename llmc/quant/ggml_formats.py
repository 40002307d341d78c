"""GGML block formats kept as they are in a GGUF file: byte layout, planes, and a TE decode per format.

A GGML quantized row is a run of blocks (32 or 256 weights each), every block a fixed struct of
bytes (scales, minimums, packed codes). llmc stores each struct field as one *plane*: the same bytes,
gathered across blocks into a ``[rows, ...]`` array (``uint32`` words for code/scale bytes,
``float16`` for the block scales), so the weights on disk are exactly the file's bits, and
every target reads them with ordinary 32-bit loads. ``te_element`` decodes one weight to float32
with the operations, in the order, of gguf-py's ``gguf.quants.dequantize`` (bit-exact).

Layouts (byte offsets within one block) follow ggml's ``block_q*`` structs:

=====  =====  =====  ==================================================================
type   block  bytes  fields
=====  =====  =====  ==================================================================
Q4_0   32     18     d f16, qs[16] (low nibbles: weights 0..15, high: 16..31)
Q4_1   32     20     d f16, m f16, qs[16]
Q5_0   32     22     d f16, qh u32 (bit j: 5th bit of weight j), qs[16]
Q5_1   32     24     d f16, m f16, qh u32, qs[16]
Q8_0   32     34     d f16, qs[32] int8
Q4_K   256    144    d f16, dmin f16, scales[12] (8 x 6-bit scale + 6-bit min), qs[128]
Q5_K   256    176    d f16, dmin f16, scales[12], qh[32], qs[128]
Q6_K   256    210    ql[128], qh[64], scales[16] int8, d f16
=====  =====  =====  ==================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import tirx

from llmc.errors import CheckpointError


@dataclass(frozen=True)
class Plane:
    """One field of a block: ``size`` bytes at ``offset``, stored as ``dtype`` (uint32 / float16 / uint16)."""

    name: str
    offset: int
    size: int
    dtype: str


@dataclass(frozen=True)
class GGMLFormat:
    """A GGML tensor type: block geometry, its planes, and the decode of weight ``k`` of a row."""

    name: str
    block_size: int
    block_bytes: int
    planes: tuple[Plane, ...]

    @property
    def bits_per_weight(self) -> float:
        return self.block_bytes * 8 / self.block_size

    def blocks(self, cols: int) -> int:
        return cols // self.block_size

    def plane_shapes(self, rows: int, cols: int) -> dict[str, tuple[tuple[int, int], str]]:
        """``{plane: ((rows, elements), dtype)}`` of a ``rows x cols`` weight."""
        n = self.blocks(cols)
        return {p.name: ((rows, n * p.size // np.dtype(p.dtype).itemsize), p.dtype) for p in self.planes}

    def split(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        """Raw block bytes ``[rows, blocks * block_bytes]`` (uint8) -> the planes (same bits)."""
        rows = raw.shape[0]
        blocks = np.ascontiguousarray(raw).reshape(rows, -1, self.block_bytes)
        out = {}
        for p in self.planes:
            field = np.ascontiguousarray(blocks[:, :, p.offset : p.offset + p.size])
            out[p.name] = field.view(np.dtype(p.dtype).newbyteorder("<")).reshape(rows, -1).astype(p.dtype)
        return out

    def join(self, planes: dict[str, np.ndarray]) -> np.ndarray:
        """Inverse of ``split``: the raw block bytes (tests, and decoding stored weights with gguf-py)."""
        first = planes[self.planes[0].name]
        rows = first.shape[0]
        n = first.shape[1] * first.itemsize // self.planes[0].size
        raw = np.empty((rows, n, self.block_bytes), np.uint8)
        for p in self.planes:
            raw[:, :, p.offset : p.offset + p.size] = (
                np.ascontiguousarray(planes[p.name]).view(np.uint8).reshape(rows, n, p.size)
            )
        return raw.reshape(rows, -1)

    def te_element(self, planes: dict, row, k):
        """Weight ``[row, k]`` as a float32 TIR expression over the plane tensors."""
        return _DECODERS[self.name](planes, row, k, self)


# ---------------------------------------------------------------------- TIR helpers
def _u32(value: int):
    return tirx.const(value, "uint32")


def _f32(value: float):
    return tirx.const(value, "float32")


def _byte(plane, row, index):
    """Byte ``index`` of a row of a uint32 plane (little-endian), as uint32."""
    word = plane[row, index // 4]
    return tirx.bitwise_and(tirx.shift_right(word, (index % 4 * 8).astype("uint32")), _u32(0xFF))


def _bits(value, shift, mask: int):
    """``(value >> shift) & mask`` on uint32 (``shift``: int or index expression)."""
    shift = _u32(shift) if isinstance(shift, int) else shift.astype("uint32")
    return tirx.bitwise_and(tirx.shift_right(value, shift), _u32(mask))


def _half(plane, row, index):
    return plane[row, index].astype("float32")


def _signed_byte(byte):
    """A uint32 holding a byte -> its int8 value as float32."""
    return byte.astype("int32").astype("float32") - tirx.Select(byte >= _u32(128), _f32(256.0), _f32(0.0))


# ---------------------------------------------------------------------- decoders (gguf-py's arithmetic)
def _q4_0(p, row, k, f):
    b, j = k // 32, k % 32
    q = _bits(_byte(p["qs"], row, b * 16 + j % 16), j // 16 * 4, 0xF)
    return _half(p["d"], row, b) * (q.astype("int32") - 8).astype("float32")


def _q4_1(p, row, k, f):
    b, j = k // 32, k % 32
    q = _bits(_byte(p["qs"], row, b * 16 + j % 16), j // 16 * 4, 0xF)
    return _half(p["d"], row, b) * q.astype("float32") + _half(p["m"], row, b)


def _q5_code(p, row, k):
    b, j = k // 32, k % 32
    low = _bits(_byte(p["qs"], row, b * 16 + j % 16), j // 16 * 4, 0xF)
    high = _bits(p["qh"][row, b], j, 1)
    return b, tirx.bitwise_or(low, tirx.shift_left(high, _u32(4)))


def _q5_0(p, row, k, f):
    b, q = _q5_code(p, row, k)
    return _half(p["d"], row, b) * (q.astype("int32") - 16).astype("float32")


def _q5_1(p, row, k, f):
    b, q = _q5_code(p, row, k)
    return _half(p["d"], row, b) * q.astype("float32") + _half(p["m"], row, b)


def _q8_0(p, row, k, f):
    b, j = k // 32, k % 32
    return _signed_byte(_byte(p["qs"], row, b * 32 + j)) * _half(p["d"], row, b)


def _k_scale_min(p, row, b, s):
    """Q4_K/Q5_K: the 6-bit scale and min of sub-block ``s`` (0..7) of block ``b``, as float32."""

    def byte(i):
        return _byte(p["scales"], row, b * 12 + i)

    low = s < 4
    i = s % 4  # byte i (s < 4) or byte i of the high half (s >= 4)
    sc = tirx.Select(
        low,
        tirx.bitwise_and(byte(i), _u32(0x3F)),
        tirx.bitwise_or(
            tirx.bitwise_and(byte(8 + i), _u32(0xF)), tirx.bitwise_and(_bits(byte(i), 2, 0xFF), _u32(0x30))
        ),
    )
    mn = tirx.Select(
        low,
        tirx.bitwise_and(byte(4 + i), _u32(0x3F)),
        tirx.bitwise_or(_bits(byte(8 + i), 4, 0xF), tirx.bitwise_and(_bits(byte(4 + i), 2, 0xFF), _u32(0x30))),
    )
    return sc.astype("float32"), mn.astype("float32")


def _q4_k(p, row, k, f):
    b, j = k // 256, k % 256
    s, lane = j // 32, j % 32
    q = _bits(_byte(p["qs"], row, b * 128 + s // 2 * 32 + lane), s % 2 * 4, 0xF)
    sc, mn = _k_scale_min(p, row, b, s)
    d = _half(p["d"], row, b) * sc
    dm = _half(p["dmin"], row, b) * mn
    return d * q.astype("float32") - dm


def _q5_k(p, row, k, f):
    b, j = k // 256, k % 256
    s, lane = j // 32, j % 32
    low = _bits(_byte(p["qs"], row, b * 128 + s // 2 * 32 + lane), s % 2 * 4, 0xF)
    high = _bits(_byte(p["qh"], row, b * 32 + lane), s, 1)
    q = tirx.bitwise_or(low, tirx.shift_left(high, _u32(4)))
    sc, mn = _k_scale_min(p, row, b, s)
    d = _half(p["d"], row, b) * sc
    dm = _half(p["dmin"], row, b) * mn
    return d * q.astype("float32") - dm


def _q6_k(p, row, k, f):
    b, j = k // 256, k % 256
    half, r = j // 128, j % 128
    low = _bits(_byte(p["ql"], row, b * 128 + half * 64 + r % 64), r // 64 * 4, 0xF)
    high = _bits(_byte(p["qh"], row, b * 64 + half * 32 + r % 32), r // 32 * 2, 0x3)
    q = tirx.bitwise_or(low, tirx.shift_left(high, _u32(4))).astype("int32") - 32
    scale = _signed_byte(_byte(p["scales"], row, b * 16 + j // 16))
    return (_half(p["d"], row, b) * scale) * q.astype("float32")


def _f32_plain(p, row, k, f):
    return p["w"][row, k]


def _f16(p, row, k, f):
    return p["w"][row, k].astype("float32")


def _bf16(p, row, k, f):
    bits = tirx.shift_left(p["w"][row, k].astype("uint32"), _u32(16))
    return tirx.reinterpret("float32", bits)


_DECODERS = {
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q5_0": _q5_0,
    "Q5_1": _q5_1,
    "Q8_0": _q8_0,
    "Q4_K": _q4_k,
    "Q5_K": _q5_k,
    "Q6_K": _q6_k,
    "F32": _f32_plain,
    "F16": _f16,
    "BF16": _bf16,
}

_D, _M = Plane("d", 0, 2, "float16"), Plane("m", 2, 2, "float16")
FORMATS: dict[str, GGMLFormat] = {
    "Q4_0": GGMLFormat("Q4_0", 32, 18, (_D, Plane("qs", 2, 16, "uint32"))),
    "Q4_1": GGMLFormat("Q4_1", 32, 20, (_D, _M, Plane("qs", 4, 16, "uint32"))),
    "Q5_0": GGMLFormat("Q5_0", 32, 22, (_D, Plane("qh", 2, 4, "uint32"), Plane("qs", 6, 16, "uint32"))),
    "Q5_1": GGMLFormat("Q5_1", 32, 24, (_D, _M, Plane("qh", 4, 4, "uint32"), Plane("qs", 8, 16, "uint32"))),
    "Q8_0": GGMLFormat("Q8_0", 32, 34, (_D, Plane("qs", 2, 32, "uint32"))),
    "Q4_K": GGMLFormat(
        "Q4_K",
        256,
        144,
        (_D, Plane("dmin", 2, 2, "float16"), Plane("scales", 4, 12, "uint32"), Plane("qs", 16, 128, "uint32")),
    ),
    "Q5_K": GGMLFormat(
        "Q5_K",
        256,
        176,
        (
            _D,
            Plane("dmin", 2, 2, "float16"),
            Plane("scales", 4, 12, "uint32"),
            Plane("qh", 16, 32, "uint32"),
            Plane("qs", 48, 128, "uint32"),
        ),
    ),
    "Q6_K": GGMLFormat(
        "Q6_K",
        256,
        210,
        (
            Plane("ql", 0, 128, "uint32"),
            Plane("qh", 128, 64, "uint32"),
            Plane("scales", 192, 16, "uint32"),
            Plane("d", 208, 2, "float16"),
        ),
    ),
    "F32": GGMLFormat("F32", 1, 4, (Plane("w", 0, 4, "float32"),)),
    "F16": GGMLFormat("F16", 1, 2, (Plane("w", 0, 2, "float16"),)),
    "BF16": GGMLFormat("BF16", 1, 2, (Plane("w", 0, 2, "uint16"),)),
}


def get_format(name: str, tensor: str, path) -> GGMLFormat:
    """The format of ``tensor`` (GGML type ``name``), or a CheckpointError naming both."""
    if name not in FORMATS:
        raise CheckpointError(
            f"{path}: tensor {tensor} is stored as {name}, which --quant keep does not support "
            f"(supported: {', '.join(FORMATS)}); compile with --quant q0f32 or q4f16_1 "
            "to dequantize it instead."
        )
    return FORMATS[name]
