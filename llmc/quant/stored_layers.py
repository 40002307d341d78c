"""Layers whose weights stay as an AWQ / GPTQ / fp8 checkpoint stored them (``llmc.quant.stored``).

The planes are ``StoredLayout``'s (``llmc.checkpoint.quant_config``). Every target decodes a weight in
a TE ``dequantize`` block that feeds the ``matmul`` block (dlight's GPU rules and llmc's CPU schedule
fuse the pair, as for the group schemes): ``(code - zero) * scale`` for the integer formats, the e4m3
value times its block scale for fp8, both in float32 and exactly the checkpoint's numbers.

On x86 CPUs 4-bit integer weights whose groups are whole multiples of 32 columns take the integer-dot
path (``llmc.quant.int_dot``) as GGML Q4_1 does: ``w = d * code + m`` per 32 columns with ``d = scale``
and ``m = -scale * zero``, both float32 (exact: an fp16 scale times a 4-bit zero fits float32's
significand), the codes repacked unchanged. fp8 and 8-bit GPTQ weights take the float decode on CPUs.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from llmc.checkpoint.quant_config import StoredLayout
from llmc.quant import int_dot
from llmc.quant.group import PER_WORD_ATTR
from llmc.quant.int_dot import Form
from llmc.quant.int_dot_kernels import int_matmul

INT_FORM = Form(4, "float32", "group_min")  # w = d * code + m per 32 columns
INT_NAMES = {"qweight": "q_weight", "scales": "q_scale", "qzeros": "q_min"}  # portable plane -> integer array


def takes_int_path(layout: StoredLayout, cols: int) -> bool:
    """Whether a weight's groups fit the integer kernel's groups of 32 (4-bit codes only)."""
    if layout.kind != "int" or layout.bits != 4:
        return False
    group = layout.group_size(cols)
    return group % int_dot.GROUP == 0 or group == cols


# ---------------------------------------------------------------------- TE decode
def _bits(value, shift, mask: int):
    shift = tirx.const(shift, "uint32") if isinstance(shift, int) else shift.astype("uint32")
    return tirx.bitwise_and(tirx.shift_right(value, shift), tirx.const(mask, "uint32"))


def fp8_value(byte):
    """An e4m3fn byte (uint32) -> float32: normals rebuilt as float32 bits, subnormals as ``m * 2**-9``."""
    sign, exponent, mantissa = _bits(byte, 7, 1), _bits(byte, 3, 15), _bits(byte, 0, 7)
    normal = tirx.reinterpret(
        "float32",
        tirx.bitwise_or(
            tirx.shift_left(exponent + tirx.const(120, "uint32"), tirx.const(23, "uint32")),
            tirx.shift_left(mantissa, tirx.const(20, "uint32")),
        ),
    )
    subnormal = mantissa.astype("float32") * tirx.const(2.0**-9, "float32")
    magnitude = tirx.Select(exponent == tirx.const(0, "uint32"), subnormal, normal)
    return magnitude * (tirx.const(1.0, "float32") - tirx.const(2.0, "float32") * sign.astype("float32"))


def stored_element(layout: StoredLayout, planes: dict, row, k, rows: int, cols: int):
    """Weight ``[row, k]`` of a ``rows x cols`` stored weight as a float32 TIR expression."""
    per = layout.per_word
    code = _bits(planes["qweight"][row, k // per], k % per * layout.bits, (1 << layout.bits) - 1)
    if layout.kind == "fp8":
        block_rows, block_cols = layout.scale_block(rows, cols)
        return fp8_value(code) * planes["scales"][row // block_rows, k // block_cols]
    g = k // layout.group_size(cols)
    zero = _bits(planes["qzeros"][row, g // 4], g % 4 * 8, 0xFF)
    return (code.astype("float32") - zero.astype("float32")) * planes["scales"][row, g].astype("float32")


def stored_matmul(layout: StoredLayout, x: Tensor, planes: list[Tensor], rows: int, cols: int) -> Tensor:
    """``x @ decode(W).T`` as one kernel: a ``dequantize`` block feeding the ``matmul`` block."""
    names = list(layout.plane_shapes(rows, cols))

    def compute(xt: te.Tensor, *pts: te.Tensor):
        by_name = dict(zip(names, pts))
        weight = te.compute(
            (rows, cols),
            lambda n, k: stored_element(layout, by_name, n, k, rows, cols).astype(xt.dtype),
            name="dequantize",
            attrs={PER_WORD_ATTR: layout.per_word} if cols % layout.per_word == 0 else None,
        )
        k = te.reduce_axis((0, cols), name="k")

        def body(*idx):
            return te.sum(xt[(*idx[:-1], k)] * weight[idx[-1], k], axis=k)

        return te.compute([*xt.shape[:-1], rows], body, name="matmul")

    return op.tensor_expr_op(compute, name_hint=f"dequantize_matmul_{layout.kind}", args=[x, *planes])


# ---------------------------------------------------------------------- the layer
class StoredLinear(nn.Module):
    """``nn.Linear`` with a stored weight: the layout's planes (``qweight``, ``qzeros``, ``scales``), or with
    ``isa`` the integer kernel's arrays (``q_weight``, ``q_scale``, ``q_min``)."""

    def __init__(self, layout: StoredLayout, in_features: int, out_features: int, bias: bool, isa, dtype: str):
        self.layout, self.in_features, self.out_features, self.isa = layout, in_features, out_features, isa
        if isa is None:
            for name, (shape, plane_dtype) in layout.plane_shapes(out_features, in_features).items():
                setattr(self, name, nn.Parameter(shape, plane_dtype))
        else:
            tiles, groups = int_dot.tile_count(out_features), -(-in_features // int_dot.GROUP)
            self.q_weight = nn.Parameter((tiles, groups, INT_FORM.steps, int_dot.VECTOR_BYTES), "uint8")
            (scale_shape, scale_dtype), _ = INT_FORM.scale_shapes(out_features, in_features)
            self.q_scale = nn.Parameter(scale_shape, scale_dtype)
            self.q_min = nn.Parameter(scale_shape, scale_dtype)
        self.bias = nn.Parameter((out_features,), "float32" if isa else dtype) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        if self.isa is None:
            planes = [getattr(self, name) for name in self.layout.plane_shapes(self.out_features, self.in_features)]
            y = stored_matmul(self.layout, x, planes, self.out_features, self.in_features)
        else:
            y = self._int_matmul(x)
        return y + self.bias if self.bias is not None else y

    def _int_matmul(self, x: Tensor) -> Tensor:
        *lead, _ = x.shape
        count = 1
        for dim in lead:
            count = count * dim
        out = op.tensor_ir_op(
            int_matmul(self.out_features, self.in_features, 4, self.isa, form=INT_FORM),
            "int_dot_matmul",
            args=[op.reshape(x, (count, self.in_features)), self.q_weight, self.q_scale, self.q_min],
            out=Tensor.placeholder((count, self.out_features), "float32"),
        )
        return op.reshape(out, (*lead, self.out_features))

    def to(self, dtype: str | None = None) -> None:  # stored planes keep their dtypes
        pass


# ---------------------------------------------------------------------- numpy: the integer layout
def int_dot_arrays(layout: StoredLayout, planes: dict[str, np.ndarray], cols: int) -> list[np.ndarray]:
    """A weight's planes -> the integer kernel's ``q_weight``, ``q_scale`` (``d``) and ``q_min`` (``m``)."""
    rows = planes["qweight"].shape[0]
    chunks = -(-cols // int_dot.GROUP)
    codes = np.zeros((rows, chunks * int_dot.GROUP), np.uint8)
    codes[:, :cols] = int_dot.unpack_codes(layout, planes["qweight"])[:, :cols]
    groups = planes["scales"].shape[1]
    zeros = int_dot.unpack_codes(_BYTES, planes["qzeros"])[:, :groups].astype(np.float32)
    scales = planes["scales"].astype(np.float32)
    group_of_chunk = np.arange(chunks) * int_dot.GROUP // layout.group_size(cols)
    d = np.ascontiguousarray(scales[:, group_of_chunk])
    m = np.ascontiguousarray(-(scales * zeros)[:, group_of_chunk])  # exact in float32
    return [int_dot.repack_codes(codes, 4), int_dot.repack_scales(d), int_dot.repack_scales(m)]


class _ByteWords:
    """The zero-point plane's packing (a byte per group, four per word) as an ``int_dot.CodeLayout``."""

    bits, per_word = 8, 4


_BYTES = _ByteWords()
