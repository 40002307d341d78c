"""Layers whose weights stay in GGML block formats (``--quant keep``): decode feeds the matmul.

A ``GGMLLinear`` weight may be made of parts in different formats (a fused q/k/v projection from a
Q4_K_M file: q and k in Q4_K, v in Q6_K); each run of rows in one format is one part with its own
planes and its own ``dequantize -> matmul`` kernel, and the outputs are concatenated. On x86 CPUs
every block format's part takes the integer-dot path (``llmc.quant.int_dot``): the same codes and
scales, repacked (Q4_0 / Q8_0 as llmc's symmetric group-32 schemes; 5/6-bit codes with their top bits
in extra vectors; K-quants with their integer sub-block scales and fp16 super-block scales; MXFP4's e2m1 codes
as their doubled values, 5-bit integers, with ``2 ** (e - 128)`` as a float32 scale), so the integer kernel
computes the file's weights exactly, only the activations are rounded to int8.
"""

from __future__ import annotations

import numpy as np
from tvm import te
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from llmc.quant import int_dot
from llmc.quant.ggml_formats import FORMATS, MXFP4_VALUES, GGMLFormat, e8m0_half
from llmc.quant.group import PER_WORD_ATTR
from llmc.quant.int_dot import Form
from llmc.quant.int_dot_kernels import int_matmul

# the integer kernel's form of each block format (``int_dot.Form``): what it computes per group of 32
INT_DOT_FORMATS = {
    "Q4_0": Form(4),
    "Q4_1": Form(4, scales="group_min"),
    "Q5_0": Form(4, high_bits=1),
    "Q5_1": Form(4, scales="group_min", high_bits=1),
    "Q8_0": Form(8),
    "Q4_K": Form(4, scales="super_min"),
    "Q5_K": Form(4, scales="super_min", high_bits=1),
    "Q6_K": Form(4, scales="super16", high_bits=2),
    # doubled e2m1 values (-12..12) + 16 are 5-bit codes (4..28) with a float32 power-of-two scale per 32
    "MXFP4": Form(4, scale_dtype="float32", high_bits=1),
}
SCALE_NAMES = {"group": ("q_scale",), "group_min": ("q_scale", "q_min")}  # else ("q_scale", "q_super")


def int_dot_group(fmt: str, isa: str | None) -> Form | None:
    """The integer kernel's ``Form`` a part (or embedding table) in ``fmt`` runs as (None: the decode path)."""
    return INT_DOT_FORMATS.get(fmt) if isa is not None else None


def array_names(fmt: str) -> tuple[str, ...]:
    """Names of an integer-path part's arrays: codes, then the scale inputs of its form."""
    return ("q_weight", *SCALE_NAMES.get(INT_DOT_FORMATS[fmt].scales, ("q_scale", "q_super")))


def _planes(fmt: GGMLFormat, rows: int, cols: int) -> dict[str, nn.Parameter]:
    return {name: nn.Parameter(shape, dtype) for name, (shape, dtype) in fmt.plane_shapes(rows, cols).items()}


def ggml_dequantize_matmul(fmt: GGMLFormat, x: Tensor, planes: list[Tensor], rows: int, cols: int) -> Tensor:
    """``x @ decode(W).T``: a ``dequantize`` block (the GGML decode) feeding a ``matmul`` block, which the
    CPU schedule and dlight's GPU rules fuse, as for llmc's own group schemes."""
    names = [p.name for p in fmt.planes]

    def compute(xt: te.Tensor, *pts: te.Tensor):
        by_name = dict(zip(names, pts))
        weight = te.compute(
            (rows, cols),
            lambda n, k: fmt.te_element(by_name, n, k).astype(xt.dtype),
            name="dequantize",
            attrs={PER_WORD_ATTR: min(fmt.block_size, 32)} if fmt.block_size > 1 else None,  # CPU: a block per step
        )
        k = te.reduce_axis((0, cols), name="k")

        def body(*idx):
            return te.sum(xt[(*idx[:-1], k)] * weight[idx[-1], k], axis=k)

        return te.compute([*xt.shape[:-1], rows], body, name="matmul")

    return op.tensor_expr_op(compute, name_hint=f"dequantize_matmul_{fmt.name.lower()}", args=[x, *planes])


class GGMLPart(nn.Module):
    """``rows`` output features of a weight in one GGML format, as planes named after the block fields."""

    def __init__(self, fmt: GGMLFormat, rows: int, cols: int):
        self.fmt, self.rows, self.cols = fmt, rows, cols
        for name, param in _planes(fmt, rows, cols).items():
            setattr(self, name, param)

    def matmul(self, x: Tensor) -> Tensor:
        planes = [getattr(self, p.name) for p in self.fmt.planes]
        return ggml_dequantize_matmul(self.fmt, x, planes, self.rows, self.cols)

    def to(self, dtype: str | None = None) -> None:  # planes keep their dtypes
        pass


class IntDotPart(nn.Module):
    """A part on the CPU integer path: repacked codes ``q_weight`` and the scale inputs of its format's
    ``Form`` (``q_scale``; Q4_1/Q5_1's ``q_min``; K-quants' ``q_super``)."""

    def __init__(self, fmt: str, rows: int, cols: int, isa: str):
        self.fmt_name, self.rows, self.cols, self.isa = fmt, rows, cols, isa
        self.form = form = INT_DOT_FORMATS[fmt]
        tiles, groups = int_dot.tile_count(rows), -(-cols // int_dot.GROUP)
        self.q_weight = nn.Parameter((tiles, groups, form.steps, int_dot.VECTOR_BYTES), "uint8")
        for name, (shape, dtype) in zip(array_names(fmt)[1:], form.scale_shapes(rows, cols)):
            setattr(self, name, nn.Parameter(shape, dtype))

    def matmul(self, x: Tensor) -> Tensor:
        *lead, _ = x.shape
        count = 1
        for dim in lead:
            count = count * dim
        out = op.tensor_ir_op(
            int_matmul(self.rows, self.cols, self.form.bits, self.isa, form=self.form),
            "int_dot_matmul",
            args=[op.reshape(x, (count, self.cols)), *(getattr(self, name) for name in array_names(self.fmt_name))],
            out=Tensor.placeholder((count, self.rows), "float32"),
        )
        return op.reshape(out, (*lead, self.rows))

    def to(self, dtype: str | None = None) -> None:  # repacked arrays keep their dtypes
        pass


def make_part(fmt: str, rows: int, cols: int, isa: str | None) -> nn.Module:
    if int_dot_group(fmt, isa) is not None:
        return IntDotPart(fmt, rows, cols, isa)
    return GGMLPart(FORMATS[fmt], rows, cols)


class GGMLLinear(nn.Module):
    """``nn.Linear`` whose weight keeps its GGUF formats: ``parts`` (runs of rows), outputs concatenated."""

    def __init__(self, in_features: int, runs: list[tuple[str, int]], bias: bool, isa: str | None, dtype: str):
        self.in_features = in_features
        self.out_features = sum(rows for _, rows in runs)
        self.parts = nn.ModuleList([make_part(fmt, rows, in_features, isa) for fmt, rows in runs])
        self.bias = nn.Parameter((self.out_features,), dtype) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        outs = [part.matmul(x) for part in self.parts]
        y = outs[0] if len(outs) == 1 else op.concat(outs, dim=-1)
        return y + self.bias if self.bias is not None else y

    def to(self, dtype: str | None = None) -> None:
        pass


class GGMLEmbedding(nn.Module):
    """Token embedding kept in one GGML format: rows decoded as they are gathered; also the tied LM head."""

    def __init__(self, num: int, dim: int, fmt: GGMLFormat):
        self.num, self.dim, self.fmt = num, dim, fmt
        for name, param in _planes(fmt, num, dim).items():
            setattr(self, name, param)

    def _plane_list(self) -> list[Tensor]:
        return [getattr(self, p.name) for p in self.fmt.planes]

    def forward(self, input_ids: Tensor) -> Tensor:
        fmt, dim, names = self.fmt, self.dim, [p.name for p in self.fmt.planes]

        def compute(ids: te.Tensor, *pts: te.Tensor):
            by_name = dict(zip(names, pts))
            return te.compute(
                (ids.shape[0], dim), lambda i, j: fmt.te_element(by_name, ids[i], j), name="take_dequantize"
            )

        return op.tensor_expr_op(compute, name_hint="take_dequantize", args=[input_ids, *self._plane_list()])

    def lm_head_forward(self, hidden: Tensor) -> Tensor:
        return ggml_dequantize_matmul(self.fmt, hidden, self._plane_list(), self.num, self.dim)

    def to(self, dtype: str | None = None) -> None:
        pass


class IntDotEmbedding(IntDotPart):
    """Token embedding kept in a block format on the CPU integer path: rows decoded from the repacked arrays
    as they are gathered (``int_dot.form_element``, the file's values exactly); the tied LM head is an
    integer-kernel matmul."""

    def __init__(self, num: int, dim: int, fmt: str, isa: str):
        super().__init__(fmt, num, dim, isa)
        self.num, self.dim = num, dim

    def forward(self, input_ids: Tensor) -> Tensor:
        form, dim = self.form, self.dim
        arrays = [getattr(self, name) for name in array_names(self.fmt_name)]

        def compute(ids: te.Tensor, codes: te.Tensor, first: te.Tensor, *rest: te.Tensor):
            second = rest[0] if rest else None
            return te.compute(
                (ids.shape[0], dim),
                lambda i, j: int_dot.form_element(form, codes, first, second, ids[i], j),
                name="take_dequantize",
            )

        return op.tensor_expr_op(compute, name_hint="take_dequantize", args=[input_ids, *arrays])

    def lm_head_forward(self, hidden: Tensor) -> Tensor:
        return self.matmul(hidden)


def make_embedding(num: int, dim: int, fmt: str, isa: str | None) -> nn.Module:
    if int_dot_group(fmt, isa) is not None:
        return IntDotEmbedding(num, dim, fmt, isa)
    return GGMLEmbedding(num, dim, FORMATS[fmt])


# ---------------------------------------------------------------------- numpy: stored arrays
def _unpack(words: np.ndarray, bits: int) -> np.ndarray:
    """Weight-order words ``[rows, n]`` (``32 // bits`` codes each, lowest bits first) -> uint8 codes."""
    shifts = np.arange(0, 32, bits, dtype=np.uint32)
    codes = (words[..., None] >> shifts) & np.uint32((1 << bits) - 1)
    return codes.reshape(words.shape[0], -1).astype(np.uint8)


def _bytes(plane: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(plane).view(np.uint8)


def k_scales_mins(planes: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: the 6-bit scale and minimum of every sub-block of 32, ``[rows, blocks * 8]`` uint8
    (ggml's ``get_scale_min_k4`` over the 12 scale bytes ``a | b | c``)."""
    a, b, c = (_bytes(planes[f"scales_{w}"]).reshape(planes["d"].shape[0], -1, 4) for w in "abc")
    low_sc, low_mn = a & 63, b & 63  # sub-blocks 0..3
    high_sc = (c & 15) | ((a >> 6) << 4)  # sub-blocks 4..7
    high_mn = (c >> 4) | ((b >> 6) << 4)
    sc = np.concatenate([low_sc, high_sc], axis=-1).reshape(a.shape[0], -1)
    mn = np.concatenate([low_mn, high_mn], axis=-1).reshape(a.shape[0], -1)
    return sc, mn


def ggml_codes(fmt: str, planes: dict[str, np.ndarray]) -> np.ndarray:
    """One unsigned code per weight ``[rows, cols]`` (uint8), as the integer kernel reads them."""
    if fmt == "Q8_0":  # int8 -> offset-128 codes: flip each top bit
        return _unpack(planes["qs"] ^ np.uint32(0x80808080), 8)
    if fmt == "Q6_K":
        return _unpack(planes["ql"], 4) | (_unpack(planes["qh"], 2) << 4)
    if fmt == "MXFP4":  # the doubled e2m1 value, offset by 16 (Form's middle code of 5 bits)
        return (MXFP4_VALUES[_unpack(planes["qs"], 4)] + 16).astype(np.uint8)
    codes = _unpack(planes["qs"], 4)
    return codes | (_unpack(planes["qh"], 1) << 4) if "qh" in planes else codes


def int_dot_arrays(fmt: str, planes: dict[str, np.ndarray]) -> list[np.ndarray]:
    """A part's planes -> its integer-path arrays (``array_names``): the same codes and scales, repacked."""
    form = INT_DOT_FORMATS[fmt]
    codes = int_dot.repack_codes(ggml_codes(fmt, planes), form.bits, form.high_bits)
    if fmt == "MXFP4":  # the exponent bytes (a row's words hold 4 blocks' each) as float32 scales
        exponents = _bytes(planes["e"]).reshape(planes["qs"].shape[0], -1)[:, : planes["qs"].shape[1] // 4]
        return [codes, int_dot.repack_scales(e8m0_half(exponents))]
    rows = planes["d"].shape[0]
    if form.scales == "group":
        return [codes, int_dot.repack_scales(planes["d"])]
    if form.scales == "group_min":
        return [codes, int_dot.repack_scales(planes["d"]), int_dot.repack_scales(planes["m"])]
    if form.scales == "super_min":
        sc, mn = k_scales_mins(planes)
        sub = np.stack([sc, mn], axis=-1)  # [rows, groups, 2]
        sup = np.stack([planes["d"], planes["dmin"]], axis=-1)  # [rows, blocks, 2]
        return [codes, int_dot.repack_scales(sub), int_dot.repack_scales(sup)]
    sub = _bytes(planes["scales"]).view(np.int8).reshape(rows, -1, 2)  # Q6_K: a scale per 16 weights
    return [codes, int_dot.repack_scales(sub), int_dot.repack_scales(planes["d"].reshape(rows, -1, 1))]
