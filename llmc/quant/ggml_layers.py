"""Layers whose weights stay in GGML block formats (``--quant keep``): decode feeds the matmul.

A ``GGMLLinear`` weight may be made of parts in different formats (a fused q/k/v projection from a
Q4_K_M file: q and k in Q4_K, v in Q6_K); each run of rows in one format is one part with its own
planes and its own ``dequantize -> matmul`` kernel, and the outputs are concatenated. On x86 CPUs a
Q4_0 / Q8_0 part takes the integer-dot path (``llmc.quant.int_dot``): same codes and fp16 scales as
llmc's symmetric group-32 schemes, repacked.
"""

from __future__ import annotations

import numpy as np
from tvm import te
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from llmc.quant import int_dot
from llmc.quant.ggml_formats import FORMATS, GGMLFormat
from llmc.quant.group import PER_WORD_ATTR, GroupQuant, QuantizedEmbedding, QuantizedLinear, int_dot_matmul

# formats with the math of a group-32 scheme: value = (code - offset) * d, d in float16; Q4_1 (value =
# d * code + m) adds a float16 minimum per group, taken by the kernel's ``with_min`` form (linear layers only)
INT_DOT_FORMATS = {
    "Q4_0": GroupQuant(4, 32, "float16"),
    "Q8_0": GroupQuant(8, 32, "float16"),
    "Q4_1": GroupQuant(4, 32, "float16"),
}
WITH_MIN = {"Q4_1"}


def int_dot_group(fmt: str, isa: str | None, embedding: bool = False) -> GroupQuant | None:
    """The group scheme a part in ``fmt`` runs as on the CPU integer path (None: the decode path).
    Embeddings (gathered rows, tied LM head) take it for the offset formats only."""
    if isa is None or (embedding and fmt in WITH_MIN):
        return None
    return INT_DOT_FORMATS.get(fmt)


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


class IntDotPart(QuantizedLinear):
    """A Q4_0 / Q4_1 / Q8_0 part on the CPU integer path (``q_weight``, ``q_scale``, Q4_1's ``q_min``, in
    the repacked layout)."""

    def __init__(self, fmt: str, rows: int, cols: int, isa: str):
        self.fmt_name = fmt
        super().__init__(cols, rows, INT_DOT_FORMATS[fmt], False, isa)
        self.q_min = nn.Parameter(tuple(self.q_scale.shape), "float16") if fmt in WITH_MIN else None

    def matmul(self, x: Tensor) -> Tensor:
        return int_dot_matmul(
            self.gq, self.isa, x, self.q_weight, self.q_scale, self.out_features, self.in_features, self.q_min
        )


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


def make_embedding(num: int, dim: int, fmt: str, isa: str | None) -> nn.Module:
    gq = int_dot_group(fmt, isa, embedding=True)
    return QuantizedEmbedding(num, dim, gq, isa) if gq is not None else GGMLEmbedding(num, dim, FORMATS[fmt])


# ---------------------------------------------------------------------- numpy: stored arrays
def int_dot_arrays(fmt: str, planes: dict[str, np.ndarray]) -> list[np.ndarray]:
    """A Q4_0 / Q4_1 / Q8_0 part's planes -> [codes, fp16 scales (, Q4_1's fp16 minimums)] in the CPU
    integer layout (same values).

    The planes already hold the codes in weight order, 32 // bits per word: llmc's group layout. Q4_0
    codes are offset-8 nibbles as llmc's, Q4_1's plain nibbles; Q8_0's int8 become offset-128 codes by
    flipping each top bit.
    """
    gq = INT_DOT_FORMATS[fmt]
    packed = planes["qs"] ^ np.uint32(0x80808080) if fmt == "Q8_0" else planes["qs"]
    codes, scales = int_dot.repack(gq, packed, planes["d"])
    if fmt not in WITH_MIN:
        return [codes, scales]
    return [codes, scales, int_dot.repack_scales(planes["m"])]
