"""Quantized expert weights: ``ExpertWeights`` whose ``[experts * rows, cols]`` matrix is stored as one
quantized matrix (the 3-D experts are a tall 2-D weight to the quantizer): llmc's group schemes and, under
``--quant keep``, a GGUF file's block format. On the CPU integer path they run the grouped integer kernel
(``int_matmul(experts=...)``) over expert-sorted rows; elsewhere they are decoded in the gathered expert
matmul (``llmc.models.moe.expert_matmul``)."""

from __future__ import annotations

from collections.abc import Sequence

from tvm import te
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from llmc.models.moe import ExpertWeights
from llmc.quant import int_dot
from llmc.quant.ggml_formats import FORMATS
from llmc.quant.ggml_layers import GGMLPart, IntDotPart, array_names, int_dot_group
from llmc.quant.group import GroupQuant, _quantized_parameters, int_dot_grouped_matmul
from llmc.quant.int_dot_kernels import int_matmul


class QuantizedExpertWeights(ExpertWeights):
    """``q_weight``/``q_scale`` of the whole expert stack; with ``isa`` in the CPU integer layout (the
    layout every other matrix of the artifact has), decoded to float32 by the kernel."""

    def __init__(self, experts: int, rows: int, cols: int, gq: GroupQuant, isa: str | None = None):
        self.experts, self.rows, self.cols, self.gq, self.isa = experts, rows, cols, gq, isa
        self.q_weight, self.q_scale = _quantized_parameters(gq, experts * rows, cols, isa)

    def planes(self) -> list:
        return [self.q_weight, self.q_scale]

    def element(self, planes: Sequence[te.Tensor], row, col):
        if self.isa is None:
            return self.gq.te_element(planes[0], planes[1], row, col)
        return int_dot.te_element(self.gq, planes[0], planes[1], row, col)

    def has_grouped(self) -> bool:
        return self.isa is not None and self.rows % int_dot.TILE_ROWS == 0

    def grouped(self, x: Tensor, indptr: Tensor) -> Tensor:
        return int_dot_grouped_matmul(
            self.gq, self.isa, x, indptr, self.q_weight, self.q_scale, self.experts, self.rows, self.cols
        )

    def to(self, dtype: str | None = None) -> None:  # packed weights keep their dtype
        pass


class GGMLExpertWeights(ExpertWeights):
    """``--quant keep``: the expert stack in its GGUF file's block format (one format for the whole stack),
    stored as one ``parts.0`` part like a one-run ``GGMLLinear``: raw planes decoded in the gathered
    matmul, or with ``isa`` the integer layout of that format, run by the grouped integer kernel."""

    def __init__(self, experts: int, rows: int, cols: int, fmt: str, isa: str | None = None):
        self.experts, self.rows, self.cols, self.fmt_name = experts, rows, cols, fmt
        self.form = int_dot_group(fmt, isa)
        if self.form is not None and cols % FORMATS[fmt].block_size == 0:
            self.parts = nn.ModuleList([IntDotPart(fmt, experts * rows, cols, isa)])
            self.names = array_names(fmt)
        else:
            self.form = None
            self.parts = nn.ModuleList([GGMLPart(FORMATS[fmt], experts * rows, cols)])
            self.names = tuple(plane.name for plane in FORMATS[fmt].planes)

    def planes(self) -> list:
        return [getattr(self.parts[0], name) for name in self.names]

    def element(self, planes: Sequence[te.Tensor], row, col):
        if self.form is not None:
            codes, first, *second = planes
            return int_dot.form_element(self.form, codes, first, second[0] if second else None, row, col)
        return FORMATS[self.fmt_name].te_element(dict(zip(self.names, planes)), row, col)

    def has_grouped(self) -> bool:
        return self.form is not None and self.rows % int_dot.TILE_ROWS == 0

    def grouped(self, x: Tensor, indptr: Tensor) -> Tensor:
        part = self.parts[0]
        return op.tensor_ir_op(
            int_matmul(
                self.experts * self.rows, self.cols, self.form.bits, part.isa, form=self.form, experts=self.experts
            ),
            "int_dot_grouped_matmul",
            args=[x, indptr, *self.planes()],
            out=Tensor.placeholder((x.shape[0], self.rows), "float32"),
        )

    def to(self, dtype: str | None = None) -> None:  # planes keep their dtypes
        pass
