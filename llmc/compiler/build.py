"""Export a model to Relax, attach symbolic bounds, run the pipeline and write the library."""

from __future__ import annotations

from pathlib import Path

import tvm
from tvm import relax

from llmc.compiler.pipeline import make_pipeline
from llmc.compiler.targets import TargetPreset
from llmc.errors import LlmcError


def build_module(model, target: tvm.target.Target) -> tuple[tvm.IRModule, list[tuple[str, object]]]:
    """``export_tvm`` the model, bounding its symbolic dims for static memory planning."""
    mod, named_params = model.export_tvm(spec=model.get_default_spec())
    bounds = model.symbolic_upper_bounds()
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function) and gv.name_hint != "create_paged_kv_cache":
            func = func.with_attr("tir_var_upper_bound", bounds)
            func = func.with_attr("tir_non_negative_var", list(bounds))
            mod[gv] = func
    return mod, named_params


def compile_library(
    mod: tvm.IRModule, preset: TargetPreset, out_file: Path, dump_dir: Path | None = None, opt_level: int = 2
) -> None:
    """Build ``mod`` for ``preset`` and export the library to ``out_file``."""
    target = preset.tvm_target()
    if preset.library_suffix == ".wasm":
        from llmc.compiler.web import runtime_objects

        runtime_objects()  # emcc and the web runtime first: a clear error before the build, not after
    if preset.device == "vulkan":
        from llmc.compiler.spirv import require_naga

        require_naga()  # WGSL -> SPIR-V happens at export: fail before the build, not after
    with target:  # TVM's nvcc callback reads the current target
        executable = relax.build(mod, target, relax_pipeline=make_pipeline(target, dump_dir, opt_level))
    if preset.library_suffix == ".wasm":
        from llmc.compiler.web import link_wasm

        executable.export_library(str(out_file), fcompile=link_wasm)
    elif preset.device == "vulkan":
        from llmc.compiler.vulkan import export_library

        export_library(executable, out_file)
    else:
        executable.export_library(str(out_file))
    if preset.device == "cuda":
        from llmc.compiler.cuda import library_has_device_code

        if not library_has_device_code(out_file):
            raise LlmcError(
                f"{out_file}: TVM stored CUDA source instead of compiled kernels (its CUDA runtime did not load). "
                "Build CUDA targets through the llmc command, which prepares nvcc and the driver before TVM loads."
            )
