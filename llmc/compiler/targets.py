"""Target presets by name: the TVM target, the library file kind and the host (``llmc targets``)."""

from __future__ import annotations

import re
from dataclasses import replace

from llmc.compiler import backends
from llmc.compiler.preset import Backend, TargetPreset
from llmc.errors import LlmcError


def _cuda(arch: str, description: str, name: str | None = None, archs: tuple[str, ...] = ()) -> TargetPreset:
    # the host code runs on whatever x86-64 CPU drives the GPU: no -mcpu=native there
    return TargetPreset(
        name or f"cuda:{arch}",
        description,
        {
            "kind": "cuda",
            "arch": arch,
            "max_threads_per_block": 1024,
            "max_shared_memory_per_block": 49152,
            "thread_warp_size": 32,
        },
        host={"kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu"},
        device="cuda",
        cuda_archs=archs or (arch,),
        backend=backends.CUDA,
    )


CUDA_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90a")  # architectures nvcc 13 builds that llmc names


def _cuda_fatbin(archs: tuple[str, ...], name: str, description: str) -> TargetPreset:
    """One library for several GPU generations: kernels generated for the oldest, SASS for each."""
    unknown = [a for a in archs if a not in CUDA_ARCHS]
    if unknown or not archs:
        raise LlmcError(
            f"unknown CUDA architecture(s) {', '.join(unknown) or '(none)'} in target {name!r}; "
            f"use '+' between names from: {', '.join(CUDA_ARCHS)}, e.g. cuda:sm_80+sm_90a."
        )
    ordered = tuple(sorted(set(archs), key=CUDA_ARCHS.index))
    return _cuda(ordered[0], description, name, ordered)


# float sums may be reassociated, so LLVM vectorizes dot products; no nnan/ninf (masks use -inf)
_FAST_MATH = {"fast-math-reassoc": True, "fast-math-contract": True}

TARGETS: dict[str, TargetPreset] = {
    "llvm": TargetPreset(
        "llvm",
        "CPU of this machine (x86-64/aarch64 via LLVM), shared library; runs on CPUs with the same extensions",
        {"kind": "llvm", "mcpu": "native", "num-cores": "native", **_FAST_MATH},
    ),
    "llvm:generic": TargetPreset(
        "llvm:generic",
        "any x86-64 Linux CPU from 2013 on (x86-64-v3: AVX2, FMA): a shared library to run on another machine",
        {"kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu", "mcpu": "x86-64-v3", **_FAST_MATH},
    ),
    "llvm:x86-64-v4": TargetPreset(
        "llvm:x86-64-v4",
        "x86-64 Linux CPUs with AVX-512 F/BW/CD/DQ/VL (Skylake-SP, Ice Lake, Zen 4 and later): a shared library",
        {"kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu", "mcpu": "x86-64-v4", **_FAST_MATH},
    ),
    "llvm:avx512vnni": TargetPreset(
        "llvm:avx512vnni",
        "x86-64-v4 + AVX512-VNNI (Cascade Lake, Ice Lake, Sapphire Rapids, Zen 4, Zen 5): int8 dot products "
        "with vpdpbusd on 512-bit vectors",
        {
            "kind": "llvm",
            "mtriple": "x86_64-unknown-linux-gnu",
            "mcpu": "x86-64-v4",
            "mattr": ["+avx512vnni"],
            **_FAST_MATH,
        },
    ),
    "llvm:avxvnni": TargetPreset(
        "llvm:avxvnni",
        "x86-64-v3 + AVX-VNNI (Alder Lake and later Intel cores, Zen 5): int8 dot products on 256-bit vectors",
        {
            "kind": "llvm",
            "mtriple": "x86_64-unknown-linux-gnu",
            "mcpu": "x86-64-v3",
            "mattr": ["+avxvnni"],
            **_FAST_MATH,
        },
    ),
    "cuda:sm_90a": _cuda("sm_90a", "NVIDIA Hopper (H100/H200): cubin for sm_90a, built with nvcc"),
    "cuda:sm_89": _cuda("sm_89", "NVIDIA Ada (RTX 40xx, L4, L40): cubin for sm_89"),
    "cuda:sm_80": _cuda("sm_80", "NVIDIA Ampere (A100, A10 via sm_86-compatible code): cubin for sm_80"),
    "cuda:fatbin": _cuda_fatbin(
        CUDA_ARCHS, "cuda:fatbin", "one library for Ampere..Hopper: SASS for sm_80/86/89/90a + sm_80 PTX"
    ),
    # kernels: TVM's WGSL codegen -> llmc's Vulkan layout -> SPIR-V (naga), packed as TVM's vulkan module
    "vulkan": TargetPreset(
        "vulkan",
        "Vulkan GPU on Linux x86-64: shared library with SPIR-V kernels (needs `make install-vulkan`)",
        {"kind": "webgpu", "max_num_threads": 256},
        host={"kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu"},
        device="vulkan",
        backend=backends.VULKAN,
    ),
    "webgpu": TargetPreset(
        "webgpu",
        "browsers with WebGPU: WGSL kernels + wasm32 host code linked by emcc into one .wasm (make install-web)",
        # SwiftShader and most adapters guarantee 256 invocations and 32 KiB workgroup memory
        {"kind": "webgpu", "max_num_threads": 256, "max_shared_memory_per_block": 32768},
        library_suffix=".wasm",
        device="webgpu",
        host={"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"},
        backend=backends.WEB,
    ),
}
ALIASES = {
    "cuda": "the GPU of this machine (cuda:sm_XX from nvidia-smi)",
    "cuda:sm_XX+sm_YY": "a fatbin for the listed architectures (e.g. cuda:sm_80+sm_90a)",
}


def _phone(name: str, description: str, target: dict, mtriple: str, backend: Backend) -> TargetPreset:
    """A static .tar of objects registered under a system-lib prefix, linked into an app on the device."""
    return TargetPreset(
        name,
        description,
        target,
        library_suffix=".tar",
        device=target["kind"],
        host={"kind": "llvm", "mtriple": mtriple},
        system_lib=True,
        backend=backend,
    )


TARGETS.update(
    {
        "android": _phone(
            "android",
            "Android phone GPU (OpenCL, aarch64): static .tar of objects with a system-lib prefix",
            {"kind": "opencl"},
            "aarch64-linux-android",
            backends.ANDROID,
        ),
        "android:adreno": _phone(
            "android:adreno",
            "Android phone with a Qualcomm Adreno GPU (OpenCL, adreno device flags), static .tar",
            {"kind": "opencl", "device": "adreno"},
            "aarch64-linux-android",
            backends.ANDROID,
        ),
        "iphone": _phone(
            "iphone",
            "iPhone/iPad GPU (Metal, arm64 iOS): static .tar of objects with a system-lib prefix",
            {"kind": "metal"},
            "arm64-apple-ios",
            backends.IOS,
        ),
        "metal": TargetPreset(
            "metal",
            "Apple Silicon Mac GPU (Metal, arm64 macOS): .dylib with Xcode's tools, else a .tar of objects",
            {"kind": "metal"},
            library_suffix=".dylib",
            device="metal",
            host={"kind": "llvm", "mtriple": "arm64-apple-macos"},
            backend=backends.MAC,
        ),
    }
)


def detect_cuda_arch() -> str | None:
    """``sm_XY`` of the first GPU nvidia-smi reports, or None."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    done = subprocess.run(
        ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True
    )
    capability = done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else ""
    if not capability:
        return None
    arch = "sm_" + capability.replace(".", "")
    return arch + "a" if arch == "sm_90" else arch


def get_target(name: str) -> TargetPreset:
    if name == "cuda":
        arch = detect_cuda_arch()
        if arch is None:
            raise LlmcError(
                "--target cuda builds for the GPU of this machine, and none was found; name the "
                f"architecture instead: {', '.join(n for n in TARGETS if n.startswith('cuda:'))}."
            )
        name = f"cuda:{arch}"
        if name not in TARGETS:
            return _cuda(arch, f"NVIDIA GPU of this machine ({arch})")
    if name.startswith("cuda:") and "+" in name:
        return _cuda_fatbin(tuple(name.removeprefix("cuda:").split("+")), name, "CUDA fatbin")
    if name not in TARGETS:
        raise LlmcError(f"unknown target {name!r}; known: {', '.join([*TARGETS, *ALIASES])} (see `llmc targets`).")
    preset = TARGETS[name]
    if preset.library_suffix == ".dylib" and not has_xcode():
        return replace(
            preset,
            library_suffix=".tar",
            note="Xcode's tools (xcrun) are not on this machine, so the library is a .tar of Mach-O objects; "
            "link it into a .dylib on a Mac: `tar xf model-metal.tar && clang -dynamiclib -o model-metal.dylib *.o "
            "-framework Metal -framework Foundation -undefined dynamic_lookup`.",
        )
    return preset


def has_xcode() -> bool:
    """Whether Xcode's command line tools (``xcrun``, needed for a .dylib) are on PATH."""
    import shutil

    return shutil.which("xcrun") is not None


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MIN_PREFIX_CHARS = 8


def default_system_lib_prefix(model_name: str, quant: str) -> str:
    """A C-identifier symbol prefix unique per model + quantization, e.g. ``smollm2_135m_q4f16_1_``.

    At least 8 characters, ending in ``_``, so that several models link into one app.
    """

    def clean(text: str) -> str:
        return re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_").lower()

    name, quant = clean(model_name), clean(quant)
    # a weights folder is often named <model>-<quant> already
    stem = name if quant and name.endswith(quant) else clean(f"{name}_{quant}")
    prefix = f"{stem}_"
    if not stem or stem[0].isdigit() or len(prefix) < MIN_PREFIX_CHARS:
        prefix = f"model_{prefix}" if stem else "llmc_model_"  # "model_" + 1 char + "_" is 8
    return prefix


def check_system_lib_prefix(prefix: str) -> str:
    """``prefix`` if it is a C identifier, else a clear error."""
    if not _IDENTIFIER.fullmatch(prefix):
        raise LlmcError(
            f"--system-lib-prefix {prefix!r} is not a C identifier: use letters, digits and '_' "
            "(not starting with a digit), e.g. 'mymodel_q4f16_1_'."
        )
    return prefix


def prepare_target(name: str) -> TargetPreset:
    """The target preset; for CUDA, nvcc and the driver are prepared first (before anything imports TVM)."""
    preset = get_target(name)
    preset.backend.prepare(preset)
    return preset
