"""A libm-free ``silu(gate) * up`` for CPUs: TVM's sigmoid calls libm's ``expf`` per element, which LLVM
cannot vectorize; ``fast_exp`` is a polynomial on the exponent bits that it can."""

from __future__ import annotations

import math

from tvm import te, tirx

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


def silu_multiply(x: te.Tensor, width: int) -> te.Tensor:
    """``silu(gate) * up`` of a fused ``[..., 2 * width]`` gate/up projection, as one TE kernel whose exp is
    ``fast_exp``."""

    def element(*idx):
        gate, up = x[(*idx[:-1], idx[-1])], x[(*idx[:-1], idx[-1] + width)]
        return gate / (tirx.const(1.0, "float32") + fast_exp(-gate)) * up

    return te.compute((*x.shape[:-1], width), element, name="silu_multiply")
