"""Control heads: per-layer values for the attention kernels, carried in the query (``AttentionSpec.sinks`` /
``AttentionSpec.chunk``).

TVM's runtime calls one set of attention kernels for every layer with a fixed signature and no layer id, so a
layer's attention sinks (GPT-OSS) and whether its keys are masked (a sliding window, GPT-OSS; a chunk, Llama 4)
travel as one extra query head after each KV group's heads: ``[the group's sink logits, 1 if the layer is masked
else 0, zeros]``. The kernels (``llmc.kernels.cpu_attention``, ``llmc.kernels.gpu_sinks``) read it; its own output
row is dropped after attention.
"""

from __future__ import annotations

from tvm import te, tirx
from tvm.relax.frontend.nn import Tensor, op


def with_control_heads(qkv: Tensor, sinks: Tensor | None, heads: int, kv_heads: int, masked: bool) -> Tensor:
    """``[b, s, heads + 2 kv, d]`` -> ``[b, s, kv (group + 1) + 2 kv, d]``: after each KV group's ``group`` query
    heads, its control head ``[sinks of the group's heads (zeros without sinks), 1 if masked else 0, 0, ...]``."""
    group = heads // kv_heads
    flag = 1.0 if masked else 0.0

    def compute(x: te.Tensor, sink: te.Tensor | None = None):
        b, s, _, d = x.shape
        q_heads = kv_heads * (group + 1)

        def element(i, j, h, e):
            in_group, owner = h % (group + 1), h // (group + 1)
            query = x[i, j, tirx.min(owner * group + in_group, heads - 1), e]
            zero = tirx.const(0.0, x.dtype)
            logit = zero if sink is None else sink[tirx.min(owner * group + e, heads - 1)].astype(x.dtype)
            control = tirx.if_then_else(
                e < group, logit, tirx.if_then_else(e == group, tirx.const(flag, x.dtype), zero)
            )
            kv = x[i, j, tirx.max(h - kv_heads, heads), e]
            return tirx.if_then_else(h < q_heads, tirx.if_then_else(in_group < group, query, control), kv)

        return te.compute((b, s, q_heads + 2 * kv_heads, d), element, name="control_heads")

    args = [qkv] if sinks is None else [qkv, sinks]
    return op.tensor_expr_op(compute, name_hint="control_heads", args=args)


def without_control_heads(out: Tensor, heads: int, kv_heads: int) -> Tensor:
    """The attention output ``[b, s, kv (group + 1), d]`` less its control heads, as ``[b, s, heads * d]``."""
    group = heads // kv_heads

    def compute(o: te.Tensor):
        b, s, _, d = o.shape

        def element(i, j, c):
            h = c // d
            return o[i, j, h // group * (group + 1) + h % group, c % d]

        return te.compute((b, s, heads * d), element, name="drop_control_heads")

    return op.tensor_expr_op(compute, name_hint="drop_control_heads", args=[out])
