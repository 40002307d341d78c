"""Parallel elementwise kernels on CPUs: TVM's default lowering runs every unscheduled kernel on one thread.

Each spatial-only block at a kernel's top level (elementwise ops, RoPE, KV-cache appends, gathers) has
its loops fused and cut into tasks of ``GRAIN`` elements run by TVM's thread pool. One-token decode
kernels stay a single task; prompt-sized ones spread over every core. Kernels with a reduction keep
their schedule (the matmul schedule handles those worth it).
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

GRAIN = 4096  # elements per parallel task
DATA_PARALLEL = 0


def _parallelize(sch: s_tir.Schedule) -> bool:
    try:
        root = sch.get_sblock("root")
    except Exception:  # noqa: BLE001 - TVM raises different errors for a missing block
        return False
    blocks = sch.get_child_blocks(root)
    if not blocks or any(int(iv.iter_type) != DATA_PARALLEL for block in blocks for iv in sch.get(block).iter_vars):
        return False
    changed = False
    for block in blocks:
        loops = sch.get_loops(block)
        if not loops:
            continue
        try:
            fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
            outer, _inner = sch.split(fused, [None, GRAIN])
            sch.parallel(outer)
        except Exception:  # noqa: BLE001 - loops shared with another block or not perfectly nested
            continue
        changed = True
    return changed


@tvm.transform.module_pass(opt_level=0, name="ParallelizeElementwiseCPU")
def ParallelizeElementwiseCPU(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802 - TVM pass naming
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tirx.PrimFunc) or func.attrs.get("tirx.is_scheduled", False):
            continue
        sch = s_tir.Schedule(func)
        if _parallelize(sch):
            mod[gv] = sch.mod["main"].with_attr("global_symbol", gv.name_hint)
    return mod
