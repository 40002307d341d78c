"""The Relax pass pipeline in named phases; ``dump_dir`` writes the IR after each phase."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import tvm
from tvm import relax
from tvm.s_tir import dlight as dl

from llmc.compiler.passes.cpu_schedule import ScheduleMatmulCPU

PhaseList = list[tuple[str, Callable[[tvm.target.Target], list]]]


def _dispatch(target):
    return [relax.backend.DispatchSampling(), relax.backend.DispatchSortScan()]


def _legalize_and_fuse(target):
    return [
        relax.transform.FuseTransposeMatmul(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ]


def _schedule(target):
    # dlight's cpu.GEMV rule makes LLVM codegen run for minutes on even a 2-layer model in TVM 0.27,
    # so CPU matmuls get llmc's own schedule.
    if target.kind.name == "llvm":
        return [ScheduleMatmulCPU]
    return [
        dl.ApplyDefaultSchedule(
            dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()
        )
    ]


def _lower_dataflow(target):
    return [
        relax.transform.RewriteDataflowReshape(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
    ]


def _plan_memory(target):
    # sizes come from the tir_var_upper_bound attrs attached at export
    return [relax.transform.StaticPlanBlockMemory()]


def _finalize(target):
    return [
        relax.transform.LowerAllocTensor(),
        relax.transform.KillAfterLastUse(),
        relax.transform.LowerRuntimeBuiltin(),
        relax.transform.ComputePrimValue(),
        relax.transform.VMShapeLower(),
        relax.transform.AttachGlobalSymbol(),
    ]


PHASES: PhaseList = [
    ("dispatch", _dispatch),
    ("legalize_fuse", _legalize_and_fuse),
    ("schedule", _schedule),
    ("lower_dataflow", _lower_dataflow),
    ("plan_memory", _plan_memory),
    ("finalize", _finalize),
]


def make_pipeline(target: tvm.target.Target, dump_dir: Path | None = None):
    """A module pass running every phase under ``target``, dumping IR per phase when asked."""

    @tvm.transform.module_pass(opt_level=0, name="llmc_pipeline")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            for index, (name, passes) in enumerate(PHASES):
                mod = tvm.transform.Sequential(passes(target), name=name)(mod)
                if dump_dir is not None:
                    dump_dir.mkdir(parents=True, exist_ok=True)
                    (dump_dir / f"{index:02d}_{name}.py").write_text(mod.script(show_meta=False))
        return mod

    return _pipeline
