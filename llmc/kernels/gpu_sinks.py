"""Attention sinks and key-position windows (GPT-OSS) or chunks (Llama 4) in TVM's GPU attention kernels.

The contract is the one llmc's CPU kernels keep (``cpu_attention._SinkRows``, ``AttentionSpec.sinks``): the cache is
built with every layer ``mha`` and one control query head after each KV group's heads, ``[sink logits of the
group's heads, slide flag, ...]``. While a GPU cache is built, TVM's kernel makers get variants that

* start a row's online softmax at its sink, in the one kernel call that holds the query's own key (key position
  ``k_rope_pos_offset[b] + index`` equal to ``q_rope_position``), so however TVM splits keys over the ragged and
  paged kernels and their depths, the sink enters the merged softmax once. TVM already starts each row at the state
  ``(m, d, O) = (-5e4, 1, 0)``, a key of logit -5e4 and value zero; the sink only sets that logit;
* drop keys a masked row (flag set) does not see, ``position <= q_position - window`` in a sliding layer or before
  ``q_position - q_position mod chunk`` in a chunked one, by storing their score as ``NO_KEY``: weight exactly zero
  in TVM's online softmax, whatever its running max.

Prefill (paged, ragged): ``_make_prefill_macros`` returns an ``init_states`` and a ``compute_s_gemm`` that run
TVM's own macro, then the sink or window step over the same tile. They are non-hygienic macros: they read the
names of TVM 0.27's paged and ragged prefill kernels where the macros are called (``q``, ``q_indptr``, ``b_idx``,
``LH_start``, ``by``, ``L_kv_start``, ``kv_chunk_len``, ``q_rope_position``, ``k_rope_pos_offset``, ``tx``,
``ty``). Decode (paged): ``_attention_decode`` from TVM's source with its initial running max and its score
store replaced (``llmc.kernels.tvm_source``); with several ``tz`` threads per row only ``tz == 0`` starts at the
sink, as TVM merges their states. Tree attention (``batch_verify`` with a token tree, unused by llmc) has neither.
"""

# ruff: noqa: F821 - the non-hygienic macros read names of the TVM kernels that call them (see the docstring)
from __future__ import annotations

import contextlib
import math

from tvm import tirx
from tvm.script import tirx as T

from llmc.kernels.tvm_source import patched_attention_makers, patched_function

LOG2E = math.log2(math.e)
# a dropped key's score: exp2(NO_KEY - m) is 0 for every running max m >= -5e4 (TVM's initial max); of the order
# of TVM's own mask value rather than -inf or -1e30, which a GPU's exp2 need not handle
NO_KEY = -1e5
DECODE_INIT = "# init states\n                                st_m[0] = -5e4"  # TVM 0.27's _attention_decode
DECODE_SCORE = "S_local[j] = t0[0]"


class _Rows:
    """Expressions over a query row ``(token, head)`` of a cache built for sinks, ``group`` heads per KV group
    (the control head last) and sliding layers' ``window``."""

    def __init__(self, group: int, window: int, chunk: int = 0, logits: bool = True):
        self.group, self.window, self.chunk, self.logits = group, window, chunk, logits

    @staticmethod
    def token(q_indptr, b, first_row, row, group_size):
        """The query token of a prefill tile's ``row`` (TVM's ``(LH_start + row) // group_size``), clamped to the
        sequence's last token for the tile's padding rows."""
        return T.min(q_indptr[b] + (first_row + row) // group_size, q_indptr[b + 1] - 1)

    def control(self, q, token, kv_head, index):
        return T.Cast("float32", q[token, kv_head * self.group + self.group - 1, index])

    def sink_init(self, q, token, kv_head, in_group, own, keys):
        """The row's initial running max (log2 units): its sink where ``0 <= own < keys``, else TVM's -5e4."""
        if not self.logits:
            return T.float32(-5e4)
        sink = self.control(q, token, kv_head, T.min(in_group, self.group - 2)) * T.float32(LOG2E)
        return T.if_then_else(tirx.all(own >= 0, own < keys), sink, T.float32(-5e4))

    def windowed(self, score, q, token, kv_head, key_position, q_position):
        """``score``, or NO_KEY for a key before the row's window or chunk (a masked row: flag set)."""
        if not (self.window or self.chunk):
            return score
        masked = self.control(q, token, kv_head, self.group - 1) > T.float32(0.5)
        first = q_position - self.window + 1 if self.window else q_position - T.floormod(q_position, self.chunk)
        return T.if_then_else(tirx.all(masked, key_position < first), T.float32(NO_KEY), score)


def _prefill_macros(make_macros, rows: _Rows):
    """``_make_prefill_macros`` whose ``init_states`` / ``compute_s_gemm`` add the sink / window step."""

    def macros(tile_x, tile_y, tile_z, tile_o, bdx, num_warps, group_size):
        made = list(make_macros(tile_x, tile_y, tile_z, tile_o, bdx, num_warps, group_size))
        init, gemm = made[0], made[1]  # (init_states, compute_s_gemm, softmax_update_causal, ...)
        threads = bdx * num_warps
        steps = (tile_x + threads - 1) // threads

        # a non-hygienic body sees the call site's names and its own arguments, not this closure: Python values
        # reach it as argument defaults
        @T.macro(hygienic=False)
        def init_states(
            m_smem,
            d_smem,
            O_local,
            ty,
            tx,
            _init=init,
            _rows=rows,
            _steps=steps,
            _x=tile_x,
            _n=threads,
            _bdx=bdx,
            _g=group_size,
        ):  # noqa: N803
            _init(m_smem, d_smem, O_local, ty, tx)
            for _i in T.serial(_steps):
                _row: T.let[T.int32] = _i * _n + ty * _bdx + tx
                if _row < _x:
                    _token: T.let[T.int32] = _rows.token(q_indptr, b_idx, LH_start, _row, _g)
                    m_smem[_row] = _rows.sink_init(
                        q,
                        _token,
                        by,
                        (LH_start + _row) % _g,
                        q_rope_position[_token] - k_rope_pos_offset[b_idx],
                        kv_chunk_len[0],
                    )
            T.tvm_storage_sync("shared")

        @T.macro(hygienic=False)
        def compute_s_gemm(
            Q_smem,
            K_smem,
            S_local,
            S_smem,
            sm_scale,
            _gemm=gemm,
            _rows=rows,
            _steps=steps,
            _x=tile_x,
            _n=threads,
            _z=tile_z,
            _bdx=bdx,
            _g=group_size,
        ):  # noqa: N803
            _gemm(Q_smem, K_smem, S_local, S_smem, sm_scale)
            for _i in T.serial(_steps):
                _row: T.let[T.int32] = _i * _n + ty * _bdx + tx
                with T.sblock("S_window"):
                    for _j in T.serial(_z):
                        if _row < _x:  # inside the loop, as TVM's softmax update: no sync lands in a branch
                            _token: T.let[T.int32] = _rows.token(q_indptr, b_idx, LH_start, _row, _g)
                            S_smem[_row, _j] = _rows.windowed(
                                S_smem[_row, _j],
                                q,
                                _token,
                                by,
                                k_rope_pos_offset[b_idx] + L_kv_start + _j,
                                q_rope_position[_token],
                            )
            T.tvm_storage_sync("shared")

        if rows.logits:  # else TVM's own start (-5e4) is already the row's
            made[0] = init_states
        if rows.window or rows.chunk:
            made[1] = compute_s_gemm
        return tuple(made)

    return macros


def _decode_maker(decode_module, rows: _Rows):
    """``_attention_decode`` from TVM's source with the sink start and the window (see the module docstring)."""
    init = DECODE_INIT.replace(
        "st_m[0] = -5e4",
        "st_m[0] = T.if_then_else(tz == 0, _llmc_rows.sink_init(Q, bx, by, bz * bdy + ty, "
        "q_rope_position[batch_idx] - k_rope_pos_offset[batch_idx], kv_chunk_len[0]), T.float32(-5e4))",
    )
    score = (
        "S_local[j] = _llmc_rows.windowed(t0[0], Q, bx, by, k_rope_pos_offset[batch_idx] + "
        "(iterator * bdz + tz) * bdy * tile_size_per_bdx + j, q_rope_position[batch_idx])"
    )
    replacements = [(DECODE_INIT, init), (DECODE_SCORE, score)]
    tag = f"sinks-{rows.group}-{rows.window}-{rows.chunk}-{rows.logits}"
    return patched_function(decode_module, "_attention_decode", replacements, {"_llmc_rows": rows}, tag)


def tvm_gpu_sinks(group: int, window: int, chunk: int = 0, logits: bool = True) -> contextlib.AbstractContextManager:
    """While a GPU paged KV cache is built, TVM's prefill and decode kernels read the control heads (``group`` query
    heads per KV group, the control head included): masked rows drop keys older than ``window`` or before their
    ``chunk``'s start (0: none), and with ``logits`` the sinks join each softmax."""
    rows = _Rows(group, window, chunk, logits)
    return patched_attention_makers(
        lambda make_macros: _prefill_macros(make_macros, rows), lambda module: _decode_maker(module, rows)
    )
