"""Inline each ``dequantize`` block into the matmul that consumes it (CPU targets).

dlight's GPU rules do this themselves; on CPU, without it, every quantized matmul would write a
full-size float copy of its weight to memory before multiplying.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

DEQUANTIZE_BLOCK = "dequantize"


def _find_block(sch: s_tir.Schedule, name: str):
    try:
        return sch.get_sblock(name)
    except (tvm.error.InternalError, ValueError, RuntimeError):
        return None


@tvm.transform.module_pass(opt_level=0, name="InlineDequantize")
def InlineDequantize(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802 - TVM pass naming
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tirx.PrimFunc):
            continue
        sch = s_tir.Schedule(func)
        block = _find_block(sch, DEQUANTIZE_BLOCK)
        if block is not None:
            sch.compute_inline(block)
            mod[gv] = sch.mod["main"].with_attr("global_symbol", gv.name_hint)
    return mod
