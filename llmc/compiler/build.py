"""Export a model to Relax, attach symbolic bounds, run the pipeline and write the library."""

from __future__ import annotations

import contextlib
from pathlib import Path

import tvm
from tvm import relax

from llmc.compiler.context import nested_pass_context
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


@contextlib.contextmanager
def _device_compiler(preset: TargetPreset):
    """Per-target build settings: nvcc archs and no TIR CSE for CUDA.

    TVM 0.27's TIR CommonSubexprElim emits a use before its definition in some paged-KV attention
    kernels (Llama-3.2-1B shapes: "variable cse_vN has been used before definition!"); nvcc does
    its own CSE, so CUDA builds skip TVM's.
    """
    if preset.device != "cuda":
        yield
        return
    from llmc.compiler.cuda import nvcc_for_archs

    context = nested_pass_context({"tirx.disable_cse_tir": True})  # keeps the memory-plan instrument
    with context, nvcc_for_archs(preset.cuda_archs):
        yield


def compile_library(
    mod: tvm.IRModule,
    preset: TargetPreset,
    out_file: Path,
    dump_dir: Path | None = None,
    opt_level: int = 2,
    system_lib_prefix: str | None = None,
) -> None:
    """Build ``mod`` for ``preset`` and export the library to ``out_file``.

    System-lib presets (phones) need ``system_lib_prefix``: every symbol, and the registration of the
    packed functions and device code, is prefixed with it so several models link into one app.
    """
    target = preset.tvm_target()
    if preset.system_lib:
        if not system_lib_prefix:
            raise LlmcError(f"target {preset.name} builds a static system library and needs a symbol prefix.")
        # TVM's codegen makes a system lib whenever the module carries this attr. relax.build's own
        # system_lib=True path reads it back with IRModule.get_attr, which raises "Cannot convert from
        # type ffi.SmallStr" for strings of <= 7 characters in 0.27, so llmc sets it and passes False.
        mod = mod.with_attr("system_lib_prefix", system_lib_prefix)
    if preset.library_suffix == ".wasm":
        from llmc.compiler.web import runtime_objects

        runtime_objects()  # emcc and the web runtime first: a clear error before the build, not after
    if preset.device == "vulkan":
        from llmc.compiler.spirv import require_naga

        require_naga()  # WGSL -> SPIR-V happens at export: fail before the build, not after
    pipeline = make_pipeline(target, dump_dir, opt_level)
    with target, _device_compiler(preset):  # TVM's nvcc callback reads the current target
        # system_lib None: TVM's default (on for wasm hosts); phones carry the prefix attr set above
        executable = relax.build(mod, target, relax_pipeline=pipeline, system_lib=False if preset.system_lib else None)
    if not preset.runs_here:
        write_device_source(executable, out_file)
    if out_file.suffix == ".dylib":
        from tvm.support import xcode

        executable.export_library(str(out_file), fcompile=xcode.create_dylib, arch="arm64", sdk="macosx")
    elif preset.library_suffix == ".wasm":
        from llmc.compiler.web import link_wasm

        executable.export_library(str(out_file), fcompile=link_wasm)
    elif preset.device == "vulkan":
        from llmc.compiler.vulkan import export_library

        export_library(executable, out_file)
    else:
        executable.export_library(str(out_file))  # .tar: tvm.support.tar, objects only (no NDK/Xcode)
    if preset.system_lib:
        from llmc.package.objfile import check_system_library

        mtriple = preset.host["mtriple"]
        fmt, arch = ("macho", "arm64") if "apple" in mtriple else ("elf", mtriple.split("-")[0])
        check_system_library(out_file, system_lib_prefix, fmt, arch)
    if preset.device == "cuda":
        from llmc.compiler.cuda import library_has_device_code

        if not library_has_device_code(out_file):
            raise LlmcError(
                f"{out_file}: TVM stored CUDA source instead of compiled kernels (its CUDA runtime did not load). "
                "Build CUDA targets through the llmc command, which prepares nvcc and the driver before TVM loads."
            )


DEVICE_SOURCE_SUFFIX = {"opencl": ".cl", "metal": ".metal"}


def write_device_source(executable, out_file: Path) -> Path | None:
    """Beside a cross-compiled library, the kernels' source as TVM embedded it (for review and checks)."""

    def walk(module):
        yield module
        for imported in module.imports:
            yield from walk(imported)

    for module in walk(executable.mod):
        if module.kind in DEVICE_SOURCE_SUFFIX:
            path = out_file.with_suffix(DEVICE_SOURCE_SUFFIX[module.kind])
            path.write_text(module.inspect_source())
            return path
    return None
