"""The static memory plan of a build: activation bytes per Relax function, for memory estimates.

``record_static_plan`` watches the build and, right after ``StaticPlanBlockMemory``, sums the
constant-size ``R.memory.alloc_storage`` calls of each Relax function (sizes are bytes, planned at
the ``tir_var_upper_bound`` of every symbolic dim). ``llmc.memory`` turns the recorded figures into
an estimate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

PLAN_PASS = "StaticPlanBlockMemory"


def planned_bytes(mod) -> dict[str, int]:
    """Relax function name -> bytes of its statically planned storage (``alloc_storage`` with a constant size)."""
    from tvm import relax, tirx

    alloc_storage = tvm_op("relax.memory.alloc_storage")
    sizes: dict[str, int] = {}

    for gv, func in mod.functions.items():
        if not isinstance(func, relax.Function):
            continue
        total = 0

        def visit(expr):
            nonlocal total
            if isinstance(expr, relax.Call) and expr.op.same_as(alloc_storage):
                shape = expr.args[0]
                if isinstance(shape, relax.ShapeExpr) and all(isinstance(v, tirx.IntImm) for v in shape.values):
                    total += int(np.prod([int(v) for v in shape.values]))

        relax.analysis.post_order_visit(func.body, visit)
        sizes[gv.name_hint] = total
    return sizes


def tvm_op(name: str):
    import tvm

    return tvm.ir.Op.get(name)


@contextlib.contextmanager
def record_static_plan() -> Iterator[dict[str, int]]:
    """Within the block, a build fills the yielded dict with ``planned_bytes`` of the planned module."""
    import tvm

    plan: dict[str, int] = {}

    @tvm.instrument.pass_instrument
    class _Probe:
        def run_after_pass(self, mod, info):
            if info.name == PLAN_PASS:
                plan.update(planned_bytes(mod))

    from llmc.compiler.context import nested_pass_context

    with nested_pass_context(instruments=[_Probe()]):
        yield plan
