"""The CMake flags that build llama.cpp for this machine's CPU: each GGML ISA switch on exactly when the CPU
has the extensions it enables (read from /proc/cpuinfo), so the peer never dies of SIGILL on a CPU that lacks
one and never runs below what the CPU offers. Printed on one line for the Makefile's CMAKE_ARGS."""

from __future__ import annotations

import sys

from llmc.cpu_features import host_extensions

# GGML option -> the LLVM-named extensions it lets the compiler use
GGML_SWITCHES = {
    "GGML_AVX": {"avx"},
    "GGML_AVX2": {"avx2"},
    "GGML_FMA": {"fma"},
    "GGML_F16C": {"f16c"},
    "GGML_BMI2": {"bmi2"},
    "GGML_AVX_VNNI": {"avxvnni"},
    "GGML_AVX512": {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"},
    "GGML_AVX512_VBMI": {"avx512vbmi"},
    "GGML_AVX512_VNNI": {"avx512vnni"},
    "GGML_AVX512_BF16": {"avx512bf16"},
    "GGML_AMX_TILE": {"amx-tile"},
    "GGML_AMX_INT8": {"amx-int8"},
    "GGML_AMX_BF16": {"amx-bf16"},
}
FIXED = ["-DGGML_NATIVE=OFF", "-DLLAVA_BUILD=OFF"]


def cmake_args() -> list[str]:
    have = host_extensions()
    if have is None:  # not x86-64 Linux: the compiler's -march=native
        return ["-DGGML_NATIVE=ON", "-DLLAVA_BUILD=OFF"]
    avx512 = GGML_SWITCHES["GGML_AVX512"] <= have
    flags = []
    for option, needs in GGML_SWITCHES.items():
        on = needs <= have and (avx512 or not option.startswith("GGML_AVX512_"))
        flags.append(f"-D{option}={'ON' if on else 'OFF'}")
    return FIXED + flags


if __name__ == "__main__":
    sys.stdout.write(" ".join(cmake_args()) + "\n")
