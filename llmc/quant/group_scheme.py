"""``GroupScheme``: llmc's symmetric group quantization (``q4f16_1``, ``q8f16_1``, ...) as a ``QuantScheme``.

One ``GroupQuant`` definition drives both the module rewrite (Linear/Embedding/expert weights ->
their quantized layers) and the conversion of each weight; norms and biases stay in float.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np
from tvm.relax.frontend import nn

from llmc.models.layers import Embedding
from llmc.models.moe import ExpertWeights
from llmc.quant import int_dot
from llmc.quant.experts import QuantizedExpertWeights
from llmc.quant.group import GroupQuant, QuantizedEmbedding, QuantizedLinear
from llmc.quant.rewrite import rewrite_modules
from llmc.quant.scheme import Arrays, QuantScheme


@dataclass(frozen=True)
class GroupScheme(QuantScheme):
    """Every Linear/Embedding/expert weight group-quantized by ``group``; stored as ``q_weight``, ``q_scale``."""

    group: GroupQuant

    @property
    def bits_per_param(self) -> float:
        scale_bits = np.dtype(self.group.scale_dtype).itemsize * 8
        return 32 / self.group.per_word + scale_bits / self.group.group_size

    def int_dot_isa(self, target) -> str | None:
        if not int_dot.supports(self.group):
            return None
        return int_dot.target_isa(target)

    def quantize_module(
        self, module: nn.Module, quantize_embeddings: bool = True, isa: str | None = None, dtype: str | None = None
    ) -> set[str]:
        """``dtype``, where it differs from the scheme's, is also that of the scales (float32 on CPUs)."""
        replaced: set[str] = set()
        # the integer kernels read the scheme's own scales (fp16: widened in the kernel)
        keep_scales = isa is not None or dtype in (None, self.group.scale_dtype)
        group = self.group if keep_scales else replace(self.group, scale_dtype=dtype)

        def swap(name: str, child: nn.Module) -> nn.Module | None:
            is_head = name.split(".")[-1] == "lm_head"
            if isinstance(child, nn.Linear) and (quantize_embeddings or not is_head):
                replaced.add(f"{name}.weight")
                return QuantizedLinear(child.in_features, child.out_features, group, child.bias is not None, isa)
            if isinstance(child, ExpertWeights):
                replaced.add(f"{name}.weight")
                return QuantizedExpertWeights(child.experts, child.rows, child.cols, group, isa)
            if isinstance(child, Embedding) and quantize_embeddings:
                replaced.add(f"{name}.weight")
                return QuantizedEmbedding(child.num, child.dim, group, isa)
            return None

        rewrite_modules(module, swap)
        return replaced

    def convert(
        self, name: str, array: np.ndarray, quantized: set[str], dtype: str | None = None, int_layout: bool = False
    ) -> Arrays:
        if name in quantized:
            packed, scale = self.group.quantize(np.asarray(array, dtype=np.float32))
            prefix = name.removesuffix(".weight")
            return self.relayout([(f"{prefix}.q_weight", packed), (f"{prefix}.q_scale", scale)], dtype, int_layout)
        return super().convert(name, array, quantized, dtype, int_layout)

    def relayout(self, arrays: Arrays, dtype: str | None, int_layout: bool) -> Arrays:
        """A quantized weight's pair is repacked for the CPU integer kernels (``int_layout``; scales keep
        their dtype); other arrays as ``QuantScheme.relayout``."""
        if int_layout and len(arrays) == 2 and arrays[0][0].endswith(".q_weight"):
            (weight_name, packed), (scale_name, scale) = arrays
            return list(zip((weight_name, scale_name), int_dot.repack(self.group, packed, scale)))
        return super().relayout(arrays, dtype, int_layout)

    def relayout_stream(
        self, arrays: Iterable[tuple[str, np.ndarray]], dtype: str | None, int_layout: bool
    ) -> Iterator[tuple[str, np.ndarray]]:
        """Each ``q_weight`` is relaid out with the ``q_scale`` that follows it."""
        pending: Arrays = []
        for name, array in arrays:
            pending.append((name, array))
            if name.endswith(".q_weight"):
                continue  # its scale follows
            yield from self.relayout(pending, dtype, int_layout)
            pending = []
