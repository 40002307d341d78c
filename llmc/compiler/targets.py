"""Target presets by name: the TVM target, the library file kind and the host (``llmc targets``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from llmc.errors import LlmcError


@dataclass(frozen=True)
class TargetPreset:
    """A named build target."""

    name: str
    description: str
    target: dict
    library_suffix: str = ".so"
    device: str = "cpu"
    host: dict = field(default_factory=dict)

    def tvm_target(self):
        import tvm

        target = dict(self.target)
        if target.get("mcpu") == "native":
            target["mcpu"] = tvm.target.codegen.llvm_get_system_cpu()
        if target.get("num-cores") == "native":
            target["num-cores"] = os.cpu_count() or 1
        if self.host:
            return tvm.target.Target(target, host=self.host)
        return tvm.target.Target(target)


def _cuda(arch: str, description: str) -> TargetPreset:
    # the host code runs on whatever x86-64 CPU drives the GPU: no -mcpu=native there
    return TargetPreset(
        f"cuda:{arch}",
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
    )


TARGETS: dict[str, TargetPreset] = {
    "llvm": TargetPreset(
        "llvm",
        "CPU of this machine (x86-64/aarch64 via LLVM), shared library",
        # float sums may be reassociated, so LLVM vectorizes dot products; no nnan/ninf (masks use -inf)
        {
            "kind": "llvm",
            "mcpu": "native",
            "num-cores": "native",
            "fast-math-reassoc": True,
            "fast-math-contract": True,
        },
    ),
    "cuda:sm_90a": _cuda("sm_90a", "NVIDIA Hopper (H100/H200): cubin for sm_90a, built with nvcc"),
    "cuda:sm_89": _cuda("sm_89", "NVIDIA Ada (RTX 40xx, L4, L40): cubin for sm_89"),
    "cuda:sm_80": _cuda("sm_80", "NVIDIA Ampere (A100, A10 via sm_86-compatible code): cubin for sm_80"),
    # kernels: TVM's WGSL codegen -> llmc's Vulkan layout -> SPIR-V (naga), packed as TVM's vulkan module
    "vulkan": TargetPreset(
        "vulkan",
        "Vulkan GPU on Linux x86-64: shared library with SPIR-V kernels (needs `make install-vulkan`)",
        {"kind": "webgpu", "max_num_threads": 256},
        host={"kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu"},
        device="vulkan",
    ),
    "webgpu": TargetPreset(
        "webgpu",
        "browsers with WebGPU: WGSL kernels + wasm32 host code linked by emcc into one .wasm (make install-web)",
        # SwiftShader and most adapters guarantee 256 invocations and 32 KiB workgroup memory
        {"kind": "webgpu", "max_num_threads": 256, "max_shared_memory_per_block": 32768},
        library_suffix=".wasm",
        device="webgpu",
        host={"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"},
    ),
}
ALIASES = {"cuda": "the GPU of this machine (cuda:sm_XX from nvidia-smi)"}


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
    if name not in TARGETS:
        raise LlmcError(f"unknown target {name!r}; known: {', '.join([*TARGETS, *ALIASES])} (see `llmc targets`).")
    return TARGETS[name]
