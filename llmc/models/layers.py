"""Layers shared by the families: an embedding that can also act as the (tied) LM head, and a row gather."""

from __future__ import annotations

import math

from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op


def gather_rows(table: Tensor, indices: Tensor, name: str = "take") -> Tensor:
    """``table[indices]`` for a 1-D index tensor, as one TE kernel (no out-of-bounds fast path)."""

    def compute(t: te.Tensor, idx: te.Tensor):
        return te.compute((idx.shape[0], t.shape[1]), lambda i, j: t[idx[i], j], name=name)

    return op.tensor_expr_op(compute, name_hint=name, args=[table, indices])


class Embedding(nn.Module):
    """Token embedding; ``lm_head_forward`` reuses the table as the output projection (tied weights)."""

    def __init__(self, num: int, dim: int):
        self.num, self.dim = num, dim
        self.weight = nn.Parameter((num, dim))

    def forward(self, input_ids: Tensor) -> Tensor:
        return gather_rows(self.weight, input_ids)

    def lm_head_forward(self, hidden: Tensor) -> Tensor:
        return op.matmul(hidden, op.permute_dims(self.weight))


EXP2_TAYLOR = [math.log(2) ** n / math.factorial(n) for n in range(7)]  # 2^f on |f| <= 1/2: rel. error ~1e-7


def fast_exp(x):
    """``e**x`` (float32 TIR expression) without a libm call, so CPU loops over it vectorize: 2^round(y)
    from the exponent bits times a degree-6 polynomial of the remainder, ``y = x log2(e)`` clamped to
    +-126."""
    y = tirx.max(tirx.min(x * tirx.const(math.log2(math.e), "float32"), tirx.const(126.0, "float32")), -126.0)
    n = tirx.nearbyint(y)
    f = y - n
    poly = tirx.const(EXP2_TAYLOR[-1], "float32")
    for coefficient in reversed(EXP2_TAYLOR[:-1]):
        poly = poly * f + tirx.const(coefficient, "float32")
    bits = tirx.shift_left(n.astype("int32") + 127, tirx.const(23, "int32"))
    return poly * tirx.reinterpret("float32", bits)


def silu_multiply(gate_up: Tensor, width: int) -> Tensor:
    """``silu(gate) * up`` of a fused ``[..., 2 * width]`` gate/up projection, as one kernel whose exp is
    ``fast_exp`` (CPUs: TVM's sigmoid calls libm's expf per element, which LLVM cannot vectorize)."""

    def compute(x: te.Tensor):
        def element(*idx):
            gate, up = x[(*idx[:-1], idx[-1])], x[(*idx[:-1], idx[-1] + width)]
            return gate / (tirx.const(1.0, "float32") + fast_exp(-gate)) * up

        return te.compute((*x.shape[:-1], width), element, name="silu_multiply")

    return op.tensor_expr_op(compute, name_hint="silu_multiply", args=[gate_up])
