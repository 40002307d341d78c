"""The TIR kernel of the CPU integer path (layout and maths: ``llmc.quant.int_dot``).

``int_matmul`` first quantizes the float32 activations ``[M, K]`` into a scratch buffer: int8 codes
``[M, groups*32]`` (zero-padded), a float32 scale per group (``absmax / 127``, round to nearest)
and ``-offset * sum(codes)`` per group, the correction that lets the matmul use the weights'
unsigned codes as they are. Then ``out[m, n] = sum_g scale_w[n, g] * scale_x[m, g] * (sum_k code_w[n, k] * x_q[m, k]
- offset * sum_k x_q[m, k])``. Tiles of 16 output rows run in parallel; per row of activations and
per group, one 32-bit integer accumulator per output row takes 4 (8-bit: 8) dot-product steps of
4 codes each, then is converted and scaled into a float accumulator once per group. (AVX2 with
8-bit codes re-centres them to signed bytes for ``vpmaddubsw``'s sign trick and needs no correction;
codes up to 6 bits cannot saturate its pair sums.) GGML formats (``int_dot.Form``) add 5/6-bit codes
(top bits OR-ed onto the nibbles from extra vectors), a minimum per group (``-offset`` becomes
``+ m * scale_x * sum(x_q)``), and K-quant scales: integer sub-block scales times fp16 super-block
scales per group, with Q6_K's two sub-blocks of 16 summed in separate integer accumulators.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from llmc.quant.int_dot import GROUP, SUPER_GROUPS, TILE_ROWS, VECTOR_BYTES, Form, steps_per_group, tile_count

SCHEDULED = {"tirx.noalias": True, "tirx.is_scheduled": True}
PARALLEL_ROWS = 16  # activation rows from which their quantization runs on every thread
ROW_BLOCK = 4  # activation rows per pass over a weight tile (prefill): unpacked codes are reused 4 times


def _intrin(name: str, dtype: str, *args):
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(name), *args, dtype=dtype)


def _dot(isa: str, acc, codes, x_word, signed_codes: bool):
    """``acc[i] += sum_j codes[4i+j] * x[j]`` for a vector of unsigned codes and 4 broadcast int8 of x."""
    lanes = VECTOR_BYTES // 4 if isa == "avx512vnni" else VECTOR_BYTES // 8
    x = T.reinterpret(T.broadcast(x_word, lanes), dtype=f"int8x{lanes * 4}")
    if isa in ("avx512vnni", "avxvnni"):
        width = 512 if isa == "avx512vnni" else 256
        return _intrin(f"llvm.x86.avx512.vpdpbusd.{width}", f"int32x{lanes}", acc, codes, x)
    if signed_codes:  # 8-bit codes: |w| * sign(x, w) keeps vpmaddubsw's pair sums below 2^15
        centred = T.reinterpret(codes ^ T.broadcast(T.uint8(128), 32), dtype="int8x32")
        magnitude = T.reinterpret(_intrin("llvm.abs.v32i8", "int8x32", centred, T.bool(False)), dtype="uint8x32")
        x = _intrin("llvm.x86.avx2.psign.b", "int8x32", x, centred)
        pairs = _intrin("llvm.x86.avx2.pmadd.ub.sw", "int16x16", magnitude, x)
    else:
        pairs = _intrin("llvm.x86.avx2.pmadd.ub.sw", "int16x16", codes, x)
    return acc + _intrin("llvm.x86.avx2.pmadd.wd", "int32x8", pairs, T.broadcast(T.int16(1), 16))


def _quantize_row(in_features: int, offset: int, parts: int):
    """A TVMScript macro: row ``m`` of float32 ``x`` -> int8 codes, a scale per group of 32 and, per
    ``32 / parts`` codes, the correction ``-offset * sum(codes)`` (``offset = -1``: the plain sum)."""
    groups = -(-in_features // GROUP)
    width = GROUP // parts

    @T.macro
    def quantize_row(x, q, s, c, m):
        for g in range(groups):
            # scalars in small buffers, not lets: TVM 0.27 turns let-bound values in parallel bodies into
            # heap workspaces (one allocation per iteration)
            amax = T.decl_buffer((2,), "float32")  # absmax, 127 / absmax
            total = T.decl_buffer((parts,), "int32")
            amax[0] = T.float32(0)
            for part in range(parts):
                total[part] = 0
            for i in range(GROUP):
                if g * GROUP + i < in_features:
                    amax[0] = T.max(amax[0], T.fabs(x[m, g * GROUP + i]))
            amax[1] = T.if_then_else(amax[0] > T.float32(0), T.float32(127) / amax[0], T.float32(0))
            for i in range(GROUP):
                q[m, g * GROUP + i] = T.Cast(
                    "int8",
                    T.if_then_else(
                        g * GROUP + i < in_features,
                        T.Cast("int32", T.nearbyint(x[m, T.min(g * GROUP + i, in_features - 1)] * amax[1])),
                        0,
                    ),
                )
                total[i // width] = total[i // width] + T.Cast("int32", q[m, g * GROUP + i])
            s[m, g] = amax[0] / T.float32(127)
            for part in range(parts):
                c[m, g * parts + part] = total[part] * (-offset)

    return quantize_row


def int_matmul(
    out_features: int,
    in_features: int,
    bits: int,
    isa: str,
    scale_dtype: str = "float32",
    with_min: bool = False,
    form: Form | None = None,
    experts: int = 0,
) -> tirx.PrimFunc:
    """``out[M, out_features]`` from quantized activations and repacked weights (see module docstring).

    ``with_min``: 4-bit codes with a float minimum per row and group instead of the offset (GGML Q4_1,
    ``w = d * code + m``): a fourth input ``wm`` (same layout as the scales) and
    ``out += scale_x * (d * sum(code * x_q) + m * sum(x_q))`` per group.

    ``form`` (``llmc.quant.int_dot.Form``, overrides ``bits``/``scale_dtype``/``with_min``): GGML's 5/6-bit
    codes (high-bit vectors) and K-quant scales. ``super_min`` (Q4_K, Q5_K) takes uint8 sub-block scales
    and minimums ``[tiles, groups, 2, 16]`` and fp16 ``(d, dmin)`` ``[tiles, supers, 2, 16]``:
    ``out += scale_x * ((d*sc) * sum(code * x_q) - (dmin*mn) * sum(x_q))``; ``super16`` (Q6_K) takes int8
    scales of the two halves of each group ``[tiles, groups, 2, 16]`` and fp16 ``d`` ``[tiles, supers, 1, 16]``:
    the halves' integer sums (codes re-centred by the correction term) times their scales are added in
    int32, then ``out += scale_x * d * that``.

    ``experts`` (grouped, MoE): the weight is a stack of ``experts`` matrices of ``out_features / experts``
    rows (a multiple of 16) and the activation rows come sorted by expert: a second input ``indptr``
    ``[experts + 1]`` (int32) gives each expert's rows, and ``out`` is ``[M, out_features / experts]``.
    Each tile of each expert is unpacked once for all the rows routed to that expert."""
    if form is None:
        if with_min and bits != 4:
            raise ValueError("int_matmul: with_min is for 4-bit codes (GGML Q4_1)")
        form = Form(bits, scale_dtype, "group_min" if with_min else "group")
    bits, mode, high_bits = form.bits, form.scales, form.high_bits
    groups, tiles, steps = -(-in_features // GROUP), tile_count(out_features), steps_per_group(bits)
    words = groups * GROUP // 4  # int32 words of x codes per row
    full_tiles = out_features // TILE_ROWS
    halves, lanes = (1, 16) if isa == "avx512vnni" else (2, 8)
    vbytes = lanes * 4
    signed = bits == 8 and isa == "avx2"  # AVX2 multiplies re-centred 8-bit codes (no correction)
    parts = 2 if mode == "super16" else 1  # integer sums per group: Q6_K's two sub-blocks of 16
    part_high = parts - 1  # the sum a high nibble's codes (k = 16..31) go to
    correct = not (signed or form.with_min)  # sums start at -offset * sum(x codes)
    low = T.broadcast(T.uint8(15), vbytes)
    shift = T.broadcast(T.uint8(4), vbytes)
    top = T.broadcast(T.uint8((1 << high_bits) - 1), vbytes)
    f32 = f"float32x{TILE_ROWS}"

    def dot(acc, codes, x_word):
        return _dot(isa, acc, codes, x_word, signed)

    def span(part, rows, i, h):  # lanes of half h of activation row i's accumulator for ``part``
        return T.ramp((part * rows + i) * TILE_ROWS + h * lanes, 1, lanes)

    def row(i):
        return T.ramp(i * TILE_ROWS, 1, TILE_ROWS)

    def tile_row():
        return T.ramp(0, 1, TILE_ROWS)

    def nibble(w, t, g, p, h, half):
        """The codes at k = 16*half + 4p + b of tile t's 16 rows (half h of the vector)."""
        vector = w[t, g, p, T.ramp(h * vbytes, 1, vbytes)]
        value = vector & low if half == 0 else vector >> shift
        if high_bits == 0:
            return value
        index = (half * 4 + p) * high_bits  # see int_dot.high_bit_position
        extra = w[t, g, steps + index // 8, T.ramp(h * vbytes, 1, vbytes)]
        return value | (((extra >> T.broadcast(T.Cast("uint8", index % 8), vbytes)) & top) << shift)

    per_expert = out_features // experts if experts else out_features
    if experts and per_expert % TILE_ROWS:
        raise ValueError(f"int_matmul: {per_expert} rows per expert is not a multiple of {TILE_ROWS}")
    expert_tiles = per_expert // TILE_ROWS

    @T.macro
    def row_block(xs, xc, x_words, w, ws, wm, out, t, m0, rows, ot):
        """Weight tile ``t`` for activation rows ``m0 .. m0+rows`` into output tile ``ot`` (``t`` unless
        grouped): each unpacked weight vector feeds all the rows."""
        acc = T.decl_buffer((rows * TILE_ROWS,), "float32")
        isum = T.decl_buffer((parts * rows * TILE_ROWS,), "int32")
        for i in T.unroll(rows):
            acc[row(i)] = T.broadcast(T.float32(0), TILE_ROWS)
        for g in range(groups):
            for part in T.unroll(parts):
                for i in T.unroll(rows):
                    if correct:
                        isum[row(part * rows + i)] = T.broadcast(xc[m0 + i, g * parts + part], TILE_ROWS)
                    else:
                        isum[row(part * rows + i)] = T.broadcast(0, TILE_ROWS)
            for h in T.unroll(halves):
                for p in T.unroll(steps):
                    # unnamed on purpose: let-bound vectors here become heap workspaces in TVM 0.27
                    for i in T.unroll(rows):
                        if bits == 4:
                            isum[span(0, rows, i, h)] = dot(
                                isum[span(0, rows, i, h)],
                                nibble(w, t, g, p, h, 0),
                                x_words[(m0 + i) * words + g * (GROUP // 4) + p],
                            )
                            isum[span(part_high, rows, i, h)] = dot(
                                isum[span(part_high, rows, i, h)],
                                nibble(w, t, g, p, h, 1),
                                x_words[(m0 + i) * words + g * (GROUP // 4) + 4 + p],
                            )
                        else:
                            isum[span(0, rows, i, h)] = dot(
                                isum[span(0, rows, i, h)],
                                w[t, g, p, T.ramp(h * vbytes, 1, vbytes)],
                                x_words[(m0 + i) * words + g * (GROUP // 4) + p],
                            )
            for i in T.unroll(rows):
                if mode == "group" or mode == "group_min":
                    acc[row(i)] = acc[row(i)] + T.Cast(f32, isum[row(i)]) * (
                        T.Cast(f32, ws[t, g, tile_row()]) * T.broadcast(xs[m0 + i, g], TILE_ROWS)
                    )
                if mode == "group_min":  # + m * scale_x * sum(x codes); xc holds the plain code sum here
                    acc[row(i)] = acc[row(i)] + T.Cast(f32, wm[t, g, tile_row()]) * (
                        T.broadcast(xs[m0 + i, g] * T.Cast("float32", xc[m0 + i, g]), TILE_ROWS)
                    )
                if mode == "super_min":  # (d * sc) and (dmin * mn): exact in float32 (11-bit x 6-bit)
                    acc[row(i)] = acc[row(i)] + T.Cast(f32, isum[row(i)]) * (
                        (T.Cast(f32, ws[t, g, 0, tile_row()]) * T.Cast(f32, wm[t, g // SUPER_GROUPS, 0, tile_row()]))
                        * T.broadcast(xs[m0 + i, g], TILE_ROWS)
                    )
                    acc[row(i)] = acc[row(i)] - (
                        T.Cast(f32, ws[t, g, 1, tile_row()]) * T.Cast(f32, wm[t, g // SUPER_GROUPS, 1, tile_row()])
                    ) * T.broadcast(xs[m0 + i, g] * T.Cast("float32", xc[m0 + i, g]), TILE_ROWS)
                if mode == "super16":  # the halves' sums times their int8 scales, in int32 (|.| < 2^24)
                    acc[row(i)] = acc[row(i)] + T.Cast(
                        f32,
                        isum[row(i)] * T.Cast(f"int32x{TILE_ROWS}", ws[t, g, 0, tile_row()])
                        + isum[row(rows + i)] * T.Cast(f"int32x{TILE_ROWS}", ws[t, g, 1, tile_row()]),
                    ) * (T.Cast(f32, wm[t, g // SUPER_GROUPS, 0, tile_row()]) * T.broadcast(xs[m0 + i, g], TILE_ROWS))
        for i in T.unroll(rows):
            if t < full_tiles:
                out[m0 + i, T.ramp(ot * TILE_ROWS, 1, TILE_ROWS)] = acc[row(i)]
            else:
                for r in range(TILE_ROWS):
                    if ot * TILE_ROWS + r < out_features:
                        out[m0 + i, ot * TILE_ROWS + r] = acc[i * TILE_ROWS + r]

    quantize_row = _quantize_row(in_features, -1 if form.with_min else form.code_offset, parts)  # -1: sums

    @T.macro
    def body(x, indptr, w, ws, wm, out, m_rows):
        """Quantize the activation rows, then every weight tile in parallel. Grouped (``experts``, a Python
        constant: TVMScript keeps one branch while parsing), tile ``t`` belongs to expert
        ``t // expert_tiles``, whose rows are ``indptr[e] .. indptr[e + 1]``; otherwise every tile takes every
        row (``indptr`` unused). No let-bound scalars: TVM 0.27 makes them heap workspaces in parallel bodies."""
        xq = T.alloc_buffer((m_rows, groups * GROUP), "int8")
        xs = T.alloc_buffer((m_rows, groups), "float32")
        xc = T.alloc_buffer((m_rows, groups * parts), "int32")
        if m_rows >= PARALLEL_ROWS:
            for m in T.parallel(m_rows):
                quantize_row(x, xq, xs, xc, m)
        else:
            for m in range(m_rows):
                quantize_row(x, xq, xs, xc, m)
        x_words = T.decl_buffer((m_rows * words,), "int32", data=xq.data)
        for t in T.parallel(tiles):
            if experts > 0:
                for block in range((indptr[t // expert_tiles + 1] - indptr[t // expert_tiles]) // ROW_BLOCK):
                    row_block(
                        xs,
                        xc,
                        x_words,
                        w,
                        ws,
                        wm,
                        out,
                        t,
                        indptr[t // expert_tiles] + block * ROW_BLOCK,
                        ROW_BLOCK,
                        t % expert_tiles,
                    )
                for m in range(
                    indptr[t // expert_tiles + 1]
                    - (indptr[t // expert_tiles + 1] - indptr[t // expert_tiles]) % ROW_BLOCK,
                    indptr[t // expert_tiles + 1],
                ):
                    row_block(xs, xc, x_words, w, ws, wm, out, t, m, 1, t % expert_tiles)
            else:
                for block in range(m_rows // ROW_BLOCK):
                    row_block(xs, xc, x_words, w, ws, wm, out, t, block * ROW_BLOCK, ROW_BLOCK, t)
                for m in range(m_rows - m_rows % ROW_BLOCK, m_rows):
                    row_block(xs, xc, x_words, w, ws, wm, out, t, m, 1, t)

    code_shape = (tiles, groups, form.steps, VECTOR_BYTES)
    (a_shape, a_dtype), *rest = form.scale_shapes(out_features, in_features)
    if experts and rest:
        ((b_shape, b_dtype),) = rest

        @T.prim_func(private=True, s_tir=True)
        def func_grouped_two(
            x_h: T.handle, indptr_h: T.handle, w_h: T.handle, ws_h: T.handle, wm_h: T.handle, out_h: T.handle
        ):
            T.func_attr(SCHEDULED)
            m_rows = T.int64()
            x = T.match_buffer(x_h, (m_rows, in_features), "float32")
            indptr = T.match_buffer(indptr_h, (experts + 1,), "int32")
            w = T.match_buffer(w_h, code_shape, "uint8")
            ws = T.match_buffer(ws_h, a_shape, a_dtype)
            wm = T.match_buffer(wm_h, b_shape, b_dtype)
            out = T.match_buffer(out_h, (m_rows, per_expert), "float32")
            with T.sblock("root"):
                body(x, indptr, w, ws, wm, out, m_rows)

        return func_grouped_two
    if experts:

        @T.prim_func(private=True, s_tir=True)
        def func_grouped(x_h: T.handle, indptr_h: T.handle, w_h: T.handle, ws_h: T.handle, out_h: T.handle):
            T.func_attr(SCHEDULED)
            m_rows = T.int64()
            x = T.match_buffer(x_h, (m_rows, in_features), "float32")
            indptr = T.match_buffer(indptr_h, (experts + 1,), "int32")
            w = T.match_buffer(w_h, code_shape, "uint8")
            ws = T.match_buffer(ws_h, a_shape, a_dtype)
            out = T.match_buffer(out_h, (m_rows, per_expert), "float32")
            with T.sblock("root"):
                body(x, indptr, w, ws, ws, out, m_rows)

        return func_grouped
    if rest:
        ((b_shape, b_dtype),) = rest

        @T.prim_func(private=True, s_tir=True)
        def func_two(x_h: T.handle, w_h: T.handle, ws_h: T.handle, wm_h: T.handle, out_h: T.handle):
            T.func_attr(SCHEDULED)
            m_rows = T.int64()
            x = T.match_buffer(x_h, (m_rows, in_features), "float32")
            w = T.match_buffer(w_h, code_shape, "uint8")
            ws = T.match_buffer(ws_h, a_shape, a_dtype)
            wm = T.match_buffer(wm_h, b_shape, b_dtype)
            out = T.match_buffer(out_h, (m_rows, out_features), "float32")
            with T.sblock("root"):
                body(x, x, w, ws, wm, out, m_rows)

        return func_two

    @T.prim_func(private=True, s_tir=True)
    def func(x_h: T.handle, w_h: T.handle, ws_h: T.handle, out_h: T.handle):
        T.func_attr(SCHEDULED)
        m_rows = T.int64()
        x = T.match_buffer(x_h, (m_rows, in_features), "float32")
        w = T.match_buffer(w_h, code_shape, "uint8")
        ws = T.match_buffer(ws_h, a_shape, a_dtype)
        out = T.match_buffer(out_h, (m_rows, out_features), "float32")
        with T.sblock("root"):
            body(x, x, w, ws, ws, out, m_rows)  # one scale input: wm is never read; no indptr

    return func
