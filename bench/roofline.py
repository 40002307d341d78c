"""Rooflines for the peer benchmark: what this machine could do at best, to put each tok/s in proportion.

- Decode is memory-bound: each token reads every weight the matmuls use once, so its ceiling is
  ``read bandwidth / weight bytes per token``. Bandwidth: a STREAM-style read (a C sum over a 1 GiB array,
  ``gcc -O3 -march=native -fopenmp``), 1 and 2 threads. Weight bytes per token: the GGUF's tensor data minus the
  token embedding table (a row lookup), unless the output projection is tied to it (then it is read whole).
- Prefill is compute-bound: ``2 x matmul parameters`` integer ops per token against the ISA's int8 dot-product
  peak, ``cores x clock x int8 MACs per cycle per core x 2`` (attention's own FLOPs left out).

``python bench/roofline.py [GGUF ...]`` prints the bandwidths and each file's figures.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

STREAM_C = r"""
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    size_t n = (size_t)atoll(argv[1]) / sizeof(double);
    int passes = atoi(argv[2]);
    double *a = aligned_alloc(64, n * sizeof(double));
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) a[i] = (double)(i & 1023);
    double best = 1e30, sink = 0;
    for (int p = 0; p < passes; p++) {
        double t0 = omp_get_wtime(), s = 0;
        #pragma omp parallel for schedule(static) reduction(+:s)
        for (size_t i = 0; i < n; i++) s += a[i];
        double t = omp_get_wtime() - t0;
        sink += s;
        if (t < best) best = t;
    }
    printf("{\"bytes\": %zu, \"best_s\": %.9f, \"threads\": %d, \"sink\": %.1f}\n",
           n * sizeof(double), best, omp_get_max_threads(), sink);
    free(a);
    return 0;
}
"""

# int8 multiply-accumulates per cycle per core that the integer dot-product kernels can sustain, by ISA; the
# first whose extensions the CPU has applies. The assumptions, stated in the results:
INT8_PEAKS: list[tuple[frozenset[str], int, str]] = [
    (
        frozenset({"amx-int8"}),
        1024,
        "AMX-INT8: one 16x64 by 64x16 tile product (16,384 MACs) per 16 cycles",
    ),
    (
        frozenset({"avx512vnni", "avx512f"}),
        128,
        "AVX-512 VNNI: vpdpbusd zmm, 64 u8 x s8 MACs, 2 per cycle",
    ),
    (
        frozenset({"avxvnni"}),
        64,
        "AVX-VNNI: vpdpbusd ymm, 32 u8 x s8 MACs, 2 per cycle",
    ),
    (
        frozenset({"avx2"}),
        32,
        "AVX2 without VNNI: vpmaddubsw ymm (32 u8 x s8 MACs) needs a vpmaddwd to widen on the same 2 pipes: "
        "1 effective per cycle",
    ),
]


def weight_stats(path: Path) -> dict:
    """Bytes a decode step reads from the GGUF's weights, and the matmul parameters of one token."""
    import gguf

    reader = gguf.GGUFReader(path)
    total = embed = params = embed_params = 0
    names = set()
    for tensor in reader.tensors:
        names.add(tensor.name)
        total += int(tensor.n_bytes)
        if tensor.name == "token_embd.weight":
            embed, embed_params = int(tensor.n_bytes), int(tensor.n_elements)
        elif len(tensor.shape) >= 2 and int(min(tensor.shape)) > 1:
            params += int(tensor.n_elements)
    tied = "output.weight" not in names
    return {
        "tensor_bytes": total,
        "embedding_bytes": embed,
        "tied_output": tied,
        "bytes_per_token": total if tied else total - embed,
        "matmul_params": params + (embed_params if tied else 0),
    }


def decode_roofline(bandwidth_gb_s: float, bytes_per_token: int) -> float:
    """The decode ceiling in tok/s: every weight byte read once per token at ``bandwidth_gb_s`` (10^9 B/s)."""
    return bandwidth_gb_s * 1e9 / bytes_per_token


def int8_peak(extensions: set[str], cores: int, ghz: float) -> tuple[float, str]:
    """(int8 ops/s, the assumption) for ``cores`` cores at ``ghz``: 2 ops per MAC."""
    for needs, macs, why in INT8_PEAKS:
        if needs <= extensions:
            return cores * ghz * 1e9 * macs * 2, f"{cores} cores x {ghz:.2f} GHz x {macs} MACs/cycle x 2 ({why})"
    return cores * ghz * 1e9 * 8 * 2, f"{cores} cores x {ghz:.2f} GHz x 8 MACs/cycle x 2 (SSE, assumed)"


def prefill_roofline(peak_ops_s: float, matmul_params: int) -> float:
    """The prefill ceiling in tok/s: 2 ops per matmul parameter per token at ``peak_ops_s``."""
    return peak_ops_s / (2 * matmul_params)


def cpu_ghz() -> float:
    """The clock /proc/cpuinfo reports (cpu MHz of the first core; the nominal clock on most VMs)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return float(line.split(":", 1)[1]) / 1000
    return 1.0


def stream_read(threads: list[int], size_bytes: int = 1 << 30, passes: int = 5) -> dict[int, float]:
    """{threads: GB/s} of a sum over ``size_bytes`` of doubles, best of ``passes`` (gcc -O3 -march=native)."""
    if not shutil.which("gcc"):
        raise RuntimeError("gcc is needed for the bandwidth measurement")
    out: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="llmc-stream-") as tmp:
        src, exe = Path(tmp) / "stream.c", Path(tmp) / "stream"
        src.write_text(STREAM_C)
        subprocess.run(["gcc", "-O3", "-march=native", "-ffast-math", "-fopenmp", str(src), "-o", str(exe)], check=True)
        for n in threads:
            env = {**os.environ, "OMP_NUM_THREADS": str(n), "OMP_PROC_BIND": "spread"}
            proc = subprocess.run([str(exe), str(size_bytes), str(passes)], env=env, capture_output=True, text=True)
            proc.check_returncode()
            row = json.loads(proc.stdout)
            out[n] = round(row["bytes"] / row["best_s"] / 1e9, 2)
    return out


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from llmc.cpu_features import host_extensions

    bandwidth = stream_read([1, 2])
    print(f"read bandwidth GB/s: {bandwidth}")
    peak, why = int8_peak(host_extensions() or set(), os.cpu_count() or 1, cpu_ghz())
    print(f"int8 peak: {peak / 1e9:.0f} Gop/s ({why})")
    for arg in sys.argv[1:]:
        stats = weight_stats(Path(arg))
        ceilings = {t: round(decode_roofline(b, stats["bytes_per_token"]), 1) for t, b in bandwidth.items()}
        print(f"{arg}: {stats}; decode ceiling tok/s {ceilings}; prefill ceiling "
              f"{prefill_roofline(peak, stats['matmul_params']):.0f} tok/s")  # fmt: skip


if __name__ == "__main__":
    main()
