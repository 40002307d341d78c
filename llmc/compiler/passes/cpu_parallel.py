"""A CPU schedule for matmul-like kernels: output features outermost and parallel, the reduction innermost.

The reduction loop is left for LLVM to vectorize (the llvm presets allow reassociating float sums);
each thread then streams whole weight rows, reused across every token of a prefill.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

MIN_PARALLEL_EXTENT = 64
DATA_PARALLEL, REDUCE = 0, 2


def _matmul_like(sch: s_tir.Schedule, block) -> list | None:
    """Loops of a block with spatial iters then exactly one trailing reduction, else None."""
    stmt = sch.get(block)
    kinds = [int(iv.iter_type) for iv in stmt.iter_vars]
    loops = sch.get_loops(block)
    if len(kinds) < 2 or len(loops) != len(kinds):
        return None
    if kinds[-1] != REDUCE or any(kind != DATA_PARALLEL for kind in kinds[:-1]):
        return None
    extent = sch.get(loops[-2]).extent
    if not isinstance(extent, tirx.IntImm) or extent.value < MIN_PARALLEL_EXTENT:
        return None
    return loops


@tvm.transform.module_pass(opt_level=0, name="ParallelizeMatmulCPU")
def ParallelizeMatmulCPU(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802 - TVM pass naming
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tirx.PrimFunc) or func.attrs.get("tirx.is_scheduled", False):
            continue
        sch = s_tir.Schedule(func)
        changed = False
        for block in sch.get_child_blocks(sch.get_sblock("root")) if _has_root(sch) else []:
            loops = _matmul_like(sch, block)
            if loops is None:
                continue
            *outer, features, reduction = loops
            if outer:
                sch.reorder(features, *outer)
            sch.parallel(features)
            changed = True
        if changed:
            mod[gv] = sch.mod["main"].with_attr("global_symbol", gv.name_hint)
    return mod


def _has_root(sch: s_tir.Schedule) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:  # noqa: BLE001 - TVM raises different errors for a missing block
        return False
