"""The CPU integer path of the group schemes: which ISA a target has, and the repacked weight layout.

On x86 CPUs llmc multiplies group-quantized weights in integers, as llama.cpp does: each matmul
first quantizes its activation rows to int8 per group of 32 (one float scale per group), then the
kernel (``llmc.quant.int_dot_kernels``) takes int8 x weight-code dot products with ``vpdpbusd``
(AVX512-VNNI, AVX-VNNI) or ``vpmaddubsw`` + ``vpmaddwd`` (AVX2) and applies the two scales once per
group. The weights are repacked at compile time into the layout those instructions want:

* rows are cut into tiles of ``TILE_ROWS`` (16, zero-padded); a tile stores, per group of 32 and
  per step ``p``, one 64-byte vector whose bytes ``4*r .. 4*r+3`` hold four consecutive codes of row
  ``r`` (one dword lane per row, the operand of one ``vpdpbusd``);
* 4-bit codes: 4 steps per group, the low nibbles hold k = ``4p .. 4p+3``, the high nibbles
  k = ``16+4p .. 16+4p+3``; 8-bit codes: 8 steps, k = ``4p .. 4p+3``;
* codes stay unsigned (``0 .. 2**bits - 1``); the kernel subtracts ``offset * sum(x_q)`` per group
  instead of re-centring every code;
* scales become ``[tiles, groups, 16]`` in the scheme's scale dtype (fp16 scales are widened in the
  kernel: half the scale bytes of a float32 copy, and decode reads every weight byte once per token).

GGML formats (``llmc.quant.ggml_layers``) reuse the layout with a ``Form``: 5- and 6-bit codes keep
their low nibbles in the 4-bit steps and their top 1 or 2 bits in ``high_bits`` extra vectors per
group (``repack_codes``); K-quants keep their integer sub-block scales (uint8 scale + minimum per 32
for Q4_K/Q5_K, two int8 scales per 32 for Q6_K's sub-blocks of 16) and the fp16 super-block scales
per 256 (``d``, ``dmin``), multiplied in the kernel, so nothing is re-quantized.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

TILE_ROWS = 16
GROUP = 32  # the activation quantization group; the weight group must equal it
VECTOR_BYTES = 64  # one tile step: 16 rows x 4 codes
ISAS = ("avx512vnni", "avxvnni", "avx2")  # best first
SUPER_GROUPS = 8  # K-quant super-block: 256 weights = 8 activation groups
SCALE_MODES = ("group", "group_min", "super_min", "super16")


class CodeLayout(Protocol):
    """What this module reads of a group scheme's layout (``llmc.quant.group.GroupQuant`` has it); a
    protocol, so that this module stays a leaf of the package's imports."""

    @property
    def bits(self) -> int: ...

    @property
    def group_size(self) -> int: ...

    @property
    def per_word(self) -> int: ...

    @property
    def offset(self) -> int: ...

    def num_groups(self, in_features: int) -> int: ...


@dataclass(frozen=True)
class Form:
    """What one integer kernel computes per group of 32 weights of a row (``w`` the decoded weight):

    * ``group``: ``w = s * (code - offset)``, one float scale per group (q4f16_1, Q4_0, Q5_0, Q8_0);
    * ``group_min``: ``w = s * code + m``, a float scale and minimum per group (Q4_1, Q5_1);
    * ``super_min``: ``w = (d * sc) * code - dmin * mn``: uint8 ``sc``, ``mn`` per group, fp16 ``d``,
      ``dmin`` per 256 (Q4_K, Q5_K);
    * ``super16``: ``w = (d * sc) * (code - offset)``: an int8 ``sc`` per 16 weights, fp16 ``d`` per 256
      (Q6_K).

    Codes are ``bits``-bit (4: nibbles, 8: bytes) plus ``high_bits`` (1, 2) above a nibble.
    """

    bits: int
    scale_dtype: str = "float16"
    scales: str = "group"
    high_bits: int = 0
    offset: int | None = None  # default: the middle code (``group``, ``super16``), 0 with a minimum

    def __post_init__(self):
        if self.scales not in SCALE_MODES or self.bits not in (4, 8) or (self.high_bits and self.bits != 4):
            raise ValueError(f"int_dot.Form: unsupported {self}")

    @property
    def with_min(self) -> bool:
        return self.scales in ("group_min", "super_min")

    @property
    def code_offset(self) -> int:
        if self.offset is not None:
            return self.offset
        return 0 if self.with_min else 1 << (self.bits + self.high_bits - 1)

    @property
    def steps(self) -> int:
        """64-byte vectors per tile and group: the code steps, then the high-bit vectors."""
        return steps_per_group(self.bits) + self.high_bits

    def scale_shapes(self, out_features: int, in_features: int) -> list[tuple[tuple, str]]:
        """(shape, dtype) of the kernel's scale inputs after the codes."""
        tiles, groups = tile_count(out_features), -(-in_features // GROUP)
        if self.scales == "group":
            return [((tiles, groups, TILE_ROWS), self.scale_dtype)]
        if self.scales == "group_min":
            return [((tiles, groups, TILE_ROWS), self.scale_dtype)] * 2
        supers = -(-groups // SUPER_GROUPS)
        sub_dtype, per_super = ("uint8", 2) if self.scales == "super_min" else ("int8", 1)
        return [((tiles, groups, 2, TILE_ROWS), sub_dtype), ((tiles, supers, per_super, TILE_ROWS), "float16")]


def supports(gq: CodeLayout) -> bool:
    """Whether a group scheme has an integer kernel (4- and 8-bit codes in groups of 32)."""
    return gq.bits in (4, 8) and gq.group_size == GROUP


def target_isa(target) -> str | None:
    """The best integer-dot instruction set of an LLVM x86 target, or None (no integer path)."""
    from tvm.target import codegen

    from llmc.compiler.cpu import is_x86_cpu_target

    if not is_x86_cpu_target(target):  # a target without mtriple is the host's: x86 or not, as the host is
        return None
    features = {
        "avx512vnni": ("avx512vnni", "avx512bw", "avx512f"),
        "avxvnni": ("avxvnni", "avx2"),
        "avx2": ("avx2",),
    }
    for isa in ISAS:
        if all(codegen.target_has_features(feature, target) for feature in features[isa]):
            return isa
    return None


def steps_per_group(bits: int) -> int:
    return GROUP // 4 // (8 // bits)


def tile_count(out_features: int) -> int:
    return -(-out_features // TILE_ROWS)


def layout_shapes(gq: CodeLayout, out_features: int, in_features: int) -> tuple[tuple, tuple]:
    """Shapes of the repacked codes (uint8) and scales (the scheme's scale dtype)."""
    tiles, groups = tile_count(out_features), gq.num_groups(in_features)
    return (tiles, groups, steps_per_group(gq.bits), VECTOR_BYTES), (tiles, groups, TILE_ROWS)


def unpack_codes(gq: CodeLayout, packed: np.ndarray) -> np.ndarray:
    """Standard packed uint32 words ``[out, words]`` -> one uint8 code per weight ``[out, groups*32]``."""
    shifts = (np.arange(gq.per_word, dtype=np.uint32) * gq.bits)[None, None, :]
    codes = (packed[..., None] >> shifts) & np.uint32((1 << gq.bits) - 1)
    return codes.reshape(packed.shape[0], -1).astype(np.uint8)


def repack(gq: CodeLayout, packed: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The standard layout (``GroupQuant.quantize``) -> the integer kernels' layout (same codes and scales)."""
    return repack_codes(unpack_codes(gq, packed), gq.bits), repack_scales(scale)


def high_bit_position(half: int, p: int, high_bits: int) -> tuple[int, int]:
    """(extra vector, bit) holding the top bits of the codes at ``k = 16*half + 4*p + b`` of a group."""
    index = (half * 4 + p) * high_bits
    return index // 8, index % 8


def repack_codes(codes: np.ndarray, bits: int, high_bits: int = 0) -> np.ndarray:
    """One code per weight ``[out, groups*32]`` (uint8) -> ``[tiles, groups, steps + high_bits, 64]``."""
    out_features, width = codes.shape
    groups, tiles = width // GROUP, tile_count(out_features)
    padded = np.zeros((tiles * TILE_ROWS, width), dtype=np.uint8)
    padded[:out_features] = codes
    steps = steps_per_group(bits)
    if bits == 4:  # k = half*16 + p*4 + b; byte (p, r*4+b) = code(half 0) | code(half 1) << 4
        c = padded.reshape(tiles, TILE_ROWS, groups, 2, steps, 4).transpose(0, 2, 4, 1, 5, 3)  # t g p r b half
        vectors = (c[..., 0] & 15) | ((c[..., 1] & 15) << 4)
    else:  # k = p*4 + b
        vectors = padded.reshape(tiles, TILE_ROWS, groups, steps, 4).transpose(0, 2, 3, 1, 4)
    out = np.zeros((tiles, groups, steps + high_bits, VECTOR_BYTES), np.uint8)
    out[:, :, :steps] = vectors.reshape(tiles, groups, steps, VECTOR_BYTES)
    if high_bits:
        top = (c >> 4) & np.uint8((1 << high_bits) - 1)
        for half in range(2):
            for p in range(steps):
                vector, bit = high_bit_position(half, p, high_bits)
                out[:, :, steps + vector] |= (top[:, :, p, :, :, half] << bit).reshape(tiles, groups, VECTOR_BYTES)
    return out


def repack_scales(scale: np.ndarray) -> np.ndarray:
    """Per-row values ``[out_features, groups, ...]`` -> the kernels' ``[tiles, groups, ..., 16]`` layout."""
    out_features = scale.shape[0]
    tiles = tile_count(out_features)
    padded = np.zeros((tiles * TILE_ROWS, *scale.shape[1:]), dtype=scale.dtype)
    padded[:out_features] = scale
    tiled = padded.reshape(tiles, TILE_ROWS, *scale.shape[1:])
    return np.ascontiguousarray(np.moveaxis(tiled, 1, -1))


def unrepack_codes(codes: np.ndarray, bits: int, high_bits: int, out_features: int) -> np.ndarray:
    """Inverse of ``repack_codes``: one code per weight ``[out, groups*32]``."""
    tiles, groups, _, _ = codes.shape
    steps = steps_per_group(bits)
    v = codes[:, :, :steps].reshape(tiles, groups, steps, TILE_ROWS, 4)
    if bits == 4:
        halves = np.stack([v & 15, v >> 4], axis=-1)  # tile, g, p, r, b, half
        for half in range(2):
            for p in range(steps if high_bits else 0):
                vector, bit = high_bit_position(half, p, high_bits)
                extra = codes[:, :, steps + vector].reshape(tiles, groups, TILE_ROWS, 4)
                halves[:, :, p, :, :, half] |= ((extra >> bit) & ((1 << high_bits) - 1)) << 4
        c = halves.transpose(0, 3, 1, 5, 2, 4)  # tile, r, g, half, p, b
    else:
        c = v.transpose(0, 3, 1, 2, 4)
    return c.reshape(tiles * TILE_ROWS, groups * GROUP)[:out_features]


def unrepack(gq: CodeLayout, codes: np.ndarray, scales: np.ndarray, out_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``repack``: codes ``[out, groups*32]`` (uint8) and scales ``[out, groups]``."""
    tiles, groups = codes.shape[:2]
    flat = unrepack_codes(codes, gq.bits, 0, out_features)
    return flat, scales.transpose(0, 2, 1).reshape(tiles * TILE_ROWS, groups)[:out_features]


def te_element(gq: CodeLayout, codes, scales, row, k):
    """The dequantized float32 weight at ``[row, k]`` of the repacked layout, as a TIR expression."""
    from tvm import tirx

    tile, r, g, kk = row // TILE_ROWS, row % TILE_ROWS, k // GROUP, k % GROUP
    if gq.bits == 4:
        byte = codes[tile, g, kk % 16 // 4, r * 4 + kk % 4]
        code = tirx.bitwise_and(tirx.shift_right(byte, (kk // 16 * 4).astype("uint8")), tirx.const(15, "uint8"))
    else:
        byte = codes[tile, g, kk // 4, r * 4 + kk % 4]
        code = byte
    return (code.astype("float32") - tirx.const(gq.offset, "float32")) * scales[tile, g, r].astype("float32")


def form_element(form: Form, codes, first, second, row, k):
    """The weight at ``[row, k]`` of a ``Form``'s repacked arrays (codes, then its scale inputs) as a float32
    TIR expression, in the order of gguf-py's dequantization (bit-exact for the GGML formats)."""
    from tvm import tirx

    def u8(value):
        return tirx.const(value, "uint8") if isinstance(value, int) else value.astype("uint8")

    def f32(value):
        return value.astype("float32")

    tile, r, g, kk = row // TILE_ROWS, row % TILE_ROWS, k // GROUP, k % GROUP
    lane = r * 4 + kk % 4
    if form.bits == 4:
        half, p = kk // 16, kk % 16 // 4
        code = tirx.bitwise_and(tirx.shift_right(codes[tile, g, p, lane], u8(half * 4)), u8(15))
        if form.high_bits:
            index = (half * 4 + p) * form.high_bits  # see high_bit_position
            extra = codes[tile, g, steps_per_group(4) + index // 8, lane]
            top = tirx.bitwise_and(tirx.shift_right(extra, u8(index % 8)), u8((1 << form.high_bits) - 1))
            code = tirx.bitwise_or(code, tirx.shift_left(top, u8(4)))
    else:
        code = codes[tile, g, kk // 4, lane]
    q = f32(code)
    if form.scales == "group":
        return f32(first[tile, g, r]) * (q - tirx.const(form.code_offset, "float32"))
    if form.scales == "group_min":
        return f32(first[tile, g, r]) * q + f32(second[tile, g, r])
    s = g // SUPER_GROUPS
    if form.scales == "super_min":
        scale = f32(second[tile, s, 0, r]) * f32(first[tile, g, 0, r])
        return scale * q - f32(second[tile, s, 1, r]) * f32(first[tile, g, 1, r])
    scale = f32(second[tile, s, 0, r]) * f32(first[tile, g, kk // 16, r])
    return scale * (q - tirx.const(form.code_offset, "float32"))
