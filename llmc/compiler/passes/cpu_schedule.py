"""CPU schedules for matmul-like kernels (TVM's default lowering leaves them serial and unvectorized).

* Quantized ``dequantize`` -> ``matmul`` kernels: output features are cut into tiles of
  ``WEIGHT_TILE`` rows; the tile loop is parallel, and each thread decodes its tile into a small
  private buffer (``compute_at``) that every token of the batch/prefill then reuses. No full-size
  float weight is ever written.
* Float matmuls: the output-feature loop moves outermost and runs in parallel.

The reduction loops are left for LLVM to vectorize (the llvm presets allow reassociating float
sums), so each thread streams whole weight rows.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

DEQUANTIZE_BLOCK = "dequantize"
PER_WORD_ATTR = "llmc.codes_per_word"  # set by llmc.quant.group on its dequantize blocks
WEIGHT_TILE = 16
MIN_PARALLEL_EXTENT = 64
DATA_PARALLEL, REDUCE = 0, 2


def _get_block(sch: s_tir.Schedule, name: str):
    try:
        return sch.get_sblock(name)
    except Exception:  # noqa: BLE001 - TVM raises different errors for a missing block
        return None


def _matmul_loops(sch: s_tir.Schedule, block) -> list | None:
    """Loops of a block with spatial iters then one trailing reduction over a wide feature axis."""
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


def _schedule_dequantize_matmul(sch: s_tir.Schedule, dequantize) -> bool:
    consumers = sch.get_consumers(dequantize)
    if len(consumers) != 1:
        return False
    loops = _matmul_loops(sch, consumers[0])
    if loops is None:
        sch.compute_inline(dequantize)
        return True
    *outer, features, reduction = loops
    tile, inner = sch.split(features, [None, WEIGHT_TILE])
    sch.reorder(tile, *outer, inner, reduction)
    sch.parallel(tile)
    sch.compute_at(dequantize, tile)
    per_word = sch.get(dequantize).annotations.get(PER_WORD_ATTR)
    if per_word is not None:  # one packed word per iteration, its codes unrolled (constant shifts)
        _rows, columns = sch.get_loops(dequantize)[-2:]
        _word, code = sch.split(columns, [None, int(per_word)])
        sch.unroll(code)
    return True


def _schedule_float_matmuls(sch: s_tir.Schedule) -> bool:
    root = _get_block(sch, "root")
    changed = False
    for block in sch.get_child_blocks(root) if root is not None else []:
        loops = _matmul_loops(sch, block)
        if loops is None:
            continue
        *outer, features, _reduction = loops
        if outer:
            sch.reorder(features, *outer)
        sch.parallel(features)
        changed = True
    return changed


def schedule_unscheduled(mod: tvm.IRModule, schedule, wanted=lambda func: True) -> tvm.IRModule:
    """Apply ``schedule(sch) -> changed`` to each PrimFunc not yet scheduled (and ``wanted``); keep its name."""
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tirx.PrimFunc) or func.attrs.get("tirx.is_scheduled", False) or not wanted(func):
            continue
        sch = s_tir.Schedule(func)
        if schedule(sch):
            mod[gv] = sch.mod["main"].with_attr("global_symbol", gv.name_hint)
    return mod


def _schedule_matmul(sch: s_tir.Schedule) -> bool:
    dequantize = _get_block(sch, DEQUANTIZE_BLOCK)
    return _schedule_dequantize_matmul(sch, dequantize) if dequantize else _schedule_float_matmuls(sch)


@tvm.transform.module_pass(opt_level=0, name="ScheduleMatmulCPU")
def ScheduleMatmulCPU(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802 - TVM pass naming
    return schedule_unscheduled(mod, _schedule_matmul)
