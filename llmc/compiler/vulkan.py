"""``--target vulkan``: a shared library whose kernels are SPIR-V in TVM's ``vulkan`` module format.

The TVM wheel has no ``target.build.vulkan`` (its SPIR-V codegen is not built in) and LLVM's SPIR-V
triples fail inside TVM. So llmc builds the model with TVM's WebGPU codegen (WGSL kernels) and an
x86-64 host, and at export replaces the imported ``webgpu`` module in the library's import blob by
a ``vulkan`` module: each kernel's WGSL rewritten to the Vulkan runtime's argument layout
(``llmc.compiler.spirv``), translated to SPIR-V by naga, validated by ``spirv-val``, and stored with
the function info TVM's Vulkan runtime reads (``llmc.compiler.tvm_format``).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from llmc.compiler import spirv
from llmc.compiler.tvm_format import (
    FLAG_USE_UBO,
    FunctionInfo,
    LibraryBlob,
    SpirvShader,
    read_library_blob,
    read_webgpu_module,
    write_library_blob,
    write_vulkan_module,
)

LIBRARY_SYMBOL = "__tvm_ffi__library_bin"


def vulkan_function_info(info: FunctionInfo) -> FunctionInfo:
    """The WebGPU function info minus its browser-only ``paramWriteAccess`` tag (Vulkan's runtime
    would read it as a thread axis)."""
    tags = [t for t in info.launch_param_tags if not t.startswith("paramWriteAccess")]
    return FunctionInfo(info.name, list(info.arg_types), tags, list(info.arg_extra_tags))


def webgpu_to_vulkan(data: bytes, validate: bool | None = None) -> bytes:
    """Serialized ``webgpu`` module -> serialized ``vulkan`` module (SPIR-V kernels)."""
    fmap, smap = read_webgpu_module(data)
    rewritten, flags = {}, {}
    for name, code in smap.items():
        rewritten[name], n_scalars = spirv.wgsl_for_vulkan(code)
        if n_scalars != len(fmap[name].scalar_types):
            raise spirv.SpirvError(f"{name}: {n_scalars} scalars in WGSL, {len(fmap[name].scalar_types)} in its info")
        flags[name] = FLAG_USE_UBO if n_scalars else 0
    words = {
        name: spirv.drop_capability(module, spirv.CAP_STORAGE_INPUT_OUTPUT_16)
        for name, module in spirv.wgsl_to_spirv(rewritten).items()
    }
    if validate is None:
        validate = shutil.which("spirv-val") is not None
        if not validate:
            print("llmc: warning: spirv-val not found; SPIR-V kernels not validated", file=sys.stderr)
    if validate:
        for name, module in words.items():
            spirv.spirv_val(module, name)
    shaders = {name: SpirvShader(flags[name], words[name]) for name in smap}
    return write_vulkan_module({k: vulkan_function_info(v) for k, v in fmap.items()}, shaders)


def convert_library_blob(blob: bytes) -> bytes:
    """Replace every ``webgpu`` module of a library blob by its ``vulkan`` conversion."""
    parsed = read_library_blob(blob)
    modules = [
        ("vulkan", webgpu_to_vulkan(data)) if kind == "webgpu" and data is not None else (kind, data)
        for kind, data in parsed.modules
    ]
    return write_library_blob(LibraryBlob(parsed.indptr, parsed.children, modules))


def blob_to_c(blob: bytes, symbol: str = LIBRARY_SYMBOL) -> str:
    """C source defining the exported byte array TVM's library loader looks up."""
    rows = ",\n".join("  " + ",".join(f"0x{b:02x}" for b in blob[i : i + 24]) for i in range(0, len(blob), 24))
    return (
        '#ifdef __cplusplus\nextern "C" {\n#endif\n'
        f"extern const unsigned char {symbol}[];\n"
        f'__attribute__((visibility("default"))) const unsigned char {symbol}[{len(blob)}] = {{\n{rows}\n}};\n'
        "#ifdef __cplusplus\n}\n#endif\n"
    )


def pack_imports(mod, is_system_lib: bool, symbol_prefix: str, workspace_dir: str) -> str:
    """``export_library(fpack_imports=...)``: TVM's import blob with WebGPU kernels turned into Vulkan ones."""
    import tvm

    if is_system_lib:
        raise spirv.SpirvError("--target vulkan builds a shared library; system-lib packing is not supported")
    tensor = tvm.get_global_func("runtime.ModulePackImportsToTensor")(mod)
    blob = convert_library_blob(bytes(tensor.numpy()))
    path = Path(workspace_dir) / f"{symbol_prefix}devc_vulkan.c"
    path.write_text(blob_to_c(blob))
    return str(path)


def export_library(executable, out_file: Path) -> None:
    """Export a relax executable built for the vulkan preset."""
    executable.export_library(str(out_file), fpack_imports=pack_imports)


def read_library(path: Path) -> LibraryBlob:
    """The import blob of an exported library, read back from its ``__tvm_ffi__library_bin`` symbol."""
    import ctypes

    lib = ctypes.CDLL(str(path))
    head = (ctypes.c_ubyte * 8).in_dll(lib, LIBRARY_SYMBOL)
    nbytes = int.from_bytes(bytes(head), "little")
    data = bytes((ctypes.c_ubyte * (nbytes + 8)).in_dll(lib, LIBRARY_SYMBOL))
    return read_library_blob(data)
