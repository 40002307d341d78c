"""MoE kernels on their own: the counting sort of (token, choice) assignments by expert, and the grouped
CPU integer matmul (each expert's tiles decoded once for the rows routed to it) against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from test_int_dot import RUNNABLE, isa_target, reference

from llmc.kernels.moe_sort import _sort_kernel
from llmc.quant import int_dot
from llmc.quant.group import GroupQuant
from llmc.quant.int_dot_kernels import int_matmul


def _run(func, target, arrays: list[np.ndarray], out_shapes: list[tuple[tuple, str]]) -> list[np.ndarray]:
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    dev = tvm.cpu()
    outs = [tvm.runtime.tensor(np.zeros(shape, dtype), dev) for shape, dtype in out_shapes]
    lib["main"](*(tvm.runtime.tensor(a, dev) for a in arrays), *outs)
    return [o.numpy() for o in outs]


def test_sort_by_expert_is_a_stable_counting_sort():
    experts, top_k, tokens = 6, 2, 9
    rng = np.random.default_rng(0)
    ids = np.stack([rng.choice([0, 2, 3, 5], top_k, replace=False) for _ in range(tokens)]).astype(np.int32)
    order, indptr, slot = _run(
        _sort_kernel(experts, top_k),
        tvm.target.Target("llvm"),
        [ids],
        [((tokens * top_k,), "int32"), ((experts + 1,), "int32"), ((tokens * top_k,), "int32")],
    )
    flat = ids.reshape(-1)
    assert order.tolist() == np.argsort(flat, kind="stable").tolist()
    assert indptr.tolist() == [0, *np.cumsum(np.bincount(flat, minlength=experts)).tolist()]
    assert np.array_equal(order[slot], np.arange(tokens * top_k))  # slot inverts order
    assert indptr[2] - indptr[1] == 0  # expert 1 got nothing: an empty segment


@pytest.mark.parametrize("isa", RUNNABLE)
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("counts", [[3, 0, 6, 1], [0, 1, 0, 0], [5, 4, 4, 9]])
def test_grouped_matmul_equals_numpy_per_expert(isa, bits, counts):
    """Row blocks of 4 and single rows, an expert with no rows, one row in all (decode)."""
    experts, rows, cols = 4, 32, 80
    gq = GroupQuant(bits, 32, "float16")
    rng = np.random.default_rng(sum(counts) + bits)
    weight = rng.standard_normal((experts * rows, cols)).astype(np.float32)
    packed, scale = gq.quantize(weight)
    codes, scales = int_dot.repack(gq, packed, scale)
    x = rng.standard_normal((sum(counts), cols)).astype(np.float32)
    indptr = np.array([0, *np.cumsum(counts)], np.int32)
    target = isa_target(isa)
    func = int_matmul(experts * rows, cols, bits, isa, "float16", experts=experts)
    (out,) = _run(func, target, [x, indptr, codes, scales], [((len(x), rows), "float32")])
    for e in range(experts):
        segment = slice(indptr[e], indptr[e + 1])
        if indptr[e] == indptr[e + 1]:
            continue
        own = slice(e * rows, (e + 1) * rows)
        expected = reference(gq, x[segment], packed[own], scale[own])
        assert np.abs(out[segment] - expected).max() <= 1e-5 * max(np.abs(expected).max(), 1e-6)
