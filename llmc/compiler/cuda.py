"""Build CUDA libraries that carry device code (cubin) on a machine with nvcc but no GPU.

TVM compiles CUDA kernels with nvcc only when its CUDA runtime library loads, and that library
links ``libcuda.so.1`` (the driver), which a GPU-less build machine lacks; TVM then silently stores
CUDA source instead. ``prepare_cuda_build`` must run before ``import tvm``: when no driver is
present it compiles a stub driver (every entry point answers "no device"; only the build needs the
library to load) and preloads it, and it selects nvcc as TVM's CUDA compiler.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from llmc.errors import LlmcError

# the driver entry points libtvm_runtime_cuda.so imports (apache-tvm 0.27: `nm -D --undefined-only`)
DRIVER_SYMBOLS = (
    "cuDeviceGetName",
    "cuFuncSetAttribute",
    "cuLaunchKernelEx",
    "cuModuleGetFunction",
    "cuModuleLoadData",
    "cuModuleUnload",
    "cuTensorMapEncodeTiled",
)
CUDA_ERROR_NO_DEVICE = 100
STUB_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmc" / "cuda-driver-stub"


def _stub_source() -> str:
    lines = [f"/* llmc: stand-in libcuda.so.1 for GPU-less builds; every call reports error {CUDA_ERROR_NO_DEVICE}. */"]
    lines += [f"int {name}(void) {{ return {CUDA_ERROR_NO_DEVICE}; }}" for name in DRIVER_SYMBOLS]
    for name, text in (("cuGetErrorName", "CUDA_ERROR_NO_DEVICE"), ("cuGetErrorString", "no CUDA driver")):
        lines.append(f'int {name}(int e, const char** s) {{ (void)e; *s = "{text} (llmc build stub)"; return 0; }}')
    return "\n".join(lines) + "\n"


def _build_stub() -> Path:
    library = STUB_DIR / "libcuda.so.1"
    source = _stub_source()
    source_file = STUB_DIR / "stub.c"
    if library.exists() and source_file.exists() and source_file.read_text() == source:
        return library
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise LlmcError("building CUDA libraries without a GPU needs a C compiler (cc/gcc) for llmc's driver stub.")
    STUB_DIR.mkdir(parents=True, exist_ok=True)
    source_file.write_text(source)
    tmp = STUB_DIR / f"libcuda.so.1.tmp{os.getpid()}"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O1", "-Wl,-soname,libcuda.so.1", "-o", str(tmp), str(source_file)],
        check=True,
        capture_output=True,
    )
    os.replace(tmp, library)
    return library


def prepare_cuda_build() -> None:
    """Make TVM's CUDA codegen call nvcc; must run before ``import tvm`` in this process."""
    if "tvm" in sys.modules:
        raise LlmcError("internal: prepare_cuda_build() must run before TVM is imported.")
    if shutil.which("nvcc") is None:
        raise LlmcError("CUDA targets need nvcc (the CUDA toolkit) on PATH to compile kernels to cubin.")
    os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)  # a real driver: nothing to stand in for
    except OSError:
        ctypes.CDLL(str(_build_stub()), mode=ctypes.RTLD_GLOBAL)


def library_has_device_code(library: Path) -> bool:
    """True when a built library embeds CUDA ELF (cubin/fatbin) sections rather than CUDA source."""
    data = library.read_bytes()
    return b".nv.info" in data and b'extern "C" __global__' not in data


def _gencode_flags(archs: tuple[str, ...]) -> list[str]:
    """nvcc flags: SASS for each arch, plus PTX of the oldest so newer GPUs can JIT it."""
    flags = []
    for arch in archs:
        flags += ["-gencode", f"arch=compute_{arch[3:]},code={arch}"]
    oldest = archs[0][3:]
    return flags + ["-gencode", f"arch=compute_{oldest},code=compute_{oldest}"]


@contextlib.contextmanager
def nvcc_for_archs(archs: tuple[str, ...]) -> Iterator[None]:
    """While active, TVM's CUDA kernels compile to one fatbin holding code for every arch in ``archs``."""
    if len(archs) < 2:
        yield
        return
    import tvm_ffi
    from tvm.support import nvcc

    default = tvm_ffi.get_global_func("tvm_callback_cuda_compile")

    def compile_fatbin(code: str) -> bytes:
        return nvcc.compile_cuda(code, target_format="fatbin", arch=_gencode_flags(archs), compiler="nvcc")

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_fatbin, override=True)
    try:
        yield
    finally:
        tvm_ffi.register_global_func("tvm_callback_cuda_compile", default, override=True)


FATBIN_MAGIC = 0xBA55ED50
FATBIN_KINDS = {1: "ptx", 2: "sass"}


def fatbin_entries(library: Path) -> list[tuple[str, str]]:
    """``(kind, sm_XY)`` for every entry of every fatbin embedded in ``library`` (kind: sass or ptx)."""
    data = library.read_bytes()
    magic = struct.pack("<I", FATBIN_MAGIC)
    entries: list[tuple[str, str]] = []
    start = data.find(magic)
    while start != -1:
        _, _, header_size, fat_size = struct.unpack_from("<IHHQ", data, start)
        offset, end = start + header_size, start + header_size + fat_size
        while offset + 32 <= min(end, len(data)):
            kind, _, entry_header, size = struct.unpack_from("<HHIQ", data, offset)
            (arch,) = struct.unpack_from("<I", data, offset + 28)
            if kind not in FATBIN_KINDS or entry_header < 32:
                break
            entries.append((FATBIN_KINDS[kind], f"sm_{arch}"))
            offset += entry_header + size
        start = data.find(magic, max(end, start + 1))
    return entries
