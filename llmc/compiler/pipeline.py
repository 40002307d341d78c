"""The Relax pass pipeline in named phases; ``dump_dir`` writes the IR after each phase.

``opt_level`` switches groups off (``llmc compile --opt``):
  O0  legalize and lower only: one kernel per op, default loop nests (GPU kernels get dlight's
      Fallback thread binding, which they need to run at all)
  O1  + operator fusion (FuseTransposeMatmul, FuseOps/FuseTIR) and static memory planning
  O2  + tuned schedules: llmc's CPU matmul schedule; dlight Matmul/GEMV/LowBatchGEMV/Reduction/
      GeneralReduction/RMSNorm on GPUs (the default)
  O3  + CUDA-graph capture of the static parts of decode (CUDA targets only)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import tvm
from tvm import relax
from tvm.s_tir import dlight as dl

from llmc.compiler.context import nested_pass_context
from llmc.compiler.passes.cpu_parallel import ParallelizeElementwiseCPU
from llmc.compiler.passes.cpu_schedule import ScheduleMatmulCPU

DEFAULT_OPT_LEVEL = 2
OPT_LEVELS = (0, 1, 2, 3)


@dataclass(frozen=True)
class Phase:
    name: str
    passes: Callable[[tvm.target.Target, int], list]
    min_level: int = 0  # the phase runs when opt_level >= min_level
    config: dict = field(default_factory=dict)  # PassContext options the phase's passes read


def _dispatch(target, level):
    return [relax.backend.DispatchSampling(), relax.backend.DispatchSortScan()]


def _fuse_transpose_matmul(target, level):
    return [relax.transform.FuseTransposeMatmul()]


def _legalize(target, level):
    return [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant()]


def _fuse(target, level):
    return [relax.transform.FuseOps(), relax.transform.FuseTIR(), relax.transform.DeadCodeElimination()]


def schedule_passes(target: tvm.target.Target, level: int) -> list:
    """The passes that schedule ``target``'s kernels at ``level`` (the pipeline's ``schedule`` phase)."""
    if target.kind.name == "llvm":
        # dlight's cpu.GEMV rule makes LLVM codegen run for minutes on even a 2-layer model in TVM 0.27,
        # so CPU matmuls get llmc's own schedule; below O2 they keep TVM's default loop nests
        return [ScheduleMatmulCPU, ParallelizeElementwiseCPU] if level >= 2 else []
    if level < 2:
        return [dl.ApplyDefaultSchedule(dl.gpu.Fallback())]
    return [dl.ApplyDefaultSchedule(*gpu_rules(target))]


class GenericMatmul(dl.gpu.Matmul):
    """dlight's ``gpu.Matmul`` without its Metal branch.

    In TVM 0.27 ``gpu.Matmul`` hands every Metal matmul to MetalMatmul, whose simdgroup tensorize
    segfaults the process (inside s_tir::Tensorize, which its try/except cannot catch). For Metal this
    rule schedules as for a generic GPU target instead: the same tiled schedule (default config) that
    the Metal branch falls back to when MetalMatmul does not apply. tests/test_mobile_targets.py
    builds for Metal in a subprocess, so the segfault's return fails a test.
    """

    def apply(self, func, target, tunable):
        if target.kind.name == "metal":
            target = tvm.target.Target({"kind": "opencl", "max_num_threads": int(target.attrs["max_num_threads"])})
        return super().apply(func, target, tunable)


def gpu_rules(target: tvm.target.Target) -> list:
    """dlight's GPU rules at O2, in priority order."""
    return [
        GenericMatmul(),
        dl.gpu.GEMV(),
        dl.gpu.LowBatchGEMV(),
        dl.gpu.Reduction(),
        dl.gpu.GeneralReduction(),
        dl.gpu.RMSNorm(),
        dl.gpu.Fallback(),
    ]


def _lower_dataflow(target, level):
    return [
        relax.transform.RewriteDataflowReshape(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
    ]


def _plan_memory(target, level):
    # sizes come from the tir_var_upper_bound attrs attached at export
    return [relax.transform.StaticPlanBlockMemory()]


def _cuda_graph(target, level):
    return [relax.transform.RewriteCUDAGraph()] if target.kind.name == "cuda" else []


def _finalize(target, level):
    return [
        relax.transform.LowerAllocTensor(),
        relax.transform.KillAfterLastUse(),
        relax.transform.LowerRuntimeBuiltin(),
        relax.transform.ComputePrimValue(),
        relax.transform.VMShapeLower(),
        relax.transform.AttachGlobalSymbol(),
    ]


PHASES: list[Phase] = [
    Phase("dispatch", _dispatch),
    Phase("fuse_transpose_matmul", _fuse_transpose_matmul, 1),
    Phase("legalize", _legalize),
    Phase("fuse", _fuse, 1),
    Phase("schedule", schedule_passes),
    Phase("lower_dataflow", _lower_dataflow),
    Phase("plan_memory", _plan_memory, 1),
    Phase("cuda_graph", _cuda_graph, 3, {"relax.backend.use_cuda_graph": True}),
    Phase("finalize", _finalize),
]


def make_pipeline(target: tvm.target.Target, dump_dir: Path | None = None, opt_level: int = DEFAULT_OPT_LEVEL):
    """A module pass running the phases enabled at ``opt_level`` under ``target``, dumping IR per phase."""

    @tvm.transform.module_pass(opt_level=0, name="llmc_pipeline")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            for index, phase in enumerate(PHASES):
                if opt_level < phase.min_level:
                    continue
                passes = tvm.transform.Sequential(phase.passes(target, opt_level), name=phase.name)
                with nested_pass_context(phase.config) if phase.config else contextlib.nullcontext():
                    mod = passes(mod)
                if dump_dir is not None:
                    dump_dir.mkdir(parents=True, exist_ok=True)
                    (dump_dir / f"{index:02d}_{phase.name}.py").write_text(mod.script(show_meta=False))
        return mod

    return _pipeline
