"""Symmetric group quantization: one definition drives the model rewrite and the weight conversion.

A weight ``W[out, in]`` is cut into groups of ``group_size`` along ``in``. Each group stores one
signed scale ``s`` and integers ``q`` in ``[0, 2**bits)``, decoded as ``(q - 2**(bits-1)) * s``:
symmetric (no zero point), using every level (int4: -8..7). ``s`` is the smallest magnitude, of
either sign, that puts every ``w / s`` in ``[-2**(bits-1) - 1/2, 2**(bits-1) - 1/2]``, so each
value is within half a step of its decoded value (``|w - w'| <= |s| / 2``); with two signs to
choose from, the step is at most ``absmax / (2**(bits-1) - 1/2)`` (int4: absmax / 7.5, not / 7).
``32 // bits`` integers are packed per uint32, element ``i`` of a word at bits ``[bits*i, bits*(i+1))``.
``in`` is zero-padded up to a multiple of ``group_size`` (zeros decode exactly); kernels never
read the padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from llmc.quant import int_dot
from llmc.quant.int_dot_kernels import int_matmul

PER_WORD_ATTR = "llmc.codes_per_word"


@dataclass(frozen=True)
class GroupQuant:
    """Bit layout of one group-quantized scheme."""

    bits: int
    group_size: int
    scale_dtype: str  # also the compute dtype
    search: bool = False  # scales by error search (llmc.quant.search), not by range

    @property
    def per_word(self) -> int:
        return 32 // self.bits

    @property
    def offset(self) -> int:
        """The stored integer that decodes to zero."""
        return 2 ** (self.bits - 1)

    @property
    def levels(self) -> int:
        return 2**self.bits

    @property
    def words_per_group(self) -> int:
        return self.group_size // self.per_word

    def __post_init__(self):
        if self.group_size % self.per_word:
            raise ValueError(f"group size {self.group_size} must be a multiple of {self.per_word}")

    def num_groups(self, in_features: int) -> int:
        return -(-in_features // self.group_size)

    def packed_shapes(self, out_features: int, in_features: int) -> tuple[tuple[int, int], tuple[int, int]]:
        groups = self.num_groups(in_features)
        return (out_features, groups * self.words_per_group), (out_features, groups)

    # ------------------------------------------------------------------ numpy (weight conversion)
    def quantize(self, weight: np.ndarray, rows_per_chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
        """``W[out, in]`` -> (packed uint32 ``[out, words]``, scales ``[out, groups]``), a row chunk at a time."""
        weight_shape, scale_shape = self.packed_shapes(*weight.shape)
        packed = np.empty(weight_shape, dtype=np.uint32)
        scale = np.empty(scale_shape, dtype=self.scale_dtype)
        for start in range(0, weight.shape[0], rows_per_chunk):
            rows = slice(start, start + rows_per_chunk)
            packed[rows], scale[rows] = self._quantize_rows(weight[rows])
        return packed, scale

    def _quantize_rows(self, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out_features, in_features = weight.shape
        groups = self.num_groups(in_features)
        w = np.zeros((out_features, groups * self.group_size), dtype=np.float32)
        w[:, :in_features] = weight
        w = w.reshape(out_features, groups, self.group_size)
        scale = self.search_scales(w) if self.search else self.choose_scales(w)
        q = np.rint(w / scale.astype(np.float32)[..., None]) + self.offset
        q = np.clip(q, 0, self.levels - 1).astype(np.uint32)
        q = q.reshape(out_features, groups * self.words_per_group, self.per_word)
        shifts = (np.arange(self.per_word, dtype=np.uint32) * self.bits)[None, None, :]
        packed = np.bitwise_or.reduce(q << shifts, axis=-1).astype(np.uint32)
        return packed, scale

    def choose_scales(self, groups: np.ndarray) -> np.ndarray:
        """Per group, the signed scale of smallest magnitude that keeps every value within half a step."""
        # room above and below zero, in steps, less a hair so float rounding of w/s cannot cross it
        top, bottom = (self.offset - 0.5) * (1 - 1e-6), (self.offset + 0.5) * (1 - 1e-6)
        high = np.maximum(groups.max(axis=-1), 0)
        low = np.maximum(-groups.min(axis=-1), 0)
        positive = np.maximum(high / top, low / bottom)  # s > 0: w/s in [-bottom, top]
        negative = np.maximum(low / top, high / bottom)  # s < 0 mirrors the range
        scale = np.where(negative < positive, -negative, positive).astype(np.float32)
        scale[scale == 0] = 1  # an all-zero group: any scale decodes to exactly 0
        stored = scale.astype(self.scale_dtype)
        shrunk = np.abs(stored.astype(np.float32)) < np.abs(scale)  # rounding must not shrink the range
        stored[shrunk] = np.nextafter(stored[shrunk], np.copysign(np.inf, stored[shrunk]).astype(self.scale_dtype))
        return stored

    def search_scales(self, groups: np.ndarray) -> np.ndarray:
        """Per group, the scale minimising the weighted squared error (``llmc.quant.search``)."""
        from llmc.quant.search import search_symmetric

        return search_symmetric(groups, -self.offset, self.offset - 1).astype(self.scale_dtype)

    def dequantize(self, packed: np.ndarray, scale: np.ndarray, in_features: int) -> np.ndarray:
        """Inverse of ``quantize`` (float32), for tests and quality checks."""
        out_features = packed.shape[0]
        shifts = (np.arange(self.per_word, dtype=np.uint32) * self.bits)[None, None, :]
        q = (packed[..., None] >> shifts) & np.uint32((1 << self.bits) - 1)
        q = q.reshape(out_features, -1, self.group_size).astype(np.float32) - self.offset
        w = q * scale.astype(np.float32)[..., None]
        return w.reshape(out_features, -1)[:, :in_features]

    # ------------------------------------------------------------------ TE (model rewrite)
    def te_element(self, packed: te.Tensor, scale: te.Tensor, row, k):
        """The dequantized value at ``[row, k]`` as a TIR expression."""
        word = packed[row, k // self.per_word]
        shift = (k % self.per_word * self.bits).astype("uint32")
        q = tirx.bitwise_and(tirx.shift_right(word, shift), tirx.const((1 << self.bits) - 1, "uint32"))
        return (q.astype(self.scale_dtype) - tirx.const(self.offset, self.scale_dtype)) * scale[
            row, k // self.group_size
        ]


def dequantize_matmul(
    gq: GroupQuant, x: Tensor, packed: Tensor, scale: Tensor, out_features: int, in_features: int
) -> Tensor:
    """``x @ dequantize(W).T`` as one kernel: a ``dequantize`` block feeding the ``matmul`` block.

    The CPU schedule inlines ``dequantize`` into ``matmul``, and dlight's GPU rules recognise a
    block of that name, so the full-size float weight is never written to memory.
    """

    def compute(xt: te.Tensor, pt: te.Tensor, st: te.Tensor):
        weight = te.compute(
            (out_features, in_features),
            lambda n, k: gq.te_element(pt, st, n, k),
            name="dequantize",
            attrs={PER_WORD_ATTR: gq.per_word},  # lets CPU schedules unroll one packed word at a time
        )
        k = te.reduce_axis((0, in_features), name="k")
        shape = list(xt.shape[:-1]) + [out_features]

        def body(*idx):
            return te.sum(xt[(*idx[:-1], k)] * weight[idx[-1], k], axis=k)

        return te.compute(shape, body, name="matmul")

    return op.tensor_expr_op(compute, name_hint="dequantize_matmul", args=[x, packed, scale])


def int_dot_matmul(
    gq: GroupQuant,
    isa: str,
    x: Tensor,
    codes: Tensor,
    scales: Tensor,
    out_features: int,
    in_features: int,
    mins: Tensor | None = None,
) -> Tensor:
    """``x @ W.T`` on the CPU integer path (``llmc.quant.int_dot``): one kernel quantizes the rows of x
    to int8 and takes integer dot products with the repacked weights. Float32 in and out. ``mins``:
    a float minimum per row and group (GGML Q4_1), in the scales' layout, instead of the code offset."""
    *lead, _ = x.shape
    rows = 1
    for dim in lead:
        rows = rows * dim
    out = op.tensor_ir_op(
        int_matmul(out_features, in_features, gq.bits, isa, gq.scale_dtype, with_min=mins is not None),
        "int_dot_matmul",
        args=[op.reshape(x, (rows, in_features)), codes, scales, *([] if mins is None else [mins])],
        out=Tensor.placeholder((rows, out_features), "float32"),
    )
    return op.reshape(out, (*lead, out_features))


def int_dot_grouped_matmul(
    gq: GroupQuant,
    isa: str,
    x: Tensor,
    indptr: Tensor,
    codes: Tensor,
    scales: Tensor,
    experts: int,
    rows: int,
    cols: int,
) -> Tensor:
    """Expert-major rows ``x`` ``[M, cols]`` (expert ``e``'s rows are ``indptr[e] .. indptr[e + 1]``) times
    their expert's matrix of a ``[experts * rows, cols]`` stack on the CPU integer path -> ``[M, rows]``."""
    return op.tensor_ir_op(
        int_matmul(experts * rows, cols, gq.bits, isa, gq.scale_dtype, experts=experts),
        "int_dot_grouped_matmul",
        args=[x, indptr, codes, scales],
        out=Tensor.placeholder((x.shape[0], rows), "float32"),
    )


def _quantized_parameters(gq: GroupQuant, rows: int, cols: int, isa: str | None) -> tuple:
    """(codes, scales) parameters of a ``rows x cols`` weight: packed uint32 words, or with ``isa`` the
    CPU integer layout (uint8 tiles); scales in the scheme's dtype either way."""
    if isa is None:
        weight_shape, scale_shape = gq.packed_shapes(rows, cols)
        return nn.Parameter(weight_shape, "uint32"), nn.Parameter(scale_shape, gq.scale_dtype)
    weight_shape, scale_shape = int_dot.layout_shapes(gq, rows, cols)
    return nn.Parameter(weight_shape, "uint8"), nn.Parameter(scale_shape, gq.scale_dtype)


class QuantizedLinear(nn.Module):
    """``nn.Linear`` with a group-quantized weight (``q_weight``, ``q_scale``).

    ``isa`` (an x86 integer-dot instruction set, see ``llmc.quant.int_dot``) selects the CPU integer
    path: the weight is stored repacked (uint8 codes, scales in the scheme's dtype), computed in float32.
    """

    def __init__(self, in_features: int, out_features: int, gq: GroupQuant, bias: bool, isa: str | None = None):
        self.in_features, self.out_features, self.gq, self.isa = in_features, out_features, gq, isa
        self.q_weight, self.q_scale = _quantized_parameters(gq, out_features, in_features, isa)
        dtype = gq.scale_dtype if isa is None else "float32"
        self.bias = nn.Parameter((out_features,), dtype) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        if self.isa is None:
            y = dequantize_matmul(self.gq, x, self.q_weight, self.q_scale, self.out_features, self.in_features)
        else:
            y = int_dot_matmul(self.gq, self.isa, x, self.q_weight, self.q_scale, self.out_features, self.in_features)
        return y + self.bias if self.bias is not None else y

    def to(self, dtype: str | None = None) -> None:  # packed weights keep their dtype
        pass


class QuantizedEmbedding(nn.Module):
    """Embedding with a group-quantized table; rows are dequantized as they are gathered.

    With ``isa`` the table is stored in the CPU integer layout and the tied LM head uses the
    integer kernel (see ``QuantizedLinear``).
    """

    def __init__(self, num: int, dim: int, gq: GroupQuant, isa: str | None = None):
        self.num, self.dim, self.gq, self.isa = num, dim, gq, isa
        self.q_weight, self.q_scale = _quantized_parameters(gq, num, dim, isa)

    def forward(self, input_ids: Tensor) -> Tensor:
        gq, dim = self.gq, self.dim
        element = gq.te_element if self.isa is None else lambda p, s, r, k: int_dot.te_element(gq, p, s, r, k)

        def compute(ids: te.Tensor, pt: te.Tensor, st: te.Tensor):
            return te.compute((ids.shape[0], dim), lambda i, j: element(pt, st, ids[i], j), name="take_dequantize")

        return op.tensor_expr_op(compute, name_hint="take_dequantize", args=[input_ids, self.q_weight, self.q_scale])

    def lm_head_forward(self, hidden: Tensor) -> Tensor:
        if self.isa is not None:
            return int_dot_matmul(self.gq, self.isa, hidden, self.q_weight, self.q_scale, self.num, self.dim)
        return dequantize_matmul(self.gq, hidden, self.q_weight, self.q_scale, self.num, self.dim)

    def to(self, dtype: str | None = None) -> None:
        pass
