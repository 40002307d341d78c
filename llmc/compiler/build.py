"""Export a model to Relax, attach symbolic bounds, run the pipeline and write the library (through the
preset's backend, ``llmc.compiler.backends``)."""

from __future__ import annotations

from pathlib import Path

import tvm
from tvm import relax

from llmc.compiler.pipeline import make_pipeline
from llmc.compiler.targets import TargetPreset
from llmc.errors import LlmcError


def build_module(model, target: tvm.target.Target) -> tuple[tvm.IRModule, list[tuple[str, object]]]:
    """``export_tvm`` the (target-free) model, pick its kernels for ``target`` (``llmc.kernels.dispatch``; the
    module records whether its KV cache evicts, ``sliding_eviction``, and has sliding layers, ``sliding_cache``: build
    outputs) and bound its symbolic
    dims for static memory planning."""
    from llmc.kernels.dispatch import cache_kinds, dispatch_kernels, evict_window

    mod, named_params = model.export_tvm(spec=model.get_default_spec())
    mod, requests = dispatch_kernels(mod, target, getattr(model, "cpu_kernels", True))
    model.sliding_eviction = any(evict_window(request, target) for request in requests)
    model.sliding_cache = any("mha_sliding" in cache_kinds(request, target) for request in requests)
    bounds = model.symbolic_upper_bounds()
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function) and gv.name_hint != "create_paged_kv_cache":
            func = func.with_attr("tir_var_upper_bound", bounds)
            func = func.with_attr("tir_non_negative_var", list(bounds))
            mod[gv] = func
    return mod, named_params


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
    pipeline = make_pipeline(target, dump_dir, opt_level)
    with target, preset.backend.build_context(preset):  # TVM's nvcc callback reads the current target
        # system_lib None: TVM's default (on for wasm hosts); phones carry the prefix attr set above
        executable = relax.build(mod, target, relax_pipeline=pipeline, system_lib=False if preset.system_lib else None)
    preset.backend.export(executable, preset, out_file)
    preset.backend.verify(preset, out_file, system_lib_prefix)
