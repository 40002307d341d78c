"""The TIR kernel of the CPU integer path (layout and maths: ``llmc.quant.int_dot``).

``int_matmul`` first quantizes the float32 activations ``[M, K]`` into a scratch buffer: int8 codes
``[M, groups*32]`` (zero-padded), a float32 scale per group (``absmax / 127``, round to nearest)
and ``-offset * sum(codes)`` per group, the correction that lets the matmul use the weights'
unsigned codes as they are. Then ``out[m, n] = sum_g scale_w[n, g] * scale_x[m, g] * (sum_k code_w[n, k] * x_q[m, k]
- offset * sum_k x_q[m, k])``. Tiles of 16 output rows run in parallel; per row of activations and
per group, one 32-bit integer accumulator per output row takes 4 (8-bit: 8) dot-product steps of
4 codes each, then is converted and scaled into a float accumulator once per group. (AVX2 with
8-bit codes re-centres them to signed bytes for ``vpmaddubsw``'s sign trick and needs no correction.)
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from llmc.quant.int_dot import GROUP, TILE_ROWS, VECTOR_BYTES, steps_per_group, tile_count

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


def _quantize_row(in_features: int, offset: int):
    """A TVMScript macro: row ``m`` of float32 ``x`` -> int8 codes, a scale and a correction per group of 32."""
    groups = -(-in_features // GROUP)

    @T.macro
    def quantize_row(x, q, s, c, m):
        for g in range(groups):
            # scalars in small buffers, not lets: TVM 0.27 turns let-bound values in parallel bodies into
            # heap workspaces (one allocation per iteration)
            amax = T.decl_buffer((2,), "float32")  # absmax, 127 / absmax
            total = T.decl_buffer((1,), "int32")
            amax[0] = T.float32(0)
            total[0] = 0
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
                total[0] = total[0] + T.Cast("int32", q[m, g * GROUP + i])
            s[m, g] = amax[0] / T.float32(127)
            c[m, g] = total[0] * (-offset)

    return quantize_row


def int_matmul(
    out_features: int, in_features: int, bits: int, isa: str, scale_dtype: str = "float32", with_min: bool = False
) -> tirx.PrimFunc:
    """``out[M, out_features]`` from quantized activations and repacked weights (see module docstring).

    ``with_min``: 4-bit codes with a float minimum per row and group instead of the offset (GGML Q4_1,
    ``w = d * code + m``): a fourth input ``wm`` (same layout as the scales) and
    ``out += scale_x * (d * sum(code * x_q) + m * sum(x_q))`` per group."""
    groups, tiles, steps = -(-in_features // GROUP), tile_count(out_features), steps_per_group(bits)
    words = groups * GROUP // 4  # int32 words of x codes per row
    full_tiles = out_features // TILE_ROWS
    halves, lanes = (1, 16) if isa == "avx512vnni" else (2, 8)
    vbytes = lanes * 4
    signed = bits == 8 and isa == "avx2"  # AVX2 multiplies re-centred 8-bit codes (no correction)
    if with_min and bits != 4:
        raise ValueError("int_matmul: with_min is for 4-bit codes (GGML Q4_1)")
    low = T.broadcast(T.uint8(15), vbytes)
    shift = T.broadcast(T.uint8(4), vbytes)

    def dot(acc, codes, x_word):
        return _dot(isa, acc, codes, x_word, signed)

    def span(i, h):  # lanes of half h of activation row i's accumulator
        return T.ramp(i * TILE_ROWS + h * lanes, 1, lanes)

    def row(i):
        return T.ramp(i * TILE_ROWS, 1, TILE_ROWS)

    @T.macro
    def row_block(xs, xc, x_words, w, ws, wm, out, t, m0, rows):
        """Output tile ``t`` for activation rows ``m0 .. m0+rows``: each unpacked weight vector feeds them all."""
        acc = T.decl_buffer((rows * TILE_ROWS,), "float32")
        isum = T.decl_buffer((rows * TILE_ROWS,), "int32")
        for i in T.unroll(rows):
            acc[row(i)] = T.broadcast(T.float32(0), TILE_ROWS)
        for g in range(groups):
            for i in T.unroll(rows):
                if signed or with_min:
                    isum[row(i)] = T.broadcast(0, TILE_ROWS)
                else:
                    isum[row(i)] = T.broadcast(xc[m0 + i, g], TILE_ROWS)
            for h in T.unroll(halves):
                for p in T.unroll(steps):
                    # unnamed on purpose: let-bound vectors here become heap workspaces in TVM 0.27
                    for i in T.unroll(rows):
                        if bits == 4:
                            isum[span(i, h)] = dot(
                                isum[span(i, h)],
                                w[t, g, p, T.ramp(h * vbytes, 1, vbytes)] & low,
                                x_words[(m0 + i) * words + g * (GROUP // 4) + p],
                            )
                            isum[span(i, h)] = dot(
                                isum[span(i, h)],
                                w[t, g, p, T.ramp(h * vbytes, 1, vbytes)] >> shift,
                                x_words[(m0 + i) * words + g * (GROUP // 4) + 4 + p],
                            )
                        else:
                            isum[span(i, h)] = dot(
                                isum[span(i, h)],
                                w[t, g, p, T.ramp(h * vbytes, 1, vbytes)],
                                x_words[(m0 + i) * words + g * (GROUP // 4) + p],
                            )
            for i in T.unroll(rows):
                acc[row(i)] = acc[row(i)] + T.Cast(f"float32x{TILE_ROWS}", isum[row(i)]) * (
                    T.Cast(f"float32x{TILE_ROWS}", ws[t, g, T.ramp(0, 1, TILE_ROWS)])
                    * T.broadcast(xs[m0 + i, g], TILE_ROWS)
                )
                if with_min:  # + m * scale_x * sum(x codes); xc holds the plain code sum here
                    acc[row(i)] = acc[row(i)] + T.Cast(f"float32x{TILE_ROWS}", wm[t, g, T.ramp(0, 1, TILE_ROWS)]) * (
                        T.broadcast(xs[m0 + i, g] * T.Cast("float32", xc[m0 + i, g]), TILE_ROWS)
                    )
        for i in T.unroll(rows):
            if t < full_tiles:
                out[m0 + i, T.ramp(t * TILE_ROWS, 1, TILE_ROWS)] = acc[row(i)]
            else:
                for r in range(TILE_ROWS):
                    if t * TILE_ROWS + r < out_features:
                        out[m0 + i, t * TILE_ROWS + r] = acc[i * TILE_ROWS + r]

    quantize_row = _quantize_row(in_features, -1 if with_min else 1 << (bits - 1))  # -1: c = sum of codes

    @T.macro
    def body(x, w, ws, wm, out, m_rows):
        xq = T.alloc_buffer((m_rows, groups * GROUP), "int8")
        xs = T.alloc_buffer((m_rows, groups), "float32")
        xc = T.alloc_buffer((m_rows, groups), "int32")
        if m_rows >= PARALLEL_ROWS:
            for m in T.parallel(m_rows):
                quantize_row(x, xq, xs, xc, m)
        else:
            for m in range(m_rows):
                quantize_row(x, xq, xs, xc, m)
        x_words = T.decl_buffer((m_rows * words,), "int32", data=xq.data)
        for t in T.parallel(tiles):
            for block in range(m_rows // ROW_BLOCK):
                row_block(xs, xc, x_words, w, ws, wm, out, t, block * ROW_BLOCK, ROW_BLOCK)
            for m in range(m_rows - m_rows % ROW_BLOCK, m_rows):
                row_block(xs, xc, x_words, w, ws, wm, out, t, m, 1)

    if with_min:

        @T.prim_func(private=True, s_tir=True)
        def func_min(x_h: T.handle, w_h: T.handle, ws_h: T.handle, wm_h: T.handle, out_h: T.handle):
            T.func_attr(SCHEDULED)
            m_rows = T.int64()
            x = T.match_buffer(x_h, (m_rows, in_features), "float32")
            w = T.match_buffer(w_h, (tiles, groups, steps, VECTOR_BYTES), "uint8")
            ws = T.match_buffer(ws_h, (tiles, groups, TILE_ROWS), scale_dtype)
            wm = T.match_buffer(wm_h, (tiles, groups, TILE_ROWS), scale_dtype)
            out = T.match_buffer(out_h, (m_rows, out_features), "float32")
            with T.sblock("root"):
                body(x, w, ws, wm, out, m_rows)

        return func_min

    @T.prim_func(private=True, s_tir=True)
    def func(x_h: T.handle, w_h: T.handle, ws_h: T.handle, out_h: T.handle):
        T.func_attr(SCHEDULED)
        m_rows = T.int64()
        x = T.match_buffer(x_h, (m_rows, in_features), "float32")
        w = T.match_buffer(w_h, (tiles, groups, steps, VECTOR_BYTES), "uint8")
        ws = T.match_buffer(ws_h, (tiles, groups, TILE_ROWS), scale_dtype)
        out = T.match_buffer(out_h, (m_rows, out_features), "float32")
        with T.sblock("root"):
            body(x, w, ws, ws, out, m_rows)  # no minimum: wm is never read

    return func
