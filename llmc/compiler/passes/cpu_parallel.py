"""Parallel elementwise kernels for prompts on CPUs: TVM's default lowering runs them on one thread.

A kernel whose buffers have the prompt dimension (``seq_len``: prefill, batch_prefill, batch_verify)
and only spatial blocks at its top level (elementwise ops, KV-cache appends, gathers) gets, per
block, all loops but the innermost fused into one parallel loop; the innermost stays whole so LLVM
vectorizes it (fusing it too put a div/mod in every element and made SiLU 2x slower). Decode
kernels (one row per sequence) stay serial: a thread-pool launch costs more than their work.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from llmc.compiler.passes.cpu_schedule import schedule_unscheduled

PROMPT_DIMS = ("seq_len",)  # symbolic dims of prompt-sized kernels (llmc.models.base specs)
GRAIN = 4096  # a single-loop block is cut into parallel tasks of this many elements
DATA_PARALLEL = 0


def _has_prompt_dim(func: tirx.PrimFunc) -> bool:
    """Whether the kernel's shapes use a prompt-length variable (free in its body, bound by its buffers)."""
    return any(var.name in PROMPT_DIMS for var in tirx.analysis.undefined_vars(func.body, list(func.params)))


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
            if len(loops) > 1:
                outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
            else:
                outer, _inner = sch.split(loops[0], [None, GRAIN])
            sch.parallel(outer)
        except Exception:  # noqa: BLE001 - loops shared with another block or not perfectly nested
            continue
        changed = True
    return changed


@tvm.transform.module_pass(opt_level=0, name="ParallelizeElementwiseCPU")
def ParallelizeElementwiseCPU(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802 - TVM pass naming
    return schedule_unscheduled(mod, _parallelize, _has_prompt_dim)
