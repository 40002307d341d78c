"""x86 CPU features: the instruction-set extensions a CPU library may use, and those this CPU has.

A library built for an x86 CPU target may use every extension LLVM enables for its ``mcpu`` and
``mattr``. Run on a CPU without one of them it dies with SIGILL at the first such instruction, so
the compiler records the extensions (``runs_on.cpu`` in ``llmc-config.json``) and the runtime
compares them with this CPU's before loading the library. Only the extensions that change the
instructions LLVM emits are compared: ``EXTENSIONS`` maps their LLVM names to the flags Linux
prints in ``/proc/cpuinfo`` (tuning flags such as ``fast-lzcnt``, and state-saving ones such as
``xsaves`` that a hypervisor may hide, are not). Standard library only: the runtime imports it.
"""

from __future__ import annotations

import platform
from pathlib import Path

# LLVM feature name -> Linux /proc/cpuinfo flag
EXTENSIONS: dict[str, str] = {
    "sse3": "pni",
    "ssse3": "ssse3",
    "sse4.1": "sse4_1",
    "sse4.2": "sse4_2",
    "sse4a": "sse4a",
    "popcnt": "popcnt",
    "lzcnt": "abm",
    "movbe": "movbe",
    "bmi": "bmi1",
    "bmi2": "bmi2",
    "adx": "adx",
    "aes": "aes",
    "pclmul": "pclmulqdq",
    "sha": "sha_ni",
    "f16c": "f16c",
    "fma": "fma",
    "avx": "avx",
    "avx2": "avx2",
    "avxvnni": "avx_vnni",
    "gfni": "gfni",
    "vaes": "vaes",
    "vpclmulqdq": "vpclmulqdq",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512cd": "avx512cd",
    "avx512dq": "avx512dq",
    "avx512vl": "avx512vl",
    "avx512ifma": "avx512ifma",
    "avx512vbmi": "avx512vbmi",
    "avx512vbmi2": "avx512_vbmi2",
    "avx512vnni": "avx512_vnni",
    "avx512bitalg": "avx512_bitalg",
    "avx512vpopcntdq": "avx512_vpopcntdq",
    "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16",
    "amx-tile": "amx_tile",
    "amx-int8": "amx_int8",
    "amx-bf16": "amx_bf16",
}

CPUINFO = Path("/proc/cpuinfo")


def is_x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def host_extensions(cpuinfo: Path | None = None) -> frozenset[str] | None:
    """The ``EXTENSIONS`` (LLVM names) this CPU has, read from the kernel's ``/proc/cpuinfo`` flags.

    None where that cannot be read (not Linux on x86-64): callers then check nothing.
    """
    if not is_x86_64():
        return None
    try:
        text = (cpuinfo or CPUINFO).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
            return frozenset(name for name, flag in EXTENSIONS.items() if flag in flags)
    return None


def missing_extensions(required: list[str], host: frozenset[str] | None = None) -> list[str]:
    """The extensions in ``required`` (LLVM names) this CPU lacks; [] when the host cannot be read.

    Names outside ``EXTENSIONS`` are not checked (a newer compiler may record more than this reader knows).
    """
    have = host_extensions() if host is None else host
    if have is None:
        return []
    return [name for name in required if name in EXTENSIONS and name not in have]
