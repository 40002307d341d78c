"""Group-quantized expert weights: ``ExpertWeights`` whose ``[experts * rows, cols]`` matrix is stored as
one group-quantized matrix (the 3-D experts are a tall 2-D weight to the quantizer), decoded inside the
gathered expert matmul (``llmc.models.moe.expert_matmul``)."""

from __future__ import annotations

from collections.abc import Sequence

from tvm import te
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor

from llmc.models.moe import ExpertWeights
from llmc.quant import int_dot
from llmc.quant.ggml_formats import FORMATS
from llmc.quant.ggml_layers import GGMLPart
from llmc.quant.group import GroupQuant, _quantized_parameters, int_dot_grouped_matmul


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
    decoded in the gathered matmul. Stored as one ``parts.0`` part of raw planes, like a one-run
    ``GGMLLinear``; experts never take the CPU integer layout."""

    def __init__(self, experts: int, rows: int, cols: int, fmt: str):
        self.experts, self.rows, self.cols = experts, rows, cols
        self.fmt = FORMATS[fmt]
        self.parts = nn.ModuleList([GGMLPart(self.fmt, experts * rows, cols)])

    def planes(self) -> list:
        return [getattr(self.parts[0], plane.name) for plane in self.fmt.planes]

    def element(self, planes: Sequence[te.Tensor], row, col):
        return self.fmt.te_element(dict(zip([p.name for p in self.fmt.planes], planes)), row, col)

    def to(self, dtype: str | None = None) -> None:  # planes keep their dtypes
        pass
