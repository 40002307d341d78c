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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from llmc.quant.group import GroupQuant

TILE_ROWS = 16
GROUP = 32  # the activation quantization group; the weight group must equal it
VECTOR_BYTES = 64  # one tile step: 16 rows x 4 codes
ISAS = ("avx512vnni", "avxvnni", "avx2")  # best first


def supports(gq: GroupQuant) -> bool:
    """Whether a group scheme has an integer kernel (4- and 8-bit codes in groups of 32)."""
    return gq.bits in (4, 8) and gq.group_size == GROUP


def target_isa(target) -> str | None:
    """The best integer-dot instruction set of an LLVM x86 target, or None (no integer path)."""
    from tvm.target import codegen

    if target.kind.name != "llvm" or not str(target.attrs.get("mtriple", "x86_64")).startswith("x86_64"):
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


def layout_shapes(gq: GroupQuant, out_features: int, in_features: int) -> tuple[tuple, tuple]:
    """Shapes of the repacked codes (uint8) and scales (the scheme's scale dtype)."""
    tiles, groups = tile_count(out_features), gq.num_groups(in_features)
    return (tiles, groups, steps_per_group(gq.bits), VECTOR_BYTES), (tiles, groups, TILE_ROWS)


def unpack_codes(gq: GroupQuant, packed: np.ndarray) -> np.ndarray:
    """Standard packed uint32 words ``[out, words]`` -> one uint8 code per weight ``[out, groups*32]``."""
    shifts = (np.arange(gq.per_word, dtype=np.uint32) * gq.bits)[None, None, :]
    codes = (packed[..., None] >> shifts) & np.uint32((1 << gq.bits) - 1)
    return codes.reshape(packed.shape[0], -1).astype(np.uint8)


def repack(gq: GroupQuant, packed: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The standard layout (``GroupQuant.quantize``) -> the integer kernels' layout (same codes and scales)."""
    codes = unpack_codes(gq, packed)
    out_features, width = codes.shape
    groups, tiles = width // GROUP, tile_count(out_features)
    padded = np.zeros((tiles * TILE_ROWS, width), dtype=np.uint8)
    padded[:out_features] = codes
    scales = np.zeros((tiles * TILE_ROWS, groups), dtype=scale.dtype)
    scales[:out_features] = scale
    steps = steps_per_group(gq.bits)
    if gq.bits == 4:  # k = half*16 + p*4 + b; byte (p, r*4+b) = code(half 0) | code(half 1) << 4
        c = padded.reshape(tiles, TILE_ROWS, groups, 2, steps, 4).transpose(0, 2, 4, 1, 5, 3)
        vectors = c[..., 0] | (c[..., 1] << 4)
    else:  # k = p*4 + b
        vectors = padded.reshape(tiles, TILE_ROWS, groups, steps, 4).transpose(0, 2, 3, 1, 4)
    codes_out = np.ascontiguousarray(vectors.reshape(tiles, groups, steps, VECTOR_BYTES))
    scales_out = np.ascontiguousarray(scales.reshape(tiles, TILE_ROWS, groups).transpose(0, 2, 1))
    return codes_out, scales_out


def repack_scales(scale: np.ndarray) -> np.ndarray:
    """Per-row, per-group values ``[out_features, groups]`` -> the kernels' ``[tiles, groups, 16]`` layout."""
    out_features, groups = scale.shape
    tiles = tile_count(out_features)
    padded = np.zeros((tiles * TILE_ROWS, groups), dtype=scale.dtype)
    padded[:out_features] = scale
    return np.ascontiguousarray(padded.reshape(tiles, TILE_ROWS, groups).transpose(0, 2, 1))


def unrepack(gq: GroupQuant, codes: np.ndarray, scales: np.ndarray, out_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``repack``: codes ``[out, groups*32]`` (uint8) and scales ``[out, groups]``."""
    tiles, groups, steps, _ = codes.shape
    if gq.bits == 4:
        v = codes.reshape(tiles, groups, steps, TILE_ROWS, 4)
        halves = np.stack([v & 15, v >> 4], axis=-1)  # tile, g, p, r, b, half
        c = halves.transpose(0, 3, 1, 5, 2, 4)  # tile, r, g, half, p, b
    else:
        c = codes.reshape(tiles, groups, steps, TILE_ROWS, 4).transpose(0, 3, 1, 2, 4)
    flat = c.reshape(tiles * TILE_ROWS, groups * GROUP)[:out_features]
    return flat, scales.transpose(0, 2, 1).reshape(tiles * TILE_ROWS, groups)[:out_features]


def te_element(gq: GroupQuant, codes, scales, row, k):
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
