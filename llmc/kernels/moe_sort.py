"""Expert-major order for grouped expert matmuls: the (token, choice) assignments sorted by expert.

``sort_by_expert`` is a counting sort in one small serial kernel (``n * top_k`` assignments): ``order``
lists the assignments (``token * top_k + choice``) expert by expert, ``indptr[e] .. indptr[e + 1]`` is
expert ``e``'s segment of it, and ``slot[a]`` is where assignment ``a`` landed. A grouped matmul then
decodes each chosen expert's weights once for its whole segment (``llmc.quant.moe_kernels``).
"""

from __future__ import annotations

from tvm import te
from tvm.relax.frontend.nn import Tensor, op
from tvm.script import tirx as T


def _sort_kernel(experts: int, top_k: int):
    @T.prim_func(private=True, s_tir=True)
    def sort(ids_h: T.handle, order_h: T.handle, indptr_h: T.handle, slot_h: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        n = T.int64()
        ids = T.match_buffer(ids_h, (n, top_k), "int32")
        order = T.match_buffer(order_h, (n * top_k,), "int32")
        indptr = T.match_buffer(indptr_h, (experts + 1,), "int32")
        slot = T.match_buffer(slot_h, (n * top_k,), "int32")
        with T.sblock("root"):
            fill = T.decl_buffer((experts,), "int32")
            for e in range(experts + 1):
                indptr[e] = 0
            for a in range(n * top_k):
                indptr[ids[a // top_k, a % top_k] + 1] = indptr[ids[a // top_k, a % top_k] + 1] + 1
            for e in range(experts):
                indptr[e + 1] = indptr[e + 1] + indptr[e]
                fill[e] = indptr[e]
            for a in range(n * top_k):
                slot[a] = fill[ids[a // top_k, a % top_k]]
                order[fill[ids[a // top_k, a % top_k]]] = T.Cast("int32", a)
                fill[ids[a // top_k, a % top_k]] = fill[ids[a // top_k, a % top_k]] + 1

    return sort


def sort_by_expert(expert_ids: Tensor, experts: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(order, indptr, slot)`` of ``expert_ids`` ``[n, top_k]`` (see the module docstring)."""
    n, top_k = expert_ids.shape
    assignments = n * top_k
    return op.tensor_ir_op(
        _sort_kernel(experts, int(top_k)),
        "sort_by_expert",
        args=[expert_ids],
        out=[
            Tensor.placeholder((assignments,), "int32"),
            Tensor.placeholder((experts + 1,), "int32"),
            Tensor.placeholder((assignments,), "int32"),
        ],
    )


def gather_assignments(x: Tensor, order: Tensor, top_k: int) -> Tensor:
    """``x`` ``[n, cols]`` rows in expert-major order: row ``s`` is the token of assignment ``order[s]``."""

    def compute(xt: te.Tensor, o: te.Tensor):
        return te.compute((o.shape[0], xt.shape[1]), lambda s, c: xt[o[s] // top_k, c], name="moe_gather")

    return op.tensor_expr_op(compute, name_hint="moe_gather", args=[x, order])


def combine_sorted(outputs: Tensor, slot: Tensor, weights: Tensor) -> Tensor:
    """``sum_j weights[t, j] * outputs[slot[t * top_k + j]]`` for expert-major ``outputs`` ``[n*top_k, h]``."""

    def compute(y: te.Tensor, s: te.Tensor, w: te.Tensor):
        n, top_k = w.shape

        def body(t, o):
            return sum(y[s[t * top_k + j], o] * w[t, j].astype(y.dtype) for j in range(int(top_k)))

        return te.compute((n, y.shape[1]), body, name="moe_combine")

    return op.tensor_expr_op(compute, name_hint="moe_combine_sorted", args=[outputs, slot, weights])
