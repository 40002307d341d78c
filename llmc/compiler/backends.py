"""How each kind of target is built: the backend object every ``TargetPreset`` carries.

The interface (``Backend``, also the ``llvm`` host backend ``HOST``) lives in ``llmc.compiler.preset``.
A backend answers five questions for its presets: what to prepare before TVM loads (``prepare``),
under which settings the build runs (``build_context``: missing tools fail first), how the library
is written (``export``), what is checked before the artifact is kept (``verify``), and where the
library can run (``runs_on``: recorded in ``llmc-config.json``, so the runtime reads the fact instead
of re-deriving it). Adding a target is one ``TARGETS`` entry, plus a backend only when none fits.
Nothing here imports TVM at module level: ``prepare`` must run before ``import tvm``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmc.compiler.preset import Backend, TargetPreset
from llmc.errors import LlmcError

DEVICE_SOURCE_SUFFIX = {"opencl": ".cl", "metal": ".metal"}


@dataclass(frozen=True)
class CudaBackend(Backend):
    """NVIDIA GPUs: nvcc compiles the kernels at build time (a stub driver stands in on GPU-less machines)."""

    def prepare(self, preset: TargetPreset) -> None:
        from llmc.compiler.cuda import prepare_cuda_build

        prepare_cuda_build()

    @contextlib.contextmanager
    def build_context(self, preset: TargetPreset) -> Iterator[None]:
        """nvcc archs and no TIR CSE.

        TVM 0.27's TIR CommonSubexprElim emits a use before its definition in some paged-KV attention
        kernels (Llama-3.2-1B shapes: "variable cse_vN has been used before definition!"); nvcc does
        its own CSE, so CUDA builds skip TVM's.
        """
        from llmc.compiler.context import nested_pass_context
        from llmc.compiler.cuda import nvcc_for_archs

        context = nested_pass_context({"tirx.disable_cse_tir": True})  # keeps the memory-plan instrument
        with context, nvcc_for_archs(preset.cuda_archs):
            yield

    def verify(self, preset: TargetPreset, out_file: Path, system_lib_prefix: str | None) -> None:
        from llmc.compiler.cuda import library_has_device_code

        if not library_has_device_code(out_file):
            raise LlmcError(
                f"{out_file}: TVM stored CUDA source instead of compiled kernels (its CUDA runtime did not load). "
                "Build CUDA targets through the llmc command, which prepares nvcc and the driver before TVM loads."
            )


@dataclass(frozen=True)
class VulkanBackend(Backend):
    """TVM's WGSL kernels translated to SPIR-V (naga) and packed as TVM's ``vulkan`` module in a ``.so``."""

    @contextlib.contextmanager
    def build_context(self, preset: TargetPreset) -> Iterator[None]:
        from llmc.compiler.spirv import require_naga

        require_naga()  # WGSL -> SPIR-V happens at export: fail before the build, not after
        yield

    def export(self, executable, preset: TargetPreset, out_file: Path) -> None:
        from llmc.compiler.vulkan import export_library

        export_library(executable, out_file)

    def runs_on(self, preset: TargetPreset, library: str) -> dict:
        return {
            "here": True,
            "requires": "ffi.Module.load_from_bytes.vulkan",
            "message": f"compiled for {preset.name}; its SPIR-V kernels need a TVM runtime built with Vulkan "
            "(USE_VULKAN=ON), which the PyPI wheel lacks. Load it there with device 'vulkan', or compile "
            "for llvm/cuda to run it here.",
        }


@dataclass(frozen=True)
class WebBackend(Backend):
    """Browsers: WGSL kernels + wasm32 host code, linked with TVM's web runtime by emcc into one ``.wasm``."""

    runs_here = False

    @contextlib.contextmanager
    def build_context(self, preset: TargetPreset) -> Iterator[None]:
        from llmc.compiler.web import runtime_objects

        runtime_objects()  # emcc and the web runtime first: a clear error before the build, not after
        yield

    def export(self, executable, preset: TargetPreset, out_file: Path) -> None:
        from llmc.compiler.web import link_wasm

        executable.export_library(str(out_file), fcompile=link_wasm)

    def runs_on(self, preset: TargetPreset, library: str) -> dict:
        return {
            "here": False,
            "requires": None,
            "message": f"compiled for {preset.name}, which runs in a browser, not here. Write a web bundle "
            "(`llmc package --target webgpu`) or compile for llvm/cuda to run it locally.",
        }


@dataclass(frozen=True)
class CrossBackend(Backend):
    """A library for another device (a Mac): the kernels' source is written beside it for review."""

    runs_here = False

    def export(self, executable, preset: TargetPreset, out_file: Path) -> None:
        write_device_source(executable, out_file)
        if out_file.suffix == ".dylib":
            from tvm.support import xcode

            executable.export_library(str(out_file), fcompile=xcode.create_dylib, arch="arm64", sdk="macosx")
        else:
            executable.export_library(str(out_file))  # .tar: tvm.support.tar, objects only (no NDK/Xcode)

    def runs_on(self, preset: TargetPreset, library: str) -> dict:
        return {
            "here": False,
            "requires": None,
            "message": f"built for {preset.name} ({preset.device}); its library {library} cannot run on this "
            "machine. Link it into an app on the device (`llmc package`), or compile for this machine with "
            "--target llvm.",
        }


@dataclass(frozen=True)
class SystemLibBackend(CrossBackend):
    """Phones: a ``.tar`` of ``object_format`` / ``arch`` objects registered under the system-lib prefix."""

    object_format: str = "elf"  # elf | macho
    arch: str = "aarch64"

    def verify(self, preset: TargetPreset, out_file: Path, system_lib_prefix: str | None) -> None:
        from llmc.package.objfile import check_system_library

        check_system_library(out_file, system_lib_prefix, self.object_format, self.arch)


CUDA = CudaBackend()
VULKAN = VulkanBackend()
WEB = WebBackend()
MAC = CrossBackend()
ANDROID = SystemLibBackend("elf", "aarch64")
IOS = SystemLibBackend("macho", "arm64")


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
