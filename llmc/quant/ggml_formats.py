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
MXFP4  32     17     e u8 (e8m0 exponent), qs[16] (e2m1 codes, nibbles as Q4_0)
=====  =====  =====  ==================================================================

MXFP4 (llama.cpp's type for gpt-oss's experts): weight ``j`` is ``kvalues[code] * 2 ** (e - 128)``, the e2m1
value doubled (``0, 1, 2, 3, 4, 6, 8, 12`` and their negatives) times half the block's e8m0 scale, as ggml's
``ggml_e8m0_to_fp32_half`` (``e < 2``: a subnormal). Its one-byte exponent field is a plane of ``uint32`` words
holding four blocks' exponents each (WGSL has no 8-bit storage type; a row's last word is completed with zero
bytes: gpt-oss's 90 blocks per row take 92 bytes), the codes weight-order words as the other 4-bit types.
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
    order: CodeOrder | None = None  # packed codes: stored in weight order instead of the file's

    def elements(self, blocks: int) -> int:
        """Elements of ``dtype`` per row of ``blocks`` blocks: a field narrower than ``dtype`` (MXFP4's exponent
        byte in ``uint32`` words) is packed across blocks, the row's last word completed with zero bytes."""
        return -(-blocks * self.size // np.dtype(self.dtype).itemsize)


@dataclass(frozen=True)
class CodeOrder:
    """Where the file puts the ``bits``-bit code of weight ``j`` of a block: byte ``byte(j)``, bit ``shift(j)``.

    llmc stores such a field in weight order instead (code ``j`` at bits ``bits*(j % per_word)`` of word
    ``j // per_word``): the same bits, moved, so a kernel reads weight ``k`` from word ``k // per_word``
    (one contiguous read stream, which dlight's GPU rules need and CPU loops vectorize).
    """

    bits: int
    codes: int  # codes per block
    byte: object  # j -> byte index in the field
    shift: object  # j -> bit shift in that byte

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        j = np.arange(self.codes)
        return np.asarray(self.byte(j)), np.asarray(self.shift(j)).astype(np.uint8)

    def to_linear(self, field: np.ndarray) -> np.ndarray:
        """File bytes ``[rows, blocks, size]`` -> words ``[rows, blocks * codes * bits / 32]`` in weight order."""
        byte, shift = self._index()
        codes = (field[..., byte] >> shift) & np.uint8((1 << self.bits) - 1)
        per_word = 32 // self.bits
        codes = codes.reshape(field.shape[0], -1, per_word).astype(np.uint32)
        shifts = (np.arange(per_word, dtype=np.uint32) * self.bits)[None, None, :]
        return np.bitwise_or.reduce(codes << shifts, axis=-1).astype(np.uint32)

    def to_file(self, words: np.ndarray, size: int) -> np.ndarray:
        """Inverse of ``to_linear``: the file's bytes ``[rows, blocks, size]``."""
        per_word = 32 // self.bits
        shifts = (np.arange(per_word, dtype=np.uint32) * self.bits)[None, None, :]
        codes = ((words[..., None] >> shifts) & np.uint32((1 << self.bits) - 1)).astype(np.uint8)
        codes = codes.reshape(words.shape[0], -1, self.codes)
        byte, shift = self._index()
        out = np.zeros((*codes.shape[:2], size), np.uint8)
        for value in np.unique(shift):  # codes sharing a shift land in distinct bytes
            chosen = shift == value
            out[..., byte[chosen]] |= codes[..., chosen] << value
        return out


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
        return {p.name: ((rows, p.elements(n)), p.dtype) for p in self.planes}

    def split(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        """Raw block bytes ``[rows, blocks * block_bytes]`` (uint8) -> the planes (same bits)."""
        rows = raw.shape[0]
        blocks = np.ascontiguousarray(raw).reshape(rows, -1, self.block_bytes)
        out = {}
        for p in self.planes:
            field = np.ascontiguousarray(blocks[:, :, p.offset : p.offset + p.size])
            if p.order is not None:
                out[p.name] = p.order.to_linear(field)
            else:
                data = field.reshape(rows, -1)
                width = p.elements(blocks.shape[1]) * np.dtype(p.dtype).itemsize
                if width > data.shape[1]:  # a row's bytes end inside a word: zero bytes complete it
                    data = np.pad(data, ((0, 0), (0, width - data.shape[1])))
                out[p.name] = data.view(np.dtype(p.dtype).newbyteorder("<")).astype(p.dtype)
        return out

    def join(self, planes: dict[str, np.ndarray]) -> np.ndarray:
        """Inverse of ``split``: the raw block bytes (tests, and decoding stored weights with gguf-py)."""
        whole = next(p for p in self.planes if p.size % np.dtype(p.dtype).itemsize == 0)  # a plane with no padding
        first = planes[whole.name]
        rows = first.shape[0]
        n = first.shape[1] * first.itemsize // whole.size
        raw = np.empty((rows, n, self.block_bytes), np.uint8)
        for p in self.planes:
            if p.order is not None:
                raw[:, :, p.offset : p.offset + p.size] = p.order.to_file(np.asarray(planes[p.name]), p.size)
            else:
                data = np.ascontiguousarray(planes[p.name]).view(np.uint8).reshape(rows, -1)
                raw[:, :, p.offset : p.offset + p.size] = data[:, : n * p.size].reshape(rows, n, p.size)
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


def _code(plane, row, k, bits: int):
    """Code ``k`` of a row of a weight-order plane (``CodeOrder``), as uint32."""
    per_word = 32 // bits
    return _bits(plane[row, k // per_word], k % per_word * bits, (1 << bits) - 1)


def _half(plane, row, index):
    return plane[row, index].astype("float32")


def _signed_byte(byte):
    """A uint32 holding a byte -> its int8 value as float32."""
    return byte.astype("int32").astype("float32") - tirx.Select(byte >= _u32(128), _f32(256.0), _f32(0.0))


# ---------------------------------------------------------------------- decoders (gguf-py's arithmetic)
def _q4_0(p, row, k, f):
    q = _code(p["qs"], row, k, 4)
    return _half(p["d"], row, k // 32) * (q.astype("int32") - 8).astype("float32")


def _q4_1(p, row, k, f):
    b = k // 32
    return _half(p["d"], row, b) * _code(p["qs"], row, k, 4).astype("float32") + _half(p["m"], row, b)


def _q5_code(p, row, k):
    high = _code(p["qh"], row, k, 1)  # the file's qh word already holds bit j of weight j
    return k // 32, tirx.bitwise_or(_code(p["qs"], row, k, 4), tirx.shift_left(high, _u32(4)))


def _q5_0(p, row, k, f):
    b, q = _q5_code(p, row, k)
    return _half(p["d"], row, b) * (q.astype("int32") - 16).astype("float32")


def _q5_1(p, row, k, f):
    b, q = _q5_code(p, row, k)
    return _half(p["d"], row, b) * q.astype("float32") + _half(p["m"], row, b)


def _q8_0(p, row, k, f):
    return _signed_byte(_code(p["qs"], row, k, 8)) * _half(p["d"], row, k // 32)


def _k_scale_min(p, row, b, s):
    """Q4_K/Q5_K: the 6-bit scale and min of sub-block ``s`` (0..7) of block ``b``, as float32."""

    i = s % 4  # sub-block s < 4: byte i of words a (scale) and b (min); s >= 4: byte i of c, high bits of a/b
    byte_a, byte_b, byte_c = (_byte(p[f"scales_{w}"], row, b * 4 + i) for w in "abc")
    # without a branch (dlight's GPU rules reject a Select on the loop variable): h = s // 4 picks
    # low 6 bits (h = 0) or top 2 bits << 4 | a nibble of c (h = 1)
    h = (s // 4).astype("uint32")
    six, four = h * _u32(6), h * _u32(4)
    top = tirx.shift_right(_u32(63), four)  # 63, or 3 for the two high bits
    sc = tirx.bitwise_or(
        tirx.shift_left(tirx.bitwise_and(tirx.shift_right(byte_a, six), top), four),
        tirx.bitwise_and(byte_c, h * _u32(15)),
    )
    mn = tirx.bitwise_or(
        tirx.shift_left(tirx.bitwise_and(tirx.shift_right(byte_b, six), top), four),
        tirx.bitwise_and(tirx.shift_right(byte_c, _u32(4)), h * _u32(15)),
    )
    return sc.astype("float32"), mn.astype("float32")


def _k_quant(p, row, k, q):
    b, s = k // 256, k % 256 // 32
    sc, mn = _k_scale_min(p, row, b, s)
    d = _half(p["d"], row, b) * sc
    dm = _half(p["dmin"], row, b) * mn
    return d * q.astype("float32") - dm


def _q4_k(p, row, k, f):
    return _k_quant(p, row, k, _code(p["qs"], row, k, 4))


def _q5_k(p, row, k, f):
    high = _code(p["qh"], row, k, 1)
    return _k_quant(p, row, k, tirx.bitwise_or(_code(p["qs"], row, k, 4), tirx.shift_left(high, _u32(4))))


def _q6_k(p, row, k, f):
    b = k // 256
    low, high = _code(p["ql"], row, k, 4), _code(p["qh"], row, k, 2)
    q = tirx.bitwise_or(low, tirx.shift_left(high, _u32(4))).astype("int32") - 32
    scale = _signed_byte(_byte(p["scales"], row, k // 16))
    return (_half(p["d"], row, b) * scale) * q.astype("float32")


# e2m1 magnitudes doubled (0, 1, 2, 3, 4, 6, 8, 12), nibble m at bits 4m: a table in one word, read by a shift
_E2M1_DOUBLED = 0xC8643210
MXFP4_VALUES = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.int8)  # by code


def e8m0_half(e: np.ndarray) -> np.ndarray:
    """MXFP4 exponent bytes -> ``2 ** (e - 128)`` as float32 (ggml's ``ggml_e8m0_to_fp32_half``)."""
    e = np.asarray(e).astype(np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - np.uint32(1)) << np.uint32(23)).astype(np.uint32)
    return bits.view(np.float32)


def _mxfp4(p, row, k, f):
    q = _code(p["qs"], row, k, 4)
    magnitude = _bits(_u32(_E2M1_DOUBLED), tirx.bitwise_and(q, _u32(7)) * _u32(4), 0xF).astype("int32")
    sign = tirx.shift_right(q, _u32(3)).astype("int32")
    value = magnitude - magnitude * sign * 2  # an integer first: code 8 is +0.0, as gguf-py's int8 table
    e = _byte(p["e"], row, k // 32)
    half = tirx.Select(e < _u32(2), tirx.shift_left(_u32(0x00200000), e), tirx.shift_left(e - _u32(1), _u32(23)))
    return tirx.reinterpret("float32", half) * value.astype("float32")


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
    "MXFP4": _mxfp4,
    "F32": _f32_plain,
    "F16": _f16,
    "BF16": _bf16,
}

_D, _M = Plane("d", 0, 2, "float16"), Plane("m", 2, 2, "float16")
# the file's code orders (gguf-py's dequantize_blocks): Q4_x/Q5_x low nibbles hold weights 0..15, high
# nibbles 16..31; K-quants: 32-byte chunks, nibble (sub-block) by sub-block
_NIBBLES_32 = CodeOrder(4, 32, lambda j: j % 16, lambda j: j // 16 * 4)
_NIBBLES_K = CodeOrder(4, 256, lambda j: j // 64 * 32 + j % 32, lambda j: j % 64 // 32 * 4)
_BITS_K = CodeOrder(1, 256, lambda j: j % 32, lambda j: j // 32)
_Q6_LOW = CodeOrder(4, 256, lambda j: j // 128 * 64 + j % 64, lambda j: j % 128 // 64 * 4)
_Q6_HIGH = CodeOrder(2, 256, lambda j: j // 128 * 32 + j % 32, lambda j: j % 128 // 32 * 2)
# Q4_K/Q5_K's 12 scale bytes as three word planes: a kernel reads each plane at one place per weight
# (dlight's GPU analysis needs single-point reads of every buffer)
_K_SCALES = tuple(Plane(f"scales_{w}", 4 + 4 * n, 4, "uint32") for n, w in enumerate("abc"))
FORMATS: dict[str, GGMLFormat] = {
    "Q4_0": GGMLFormat("Q4_0", 32, 18, (_D, Plane("qs", 2, 16, "uint32", _NIBBLES_32))),
    "Q4_1": GGMLFormat("Q4_1", 32, 20, (_D, _M, Plane("qs", 4, 16, "uint32", _NIBBLES_32))),
    "Q5_0": GGMLFormat("Q5_0", 32, 22, (_D, Plane("qh", 2, 4, "uint32"), Plane("qs", 6, 16, "uint32", _NIBBLES_32))),
    "Q5_1": GGMLFormat(
        "Q5_1", 32, 24, (_D, _M, Plane("qh", 4, 4, "uint32"), Plane("qs", 8, 16, "uint32", _NIBBLES_32))
    ),
    "Q8_0": GGMLFormat("Q8_0", 32, 34, (_D, Plane("qs", 2, 32, "uint32"))),
    "Q4_K": GGMLFormat(
        "Q4_K",
        256,
        144,
        (_D, Plane("dmin", 2, 2, "float16"), *_K_SCALES, Plane("qs", 16, 128, "uint32", _NIBBLES_K)),
    ),
    "Q5_K": GGMLFormat(
        "Q5_K",
        256,
        176,
        (
            _D,
            Plane("dmin", 2, 2, "float16"),
            *_K_SCALES,
            Plane("qh", 16, 32, "uint32", _BITS_K),
            Plane("qs", 48, 128, "uint32", _NIBBLES_K),
        ),
    ),
    "Q6_K": GGMLFormat(
        "Q6_K",
        256,
        210,
        (
            Plane("ql", 0, 128, "uint32", _Q6_LOW),
            Plane("qh", 128, 64, "uint32", _Q6_HIGH),
            Plane("scales", 192, 16, "uint32"),
            Plane("d", 208, 2, "float16"),
        ),
    ),
    "MXFP4": GGMLFormat("MXFP4", 32, 17, (Plane("e", 0, 1, "uint32"), Plane("qs", 1, 16, "uint32", _NIBBLES_32))),
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
