"""Attention soft-capping (Gemma 2: ``scores -> cap * tanh(scores / cap)``) in TVM's GPU attention kernels.

TVM 0.27's paged-KV-cache kernel makers take no soft-capping argument, so while a GPU cache is built this
module hands them variants with the cap applied where each kernel finishes a score, before its online
softmax (and before the causal / sliding-window masks):

* prefill (paged, ragged, sliding): ``_make_prefill_macros`` returns a ``compute_s_gemm`` whose store
  caps ``S``;
* decode (paged, sliding): ``_attention_decode`` is TVM's own source with the one line that stores the
  reduced score capped (``llmc.kernels.tvm_source``).

Scores there are in log2 units (``q.k * sm_scale * log2(e)``): the capped score is
``C * tanh(S / C)`` with ``C = cap * log2(e)``. Tree attention (``batch_verify``) is left uncapped.
"""

from __future__ import annotations

import contextlib
import math

from tvm.script import tirx as T

from llmc.kernels.tvm_source import patched_attention_makers, patched_function

DECODE_SCORE = "S_local[j] = t0[0]"  # the line of TVM 0.27's _attention_decode that stores a score


def _capped(value, cap_log2: float):
    return T.tanh(value * T.float32(1.0 / cap_log2)) * T.float32(cap_log2)


def _softcapped_s_gemm(tile_x: int, tile_y: int, tile_z: int, cap_log2: float):
    """TVM's ``compute_s_gemm`` macro (``_kernel_common._make_prefill_macros``) with a capped store."""

    @T.macro
    def compute_s_gemm(Q_smem, K_smem, S_local, S_smem, sm_scale):  # noqa: N803 - TVM's buffer names
        with T.sblock():
            for li, lj, lk in T.grid(tile_x, tile_z, tile_y):
                with T.sblock("S_gemm"):
                    i, j, k = T.axis.remap("SSR", [li, lj, lk])
                    with T.init():
                        S_local[i, j] = 0.0
                    S_local[i, j] += (
                        T.cast(Q_smem[i, k], "float32")
                        * T.cast(K_smem[j, k], "float32")
                        * sm_scale
                        * math.log2(math.exp(1))
                    )
        T.tvm_storage_sync("shared")
        for li, lj in T.grid(tile_x, tile_z):
            with T.sblock("S_store"):
                i, j = T.axis.remap("SS", [li, lj])
                S_smem[i, j] = _capped(S_local[i, j], cap_log2)
        T.tvm_storage_sync("shared")

    return compute_s_gemm


def _softcapped_decode_maker(decode_module, cap_log2: float):
    """``_attention_decode`` from TVM's source with the score store capped (see the module docstring)."""
    capped = f"S_local[j] = _llmc_capped(t0[0], {cap_log2!r})"
    return patched_function(
        decode_module, "_attention_decode", [(DECODE_SCORE, capped)], {"_llmc_capped": _capped}, f"softcap-{cap_log2!r}"
    )


def tvm_gpu_softcap(cap: float) -> contextlib.AbstractContextManager[None]:
    """While a GPU paged KV cache is built, TVM's prefill and decode kernels cap attention scores at ``cap``."""
    cap_log2 = cap * math.log2(math.e)

    def prefill_macros(make_macros):
        def capped_macros(tile_x, tile_y, tile_z, tile_o, bdx, num_warps, group_size):
            macros = list(make_macros(tile_x, tile_y, tile_z, tile_o, bdx, num_warps, group_size))
            macros[1] = _softcapped_s_gemm(tile_x, tile_y, tile_z, cap_log2)  # (init_states, compute_s_gemm, ...)
            return tuple(macros)

        return capped_macros

    return patched_attention_makers(prefill_macros, lambda module: _softcapped_decode_maker(module, cap_log2))
