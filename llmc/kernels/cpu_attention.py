"""CPU kernels for TVM's paged KV cache (attention, RoPE): parallel and vectorized, in place of TVM's serial ones.

TVM 0.27's ``TIRPagedKVCache`` builds its CPU attention from ``_attention_prefill_ragged_cpu``,
``_attention_prefill_cpu`` and ``_attention_decode_cpu``: one thread, scores for every (query, key)
pair including the masked half, strided score buffers. They took 60% of a 512-token prefill and a
quarter of each decode step of SmolLM2-135M. ``llmc_cpu_attention()`` swaps in the kernels below
(same signatures, same outputs: attention output and its log2-sum-exp, which merge_state combines)
while the cache is constructed.

Each (query row, query head) is one parallel work item. Keys are visited in chunks of
``CHUNK`` (= the page size for paged kernels: one chunk is one page) with an online softmax: the
scores of a chunk, one rescale of the output row, then the weighted values. Masked keys are skipped,
not computed. Only ``rotary_mode == 0`` (RoPE applied when K is stored, llmc's ``RopeMode.NORMAL``,
or by the model with ``RopeMode.NONE``) is covered. Per-layer sliding windows (``mha_sliding`` layers)
are: their pages start ``length_info[1, b]`` slots into the first page (no attention sinks: llmc
never enables them), and a prefill row sees the last ``window - row - 1`` cached keys (TVM's mask).
Gemma 2's attention soft-capping (``cap * tanh(score / cap)`` before the softmax) is a constant of the
kernels, given to ``llmc_cpu_attention(softcap)``: TVM's kernels have no such option.

Evicting caches (``llmc_cpu_attention(evict_window=W)``: every layer a W-token window, built as TVM's
whole-cache sliding window, which the runtime slides per sequence): TVM passes ``causal=0`` and keeps
the last W - 1 tokens, so the kernels themselves mask each row to its window; and TVM then stores keys
un-rotated (``rotary_mode`` 1, RoPE at positions within the window: relative positions are preserved),
so each kernel call rotates the cached keys once into a scratch buffer (cos/sin table per position)
and each query row as it starts. With a cache created without sliding (C++/web runtimes) the same
kernels mask only, RoPE applied when keys are stored.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator

from tvm.script import tirx as T

from llmc.kernels.cpu_silu import EXP2_TAYLOR
from llmc.kernels.parse_speed import memoized_kernel

CHUNK = 16
LOG2E = math.log2(math.e)
NEG_INIT = -5e4  # TVM's initial running max (its merge_state expects the same for empty rows)


def _exp2(x, lanes: int):
    """``2**x`` for a float32 vector with ``x <= 0``: the vector form of ``llmc.kernels.cpu_silu.fast_exp``
    (LLVM has no vector exp2 without a vector math library)."""
    x = T.max(x, T.broadcast(T.float32(-126), lanes))
    n = T.nearbyint(x)
    f = x - n
    poly = T.broadcast(T.float32(EXP2_TAYLOR[-1]), lanes)
    for coefficient in reversed(EXP2_TAYLOR[:-1]):
        poly = poly * f + T.broadcast(T.float32(coefficient), lanes)
    exponent = (T.Cast(f"int32x{lanes}", n) + T.broadcast(127, lanes)) << T.broadcast(23, lanes)
    return poly * T.reinterpret(exponent, dtype=f"float32x{lanes}")


def _lanes(d: int) -> int:
    return next(w for w in (16, 8, 4, 2, 1) if d % w == 0)


def _capped(score, softcap: float):
    """A score in log2 units; with ``softcap`` (Gemma 2) the scaled score is ``cap * tanh(s / cap)`` first."""
    if not softcap:
        return score
    return T.tanh(score * T.float32(1.0 / softcap)) * T.float32(softcap * LOG2E)


def _row_attention(d: int, dtype: str, paged: bool, group: int, softcap: float = 0.0, inline_rope: dict | None = None):
    """A TVMScript macro: online-softmax attention of query ``q[token, h]`` over keys ``[start, end)``.

    Keys are ``keys[key_base + j, h // group]`` (ragged q/k/v) or, ``paged``, slot ``j`` of the
    sequence's pages ``keys[page_values[key_base + j // CHUNK], 0|1, h // group, j % CHUNK]``. A row
    with no key (``start == end``) gets a zero output and a log-sum-exp TVM's merge weighs as nothing.
    Head vectors are handled ``lanes`` floats at a time (explicit vectors: LLVM does not vectorize
    the reductions through TVM's local buffers on its own).

    ``inline_rope`` (the rope scaling dict; evicting caches): when the cache says ``rotary > 0`` the stored
    keys are un-rotated: the query is rotated at row ``q_row`` of ``table`` (cos, sin per row; a row past
    ``rows`` is computed directly, the row being the position) and keys are read from ``rkeys``, the
    kernel's keys rotated once per call.
    """
    lanes = _lanes(d)
    steps = d // lanes
    q_unit = 1.0 if softcap else LOG2E  # soft-capping needs the plain score, log2 units come after it

    def kv_vec(buf, key_base, page, c, j, h, e, which):
        """Lanes ``e`` of key/value (``which`` 0/1) ``c * CHUNK + j`` for query head ``h``, as float32."""
        if paged:
            return T.Cast(f"float32x{lanes}", buf[page, which, h // group, j, T.ramp(e * lanes, 1, lanes)])
        return T.Cast(f"float32x{lanes}", buf[key_base + c * CHUNK + j, h // group, T.ramp(e * lanes, 1, lanes)])

    def vec(buf, e):
        return buf[T.ramp(e * lanes, 1, lanes)]

    def hsum(part, n=lanes):
        """The sum of a local vector's ``n`` lanes, as a pairwise tree (PrimExpr)."""
        terms = [part[i] for i in range(n)]
        while len(terms) > 1:
            terms = [terms[i] + terms[i + 1] for i in range(0, len(terms), 2)]
        return terms[0]

    @T.macro
    def fold(part):
        """Halve the vector until two lanes are left (vector adds instead of a scalar tree)."""
        if lanes >= 16:
            part[T.ramp(0, 1, 8)] = part[T.ramp(0, 1, 8)] + part[T.ramp(8, 1, 8)]
        if lanes >= 8:
            part[T.ramp(0, 1, 4)] = part[T.ramp(0, 1, 4)] + part[T.ramp(4, 1, 4)]
        if lanes >= 4:
            part[T.ramp(0, 1, 2)] = part[T.ramp(0, 1, 2)] + part[T.ramp(2, 1, 2)]

    def rotated_query(q, token, h, table, rows, row, e, theta):
        return _rotated(inline_rope, d, lambda i: T.Cast("float32", q[token, h, i]), table, rows, row, e, theta)

    def rotated_vec(rkeys, key_base, c, j, h, e):
        """Lanes ``e`` of a key rotated beforehand (``rotate_paged_keys`` / ``rotate_ragged_keys``)."""
        if paged:
            return rkeys[key_base + c, h // group, j, T.ramp(e * lanes, 1, lanes)]
        return rkeys[key_base + c * CHUNK + j, h // group, T.ramp(e * lanes, 1, lanes)]

    @T.macro
    def attend(
        q, token, h, start, end, keys, values, key_base, page_values, output, lse, sm_scale,
        rotary, table, rows, q_row, rkeys, theta, init_max,
    ):  # fmt: skip
        acc = T.decl_buffer((d,), "float32")
        qf = T.decl_buffer((d,), "float32")
        kf = T.decl_buffer((d,), "float32")
        part = T.decl_buffer((lanes,), "float32")
        scores = T.decl_buffer((CHUNK,), "float32")
        # scalars live in small buffers: TVM 0.27 turns let-bound values in parallel bodies into heap workspaces
        state = T.decl_buffer((4,), "float32")  # running max, running sum, new max, weight
        page = T.decl_buffer((1,), "int32")
        for e in range(steps):
            acc[T.ramp(e * lanes, 1, lanes)] = T.broadcast(T.float32(0), lanes)
            qf[T.ramp(e * lanes, 1, lanes)] = T.Cast(
                f"float32x{lanes}", q[token, h, T.ramp(e * lanes, 1, lanes)]
            ) * T.broadcast(sm_scale * T.float32(q_unit), lanes)
        if inline_rope is not None:  # noqa: SIM102 - a parse-time branch around a TIR one
            if rotary > 0:
                for e in range(d):
                    kf[e] = rotated_query(q, token, h, table, rows, q_row, e, theta)
                for e in range(d):
                    qf[e] = kf[e] * sm_scale * T.float32(q_unit)
        state[0] = init_max  # NEG_INIT, or the sink: a first key of weight 1 and value zero
        state[1] = T.float32(1)
        for c in range(start // CHUNK, (end + CHUNK - 1) // CHUNK):
            page[0] = page_values[key_base + c] if paged else 0
            state[2] = state[0]
            for j in range(CHUNK):
                if start <= c * CHUNK + j and c * CHUNK + j < end:
                    part[T.ramp(0, 1, lanes)] = T.broadcast(T.float32(0), lanes)
                    if inline_rope is not None:
                        if rotary > 0:
                            for e in range(steps):
                                part[T.ramp(0, 1, lanes)] = part[T.ramp(0, 1, lanes)] + vec(qf, e) * rotated_vec(
                                    rkeys, key_base, c, j, h, e
                                )
                        else:
                            for e in range(steps):
                                part[T.ramp(0, 1, lanes)] = part[T.ramp(0, 1, lanes)] + vec(qf, e) * kv_vec(
                                    keys, key_base, page[0], c, j, h, e, 0
                                )
                    else:
                        for e in range(steps):
                            part[T.ramp(0, 1, lanes)] = part[T.ramp(0, 1, lanes)] + vec(qf, e) * kv_vec(
                                keys, key_base, page[0], c, j, h, e, 0
                            )
                    fold(part)
                    scores[j] = _capped(part[0] + part[1], softcap)
                    state[2] = T.max(state[2], scores[j])
            state[3] = T.exp2(state[0] - state[2])
            state[1] = state[1] * state[3]
            for e in range(steps):
                acc[T.ramp(e * lanes, 1, lanes)] = vec(acc, e) * T.broadcast(state[3], lanes)
            state[0] = state[2]
            # the chunk's weights in one vector exp2 (libm's exp2f per key cost more than the dot products)
            scores[T.ramp(0, 1, CHUNK)] = T.Select(
                (T.ramp(c * CHUNK, 1, CHUNK) < T.broadcast(end, CHUNK))
                & (T.ramp(c * CHUNK, 1, CHUNK) >= T.broadcast(start, CHUNK)),
                _exp2(scores[T.ramp(0, 1, CHUNK)] - T.broadcast(state[0], CHUNK), CHUNK),
                T.broadcast(T.float32(0), CHUNK),
            )
            state[1] = state[1] + hsum(scores, CHUNK)
            for j in range(CHUNK):
                if start <= c * CHUNK + j and c * CHUNK + j < end:
                    for e in range(steps):
                        acc[T.ramp(e * lanes, 1, lanes)] = vec(acc, e) + T.broadcast(scores[j], lanes) * kv_vec(
                            values, key_base, page[0], c, j, h, e, 1
                        )
        for e in range(steps):
            output[token, h, T.ramp(e * lanes, 1, lanes)] = T.Cast(
                f"{dtype}x{lanes}", vec(acc, e) * T.broadcast(T.float32(1) / state[1], lanes)
            )
        lse[token, h] = state[0] + T.log2(state[1])

    return attend


class _SinkRows:
    """Rows of kernels built for control heads (``llmc.models.control_heads``), as parse-time expressions.

    The last query head of each group of ``group`` is a control head: ``[sink logits of the group's other heads,
    mask flag, ...]``; its own row attends to nothing. A key's position is ``k_first`` plus its index in the kernel
    call: a masked row (flag set) sees positions past ``q_pos - window`` (a sliding layer) or from its chunk's
    start, ``q_pos - q_pos mod chunk`` (a chunked layer). With ``logits`` the sink joins the row (a first key of
    logit ``sink``, weight 1 and value zero) in the kernel call that holds the query's own key, position ``q_pos``,
    so it is counted once however TVM splits the keys over kernels and merges their states. Without ``sinks`` (no
    control heads) the rows are as before: ``[start, end)`` and a running max from NEG_INIT."""

    def __init__(self, sinks: bool, group: int, window: int, chunk: int = 0, logits: bool = True):
        self.sinks, self.group, self.window, self.chunk, self.logits = sinks, group, window, chunk, logits

    def _control(self, h):
        return h - h % self.group + self.group - 1

    def part(self, which: int, q, token, h, q_pos, k_first, start, end):
        """The row's first key (0), end (1) or initial running max (2): one expression each, as TVMScript inlines
        them (a let-bound value in a parallel body would become a heap workspace)."""
        if which == 0:
            return self.start(q, token, h, q_pos, k_first, start)
        return self.end(h, start, end) if which == 1 else self.init(q, token, h, q_pos, k_first, start, end)

    def start(self, q, token, h, q_pos, k_first, start):
        if not (self.sinks and (self.window or self.chunk)):
            return start
        masked = T.Cast("float32", q[token, self._control(h), self.group - 1]) > T.float32(0.5)
        first = q_pos - self.window + 1 if self.window else q_pos - T.floormod(q_pos, self.chunk)
        return T.if_then_else(masked, T.max(start, first - k_first), start)

    def end(self, h, start, end):
        return T.if_then_else(h % self.group == self.group - 1, start, end) if self.sinks else end

    def init(self, q, token, h, q_pos, k_first, start, end):
        from tvm import tirx

        if not (self.sinks and self.logits):
            return T.float32(NEG_INIT)
        own = q_pos - k_first  # the query's own key, in this call's key indices (inside any window)
        sink = T.Cast("float32", q[token, self._control(h), T.min(h % self.group, self.group - 2)])
        return T.if_then_else(tirx.all(start <= own, own < end), sink * T.float32(LOG2E), T.float32(NEG_INIT))


def _visible(causal, row, kv_len, qo_len):
    """Keys ``[0, n)`` visible to query ``row`` (TVM's causal mask: col < kv_len - qo_len + row + 1)."""
    return T.if_then_else(causal > 0, T.max(T.min(kv_len - qo_len + row + 1, kv_len), 0), kv_len)


def _paged_len(page_indptr, length_info, b, page_size, sliding: bool = False):
    """Keys cached for sequence ``b``: full pages plus the used part of the last one, less a sliding
    window's offset into its first page."""
    pages = page_indptr[b + 1] - page_indptr[b]
    if sliding:
        return T.if_then_else(pages > 0, (pages - 1) * page_size + length_info[0, b] - length_info[1, b], 0)
    return T.if_then_else(pages > 0, (pages - 1) * page_size + length_info[b], 0)


def _named(func, sliding: bool):
    """A sliding-window kernel's own symbol (the cache holds both variants), as TVM names them."""
    name = str(func.attrs["global_symbol"])
    return func.with_attr("global_symbol", f"{name}_sliding_window") if sliding else func


def _decode_start(length_info, b, sliding: bool):
    """A decode row sees every cached key (the window's pages were chosen by the cache): from the
    window's offset into its first page."""
    return length_info[1, b] if sliding else 0


def _decode_skip(page_indptr, length_info, b, page_size, sliding: bool, visible: int):
    """Cached keys a decode row skips: those before its last ``visible`` (0: sees them all)."""
    if not visible:
        return 0
    return T.max(_paged_len(page_indptr, length_info, b, page_size, sliding) - visible, 0)


def _window_offset(length_info, b, sliding: bool):
    """Where a sliding variant's keys start in their first page (0 for the full-attention variant)."""
    return length_info[1, b] if sliding else 0


def _paged_start(causal, row, page_indptr, length_info, b, page_size, window, evict_window, sliding):
    """First page slot a prefill row sees: a sliding window's offset plus the keys before its window
    (TVM's ``_causal_or_sliding_cross_mask``: the last ``window - row - 1`` cached keys; an evicting
    cache's window applies whatever ``causal`` says)."""
    if evict_window:
        kv_len = _paged_len(page_indptr, length_info, b, page_size, sliding)
        return _window_offset(length_info, b, sliding) + _evicting_start(row, kv_len, evict_window)
    if not window:
        return 0
    kv_len = _paged_len(page_indptr, length_info, b, page_size, sliding=True)
    return length_info[1, b] + T.if_then_else(causal > 0, T.max(kv_len - T.max(window - row - 1, 0), 0), 0)


def _prefill_end(causal, row, page_indptr, length_info, b, page_size, window, q_indptr, sliding):
    """One past the last page slot a prefill row sees."""
    if window:
        return _window_offset(length_info, b, sliding) + _paged_len(page_indptr, length_info, b, page_size, sliding)
    kv_len = _paged_len(page_indptr, length_info, b, page_size)
    return _visible(causal, row, kv_len, q_indptr[b + 1] - q_indptr[b])


def _rope_entry(rope_scaling: dict, position, e, d: int, theta, which: int):
    """cos (``which`` 0) or sin of RoPE element ``e``'s angle at ``position`` (TVM's frequency formulas)."""
    from tvm import tirx
    from tvm.relax.frontend.nn.llm.position_embedding import switch_rope_freq_func

    cos, sin, var_map = switch_rope_freq_func(rope_scaling)(position, e, d, theta, "float32")
    expr = cos if which == 0 else sin
    for var, value in var_map.items():
        expr = tirx.Let(var, value, expr)
    return expr


def _rotated(rope_scaling: dict, d: int, load, table, rows, row, e, theta):
    """Element ``e`` of a head vector (``load(i)``: element ``i`` as float32) rotated HF rotate-half style
    with the cos/sin of ``table[row]`` (a row past ``rows`` is computed directly, the row being the position)."""
    half = d // 2

    def trig(which):
        direct = _rope_entry(rope_scaling, T.Cast("float32", row), e, d, theta, which)
        return T.if_then_else(row < rows, table[T.min(row, rows - 1), which * half + e % half], direct)

    partner = T.if_then_else(e < half, -load(T.min(e + half, d - 1)), load(T.max(e - half, 0)))
    return load(e) * trig(0) + partner * trig(1)


def _rotation(half: int, lanes: int):
    """Expressions of HF rotate-half RoPE on lanes ``v`` of a head vector's halves, given
    ``load(start)``: the float32 vector of ``lanes`` elements from ``start``; cos then sin in table row."""

    def first(load, table, row, v):  # x1 * cos - x2 * sin
        return (
            load(v * lanes) * table[row, T.ramp(v * lanes, 1, lanes)]
            - load(half + v * lanes) * table[row, T.ramp(half + v * lanes, 1, lanes)]
        )

    def second(load, table, row, v):  # x2 * cos + x1 * sin
        return (
            load(half + v * lanes) * table[row, T.ramp(v * lanes, 1, lanes)]
            + load(v * lanes) * table[row, T.ramp(half + v * lanes, 1, lanes)]
        )

    return first, second


def _rotate_ragged_keys(rope_scaling: dict, h_kv: int, d: int):
    """A TVMScript macro: ``rkeys[t] = k[t]`` rotated at table row ``t`` (the chunk's token ``t``)."""
    half = d // 2
    lanes = _lanes(half)
    first, second = _rotation(half, lanes)

    def vector(k, t, hk):
        return lambda start: T.Cast(f"float32x{lanes}", k[t, hk, T.ramp(start, 1, lanes)])

    @T.macro
    def rotate(rkeys, k, kv_len, table, rows, theta):
        for t in T.parallel(T.min(kv_len, rows)):
            for hk in range(h_kv):
                for v in range(half // lanes):
                    rkeys[t, hk, T.ramp(v * lanes, 1, lanes)] = first(vector(k, t, hk), table, t, v)
                    rkeys[t, hk, T.ramp(half + v * lanes, 1, lanes)] = second(vector(k, t, hk), table, t, v)

    return rotate


def _rotate_paged_keys(rope_scaling: dict, h_kv: int, d: int, page_size: int, sliding: bool):
    """A TVMScript macro: the cached keys of every sequence rotated at their positions in the window (the
    window's first slot is position ``k_rope_pos_offset``), into ``rkeys[page entry, head, slot]``; a
    position past the table (a forked sequence's offset) is rotated element by element."""
    half = d // 2
    lanes = _lanes(half)
    first, second = _rotation(half, lanes)

    def vector(pages, page_values, entry, hk, j):
        return lambda start: T.Cast(f"float32x{lanes}", pages[page_values[entry], 0, hk, j, T.ramp(start, 1, lanes)])

    def element(pages, page_values, entry, table, rows, position, hk, j, e, theta):
        def load(i):
            return T.Cast("float32", pages[page_values[entry], 0, hk, j, i])

        return _rotated(rope_scaling, d, load, table, rows, position, e, theta)

    def position(k_rope_pos_offset, length_info, b, page, j):
        # slots before the window's offset are never read: clamp their (negative) positions
        return T.max(k_rope_pos_offset[b] + page * page_size + j - _window_offset(length_info, b, sliding), 0)

    @T.macro
    def rotate(rkeys, pages, page_indptr, page_values, length_info, k_rope_pos_offset, batch, table, rows, theta):
        for b in T.serial(batch):
            for item in T.parallel((page_indptr[b + 1] - page_indptr[b]) * h_kv):
                for j in range(page_size):
                    if position(k_rope_pos_offset, length_info, b, item // h_kv, j) < rows:
                        for v in range(half // lanes):
                            rkeys[page_indptr[b] + item // h_kv, item % h_kv, j, T.ramp(v * lanes, 1, lanes)] = first(
                                vector(pages, page_values, page_indptr[b] + item // h_kv, item % h_kv, j),
                                table,
                                position(k_rope_pos_offset, length_info, b, item // h_kv, j),
                                v,
                            )
                            rkeys[page_indptr[b] + item // h_kv, item % h_kv, j, T.ramp(half + v * lanes, 1, lanes)] = (
                                second(
                                    vector(pages, page_values, page_indptr[b] + item // h_kv, item % h_kv, j),
                                    table,
                                    position(k_rope_pos_offset, length_info, b, item // h_kv, j),
                                    v,
                                )
                            )
                    else:
                        for e in range(d):
                            rkeys[page_indptr[b] + item // h_kv, item % h_kv, j, e] = element(
                                pages,
                                page_values,
                                page_indptr[b] + item // h_kv,
                                table,
                                rows,
                                position(k_rope_pos_offset, length_info, b, item // h_kv, j),
                                item % h_kv,
                                j,
                                e,
                                theta,
                            )

    return rotate


def _fill_rope_table(rope_scaling: dict, d: int, by_position: bool):
    """A TVMScript macro: ``table[row] = cos, sin`` of every frequency at the row's position, rows in
    parallel (one table per kernel call instead of trigonometry per key and query head).

    ``by_position`` (paged kernels): the row is the position, and the table is made from two small ones,
    angles ``CHUNK * a`` and ``b`` (cos/sin of a sum: a decode step's table costs ``rows / CHUNK + CHUNK``
    evaluations per frequency instead of ``rows``; TVM's angles are linear in the position). Otherwise
    the row is a token of the chunk and ``positions[row]`` its position."""
    half = d // 2

    def entry(position, i, theta, which):
        return _rope_entry(rope_scaling, T.Cast("float32", position), i, d, theta, which)

    @T.macro
    def fill_tokens(table, rows, positions, theta):
        for row in T.parallel(rows):
            for i in range(half):
                table[row, i] = entry(positions[row], i, theta, 0)
                table[row, half + i] = entry(positions[row], i, theta, 1)

    @T.macro
    def fill_positions(table, rows, positions, theta):
        low = T.decl_buffer((CHUNK, d), "float32")
        high = T.decl_buffer(((rows + CHUNK - 1) // CHUNK, d), "float32")
        for b in range(CHUNK):
            for i in range(half):
                low[b, i] = entry(b, i, theta, 0)
                low[b, half + i] = entry(b, i, theta, 1)
        for a in T.parallel((rows + CHUNK - 1) // CHUNK):
            for i in range(half):
                high[a, i] = entry(a * CHUNK, i, theta, 0)
                high[a, half + i] = entry(a * CHUNK, i, theta, 1)
        for row in T.parallel(rows):
            for i in range(half):
                table[row, i] = (
                    high[row // CHUNK, i] * low[row % CHUNK, i]
                    - high[row // CHUNK, half + i] * low[row % CHUNK, half + i]
                )
                table[row, half + i] = (
                    high[row // CHUNK, half + i] * low[row % CHUNK, i]
                    + high[row // CHUNK, i] * low[row % CHUNK, half + i]
                )

    return fill_positions if by_position else fill_tokens


def _evicting_start(row, kv_len, window: int):
    """First cached key a prefill row sees in an evicting cache (whatever ``causal`` says): the last
    ``window - row - 1`` cached keys are inside row's window, the chunk's own keys come from the ragged
    kernel."""
    return T.max(kv_len - T.max(window - row - 1, 0), 0)


def _scratch(shape: tuple, used: bool) -> tuple:
    """A scratch buffer's shape, or one element where the kernel never touches it (no inline RoPE)."""
    return shape if used else (1,) * len(shape)


@memoized_kernel
def prefill_ragged(
    h_kv,
    h_q,
    d_qk,
    d_v,
    dtype,
    rope_scaling,
    softcap: float = 0.0,
    evict_window: int = 0,
    sinks: bool = False,
    sink_window: int = 0,
    sink_chunk: int = 0,
    sink_logits: bool = True,
):
    """Attention of new tokens over themselves (``[total, heads, d]`` q/k/v, per-sequence indptrs).

    ``evict_window``: the cache may slide (inline RoPE when the cache asks: keys are the chunk's tokens,
    so one table row per token serves queries and keys). ``sinks``: see ``_SinkRows``."""
    inline = rope_scaling if evict_window else None
    attend = _row_attention(d_qk, dtype, paged=False, group=h_q // h_kv, softcap=softcap, inline_rope=inline)
    fill = _fill_rope_table(rope_scaling, d_qk, by_position=False)
    rotate = _rotate_ragged_keys(rope_scaling, h_kv, d_qk)
    sink = _SinkRows(sinks, h_q // h_kv, sink_window, sink_chunk, sink_logits)

    def row(part: int, b, item, q, q_indptr, kv_indptr, q_rope_position, k_rope_pos_offset, causal):
        """A row's first key, end, initial running max (``part`` 0, 1, 2): keys [0, causal end), sink-aware."""
        token, h = q_indptr[b] + item // h_q, item % h_q
        end = _visible(causal, item // h_q, kv_indptr[b + 1] - kv_indptr[b], q_indptr[b + 1] - q_indptr[b])
        return sink.part(part, q, token, h, q_rope_position[token], k_rope_pos_offset[b], 0, end)

    @T.prim_func(s_tir=True)
    def batch_prefill_ragged_kv(
        var_q: T.handle,
        var_q_indptr: T.handle,
        var_k: T.handle,
        var_v: T.handle,
        var_kv_indptr: T.handle,
        var_q_rope_position: T.handle,
        var_k_rope_pos_offset: T.handle,
        var_output: T.handle,
        var_lse: T.handle,
        causal: T.int32,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        batch_size, qo_len, kv_len = T.int32(), T.int32(), T.int32()
        q_off, kv_off, qr_off, kr_off = T.int32(), T.int32(), T.int32(), T.int32()
        q = T.match_buffer(var_q, (qo_len, h_q, d_qk), dtype)
        q_indptr = T.match_buffer(var_q_indptr, (batch_size + 1,), "int32", elem_offset=q_off)
        k = T.match_buffer(var_k, (kv_len, h_kv, d_qk), dtype)
        v = T.match_buffer(var_v, (kv_len, h_kv, d_v), dtype)
        kv_indptr = T.match_buffer(var_kv_indptr, (batch_size + 1,), "int32", elem_offset=kv_off)
        q_rope_position = T.match_buffer(var_q_rope_position, (qo_len,), "int32", elem_offset=qr_off)
        k_rope_pos_offset = T.match_buffer(var_k_rope_pos_offset, (batch_size,), "int32", elem_offset=kr_off)
        output = T.match_buffer(var_output, (qo_len, h_q, d_v), dtype)
        lse = T.match_buffer(var_lse, (qo_len, h_q), "float32")
        with T.sblock("root"):
            table = T.decl_buffer(_scratch((qo_len, d_qk), evict_window > 0), "float32")
            rkeys = T.decl_buffer(_scratch((kv_len, h_kv, d_qk), evict_window > 0), "float32")
            if evict_window > 0:  # noqa: SIM102 - a parse-time branch around a TIR one
                if rotary_mode == 1:
                    fill(table, qo_len, q_rope_position, rope_theta)
                    rotate(rkeys, k, kv_len, table, qo_len, rope_theta)
            for b in T.serial(batch_size):
                for item in T.parallel((q_indptr[b + 1] - q_indptr[b]) * h_q):
                    attend(
                        q,
                        q_indptr[b] + item // h_q,
                        item % h_q,
                        row(0, b, item, q, q_indptr, kv_indptr, q_rope_position, k_rope_pos_offset, causal),
                        row(1, b, item, q, q_indptr, kv_indptr, q_rope_position, k_rope_pos_offset, causal),
                        k,
                        v,
                        kv_indptr[b],
                        q_indptr,
                        output,
                        lse,
                        sm_scale,
                        rotary_mode,
                        table,
                        qo_len,
                        q_indptr[b] + item // h_q,
                        rkeys,
                        rope_theta,
                        row(2, b, item, q, q_indptr, kv_indptr, q_rope_position, k_rope_pos_offset, causal),
                    )

    return batch_prefill_ragged_kv


@memoized_kernel
def prefill_paged(
    h_kv,
    h_q,
    d,
    dtype,
    sliding_window,
    rope_scaling,
    page_size=16,
    sliding_window_size=1024,
    softcap: float = 0.0,
    evict_window: int = 0,
    sinks: bool = False,
    sink_window: int = 0,
    sink_chunk: int = 0,
    sink_logits: bool = True,
):
    """Attention of new tokens over the sequences' cached pages (``sliding_window``: a window layer's, or
    with ``evict_window`` the whole cache's sliding variant).

    ``evict_window``: every layer is a ``evict_window``-token window and the cache may slide: each row
    sees the last ``evict_window - row - 1`` cached keys whatever ``causal`` says (TVM passes 0 for a
    whole-cache window), with inline RoPE when the cache asks (``rotary_mode`` 1: keys stored un-rotated
    at their positions in the window)."""
    inline = rope_scaling if evict_window else None
    attend = _row_attention(d, dtype, paged=True, group=h_q // h_kv, softcap=softcap, inline_rope=inline)
    fill = _fill_rope_table(rope_scaling, d, by_position=True)
    rotate = _rotate_paged_keys(rope_scaling, h_kv, d, page_size, sliding_window)
    window = sliding_window_size if sliding_window and not evict_window else 0
    sink = _SinkRows(sinks, h_q // h_kv, sink_window, sink_chunk, sink_logits)

    def row(part: int, b, item, q, q_indptr, page_indptr, length_info, q_rope_position, k_rope_pos_offset, causal):
        """A row's first page slot, end, initial running max (``part`` 0, 1, 2), sink-aware."""
        token, h, r = q_indptr[b] + item // h_q, item % h_q, item // h_q
        start = _paged_start(causal, r, page_indptr, length_info, b, page_size, window, evict_window, sliding_window)
        end = _prefill_end(
            causal, r, page_indptr, length_info, b, page_size, window or evict_window, q_indptr, sliding_window
        )
        return sink.part(part, q, token, h, q_rope_position[token], k_rope_pos_offset[b], start, end)

    @T.prim_func(s_tir=True)
    def batch_prefill_paged_kv_cpu(
        var_q: T.handle,
        var_q_indptr: T.handle,
        var_pages: T.handle,
        var_page_indptr: T.handle,
        var_page_values: T.handle,
        var_length_info: T.handle,
        var_k_rope_pos_offset: T.handle,
        var_q_rope_position: T.handle,
        var_output: T.handle,
        var_lse: T.handle,
        causal: T.int32,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        batch_size, total_len, nnz_pages, max_num_pages = T.int32(), T.int32(), T.int32(), T.int32()
        q_off, pi_off, pv_off, kr_off, qr_off, li_off = (
            T.int32(),
            T.int32(),
            T.int32(),
            T.int32(),
            T.int32(),
            T.int32(),
        )
        q = T.match_buffer(var_q, (total_len, h_q, d), dtype)
        q_indptr = T.match_buffer(var_q_indptr, (batch_size + 1,), "int32", elem_offset=q_off)
        pages = T.match_buffer(var_pages, (max_num_pages, 2, h_kv, page_size, d), dtype)
        page_indptr = T.match_buffer(var_page_indptr, (batch_size + 1,), "int32", elem_offset=pi_off)
        page_values = T.match_buffer(var_page_values, (nnz_pages,), "int32", elem_offset=pv_off)
        length_info = T.match_buffer(
            var_length_info, (3, batch_size) if sliding_window else (batch_size,), "int32", elem_offset=li_off
        )
        k_rope_pos_offset = T.match_buffer(var_k_rope_pos_offset, (batch_size,), "int32", elem_offset=kr_off)
        q_rope_position = T.match_buffer(var_q_rope_position, (total_len,), "int32", elem_offset=qr_off)
        output = T.match_buffer(var_output, (total_len, h_q, d), dtype)
        lse = T.match_buffer(var_lse, (total_len, h_q), "float32")
        with T.sblock("root"):
            # positions of cached keys and of the chunk's queries (past them): a table row for each
            table = T.decl_buffer(_scratch((nnz_pages * page_size + total_len, d), evict_window > 0), "float32")
            rkeys = T.decl_buffer(_scratch((nnz_pages, h_kv, page_size, d), evict_window > 0), "float32")
            if evict_window > 0:  # noqa: SIM102 - a parse-time branch around a TIR one
                if rotary_mode == 1:
                    fill(table, nnz_pages * page_size + total_len, q_rope_position, rope_theta)
                    rotate(
                        rkeys, pages, page_indptr, page_values, length_info, k_rope_pos_offset, batch_size, table,
                        nnz_pages * page_size + total_len, rope_theta,
                    )  # fmt: skip
            for b in T.serial(batch_size):
                for item in T.parallel((q_indptr[b + 1] - q_indptr[b]) * h_q):
                    attend(
                        q,
                        q_indptr[b] + item // h_q,
                        item % h_q,
                        row(
                            0,
                            b,
                            item,
                            q,
                            q_indptr,
                            page_indptr,
                            length_info,
                            q_rope_position,
                            k_rope_pos_offset,
                            causal,
                        ),
                        row(
                            1,
                            b,
                            item,
                            q,
                            q_indptr,
                            page_indptr,
                            length_info,
                            q_rope_position,
                            k_rope_pos_offset,
                            causal,
                        ),
                        pages,
                        pages,
                        page_indptr[b],
                        page_values,
                        output,
                        lse,
                        sm_scale,
                        rotary_mode,
                        table,
                        nnz_pages * page_size + total_len,
                        q_rope_position[q_indptr[b] + item // h_q],
                        rkeys,
                        rope_theta,
                        row(
                            2,
                            b,
                            item,
                            q,
                            q_indptr,
                            page_indptr,
                            length_info,
                            q_rope_position,
                            k_rope_pos_offset,
                            causal,
                        ),
                    )

    return _named(batch_prefill_paged_kv_cpu, sliding_window)


@memoized_kernel
def decode_paged(
    num_kv_heads,
    num_qo_heads,
    head_dim,
    qkv_dtype,
    sliding_window,
    rope_scaling,
    page_size=16,
    softcap: float = 0.0,
    evict_window: int = 0,
    sinks: bool = False,
    sink_window: int = 0,
    sink_chunk: int = 0,
    sink_logits: bool = True,
):
    """One new token per sequence over its cached pages.

    ``evict_window`` (every layer one window, the cache may slide): the full-attention variant runs
    with the current token already appended (a cache created without sliding) and sees the last
    ``evict_window`` keys; the sliding variant runs before the append (TVM's sliding mode) and sees the
    last ``evict_window - 1``; inline RoPE when the cache asks."""
    h_q, d = num_qo_heads, head_dim
    inline = rope_scaling if evict_window else None
    attend = _row_attention(
        d, qkv_dtype, paged=True, group=num_qo_heads // num_kv_heads, softcap=softcap, inline_rope=inline
    )
    fill = _fill_rope_table(rope_scaling, d, by_position=True)
    rotate = _rotate_paged_keys(rope_scaling, num_kv_heads, d, page_size, sliding_window)
    visible = (evict_window - 1 if sliding_window else evict_window) if evict_window else 0
    sink = _SinkRows(sinks, num_qo_heads // num_kv_heads, sink_window, sink_chunk, sink_logits)

    def row(part: int, item, q, page_indptr, length_info, q_rope_position, k_rope_pos_offset):
        """A row's first page slot, end, initial running max (``part`` 0, 1, 2), sink-aware."""
        b, h = item // h_q, item % h_q
        first = _decode_start(length_info, b, sliding_window)
        start = first + _decode_skip(page_indptr, length_info, b, page_size, sliding_window, visible)
        end = first + _paged_len(page_indptr, length_info, b, page_size, sliding_window)
        return sink.part(part, q, b, h, q_rope_position[b], k_rope_pos_offset[b], start, end)

    @T.prim_func(s_tir=True)
    def batch_decode_paged_kv(
        q_handle: T.handle,
        pages_handle: T.handle,
        page_table_indptr_handle: T.handle,
        page_table_values_handle: T.handle,
        var_length_info: T.handle,
        k_rope_pos_offset_handle: T.handle,
        q_rope_position_handle: T.handle,
        output_handle: T.handle,
        lse_handle: T.handle,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        batch, nnz_pages, max_num_pages = T.int32(), T.int32(), T.int32()
        pi_off, pv_off, kr_off, qr_off, li_off = T.int32(), T.int32(), T.int32(), T.int32(), T.int32()
        q = T.match_buffer(q_handle, (batch, h_q, d), qkv_dtype)
        pages = T.match_buffer(pages_handle, (max_num_pages, 2, num_kv_heads, page_size, d), qkv_dtype)
        page_indptr = T.match_buffer(page_table_indptr_handle, (batch + 1,), "int32", elem_offset=pi_off)
        page_values = T.match_buffer(page_table_values_handle, (nnz_pages,), "int32", elem_offset=pv_off)
        length_info = T.match_buffer(
            var_length_info, (3, batch) if sliding_window else (batch,), "int32", elem_offset=li_off
        )
        k_rope_pos_offset = T.match_buffer(k_rope_pos_offset_handle, (batch,), "int32", elem_offset=kr_off)
        q_rope_position = T.match_buffer(q_rope_position_handle, (batch,), "int32", elem_offset=qr_off)
        output = T.match_buffer(output_handle, (batch, h_q, d), qkv_dtype)
        lse = T.match_buffer(lse_handle, (batch, h_q), "float32")
        with T.sblock("root"):
            # positions of cached keys and of the new token (past them): a table row for each
            table = T.decl_buffer(_scratch((nnz_pages * page_size + batch, d), evict_window > 0), "float32")
            rkeys = T.decl_buffer(_scratch((nnz_pages, num_kv_heads, page_size, d), evict_window > 0), "float32")
            if evict_window > 0:  # noqa: SIM102 - a parse-time branch around a TIR one
                if rotary_mode == 1:
                    fill(table, nnz_pages * page_size + batch, q_rope_position, rope_theta)
                    rotate(
                        rkeys, pages, page_indptr, page_values, length_info, k_rope_pos_offset, batch, table,
                        nnz_pages * page_size + batch, rope_theta,
                    )  # fmt: skip
            for item in T.parallel(batch * h_q):
                attend(
                    q,
                    item // h_q,
                    item % h_q,
                    row(0, item, q, page_indptr, length_info, q_rope_position, k_rope_pos_offset),
                    row(1, item, q, page_indptr, length_info, q_rope_position, k_rope_pos_offset),
                    pages,
                    pages,
                    page_indptr[item // h_q],
                    page_values,
                    output,
                    lse,
                    sm_scale,
                    rotary_mode,
                    table,
                    nnz_pages * page_size + batch,
                    q_rope_position[item // h_q],
                    rkeys,
                    rope_theta,
                    row(2, item, q, page_indptr, length_info, q_rope_position, k_rope_pos_offset),
                )

    return _named(batch_decode_paged_kv, sliding_window)


ROPE_TYPES = (None, "default", "llama3")  # rope variants whose frequencies the table kernel takes from TVM


@memoized_kernel
def rope(theta, scale, head_dim, num_q_heads, num_kv_heads, dtype, rope_scaling, rotary_dim=None):
    """Split fused qkv into q, k, v and apply RoPE to q and k (HF rotate-half convention).

    TVM's kernel evaluates ``pow``, ``cos`` and ``sin`` for every element of every head on one thread;
    this one makes a cos/sin table per token (rotary_dim entries, TVM's frequency formulas) and
    applies it to all heads, tokens in parallel.
    """
    from tvm import tirx

    rotary_dim = rotary_dim or head_dim
    heads = num_q_heads + 2 * num_kv_heads
    half = rotary_dim // 2

    def table_entry(position, d, which):
        return _rope_entry(rope_scaling, position * tirx.const(scale, "float32"), d, rotary_dim, theta, which)

    def rotated(qkv, table, t, h, d):
        other = T.if_then_else(d < half, -qkv[t, h, T.min(d + half, head_dim - 1)], qkv[t, h, T.max(d - half, 0)])
        return T.Cast(
            dtype, table[d] * T.Cast("float32", qkv[t, h, d]) + table[rotary_dim + d] * T.Cast("float32", other)
        )

    @T.prim_func(s_tir=True)
    def fused_rope(
        var_qkv: T.handle,
        var_position_map: T.handle,
        var_q: T.handle,
        var_k: T.handle,
        var_v: T.handle,
        apply_rope: T.int64,
    ):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True, "tirx.is_scheduled": True})
        seq_len, pm_off = T.int32(), T.int32()
        qkv = T.match_buffer(var_qkv, (seq_len, heads, head_dim), dtype)
        q = T.match_buffer(var_q, (seq_len, num_q_heads, head_dim), dtype)
        k = T.match_buffer(var_k, (seq_len, num_kv_heads, head_dim), dtype)
        v = T.match_buffer(var_v, (seq_len, num_kv_heads, head_dim), dtype)
        position_map = T.match_buffer(var_position_map, (seq_len,), "int32", elem_offset=pm_off)
        with T.sblock("root"):
            for t in T.parallel(seq_len):
                table = T.decl_buffer((2 * rotary_dim,), "float32")  # cos, then sin
                for d in range(rotary_dim):
                    table[d] = table_entry(T.Cast("float32", position_map[t]), d, 0)
                    table[rotary_dim + d] = table_entry(T.Cast("float32", position_map[t]), d, 1)
                for h in range(num_q_heads):
                    for d in range(head_dim):
                        if apply_rope > 0 and d < rotary_dim:
                            q[t, h, d] = rotated(qkv, table, t, h, d)
                        else:
                            q[t, h, d] = qkv[t, h, d]
                for h in range(num_kv_heads):
                    for d in range(head_dim):
                        if apply_rope > 0 and d < rotary_dim:
                            k[t, h, d] = rotated(qkv, table, t, num_q_heads + h, d)
                        else:
                            k[t, h, d] = qkv[t, num_q_heads + h, d]
                        v[t, h, d] = qkv[t, num_q_heads + num_kv_heads + h, d]

    return fused_rope


@contextlib.contextmanager
def llmc_cpu_attention(
    softcap: float = 0.0,
    evict_window: int = 0,
    sinks: bool = False,
    sink_window: int = 0,
    sink_chunk: int = 0,
    sink_logits: bool = True,
) -> Iterator[None]:
    """While the cache is built, its CPU kernel makers return llmc's kernels (sliding-window ones included).

    ``evict_window``: every layer attends to this many tokens and the cache is built as one whole-cache
    window that the runtime may slide (``Engine``: ``attention_kv_cache_enable_sliding_window_for_seq``)."""
    from tvm.relax.frontend.nn.llm import kv_cache

    originals = {
        name: getattr(kv_cache, name)
        for name in (
            "_attention_prefill_ragged_cpu",
            "_attention_prefill_cpu",
            "_attention_decode_cpu",
            "llama_rope_with_position_map",
        )
    }

    # attention soft-capping (Gemma 2) is a constant of the kernels: TVM's makers have no such argument
    kernels = {"softcap": softcap, "evict_window": evict_window}
    if sinks:  # control heads: sinks, model-masked windows or chunks (``_SinkRows``); other caches' kernels as before
        kernels.update(sinks=True, sink_window=sink_window, sink_chunk=sink_chunk, sink_logits=sink_logits)
    kv_cache._attention_prefill_ragged_cpu = functools.partial(prefill_ragged, **kernels)
    kv_cache._attention_prefill_cpu = functools.partial(prefill_paged, **kernels)
    kv_cache._attention_decode_cpu = functools.partial(decode_paged, **kernels)

    def rope_unless_other(*args, **kwargs):
        rope_scaling = args[6] if len(args) > 6 else kwargs.get("rope_scaling", {})
        known = rope_scaling.get("rope_type") in ROPE_TYPES
        return (rope if known else originals["llama_rope_with_position_map"])(*args, **kwargs)

    kv_cache.llama_rope_with_position_map = rope_unless_other
    try:
        yield
    finally:
        for name, func in originals.items():
            setattr(kv_cache, name, func)
