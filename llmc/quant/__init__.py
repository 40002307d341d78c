"""Quantization schemes by name (``llmc quants`` prints this table).

A scheme rewrites the model (Linear/Embedding -> quantized versions) and converts each weight
array, both from the same ``GroupQuant`` definition. Norms and biases stay full precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm.relax.frontend import nn

from llmc.errors import LlmcError
from llmc.models.layers import Embedding
from llmc.quant.group import GroupQuant, QuantizedEmbedding, QuantizedLinear


@dataclass(frozen=True)
class QuantScheme:
    """A weight format: compute dtype, optional group quantization, and the conversion of each array."""

    name: str
    model_dtype: str
    description: str
    group: GroupQuant | None = None

    @property
    def bits_per_param(self) -> float:
        if self.group is None:
            return float(np.dtype(self.model_dtype).itemsize * 8)
        scale_bits = np.dtype(self.group.scale_dtype).itemsize * 8
        return 32 / self.group.per_word + scale_bits / self.group.group_size

    def quantize_module(self, module: nn.Module, quantize_embeddings: bool = True) -> set[str]:
        """Swap Linear/Embedding layers for quantized ones in place; return the float weight names replaced."""
        replaced: set[str] = set()
        if self.group is None:
            return replaced

        def swap(name: str, child: nn.Module) -> nn.Module | None:
            is_head = name.split(".")[-1] == "lm_head"
            if isinstance(child, nn.Linear) and (quantize_embeddings or not is_head):
                replaced.add(f"{name}.weight")
                return QuantizedLinear(child.in_features, child.out_features, self.group, child.bias is not None)
            if isinstance(child, Embedding) and quantize_embeddings:
                replaced.add(f"{name}.weight")
                return QuantizedEmbedding(child.num, child.dim, self.group)
            return None

        _rewrite(module, "", swap)
        return replaced

    def convert(self, name: str, array: np.ndarray, quantized: set[str]) -> list[tuple[str, np.ndarray]]:
        """The stored arrays for one float parameter."""
        if name in quantized:
            packed, scale = self.group.quantize(np.asarray(array, dtype=np.float32))
            prefix = name.removesuffix(".weight")
            return [(f"{prefix}.q_weight", packed), (f"{prefix}.q_scale", scale)]
        return [(name, np.ascontiguousarray(array.astype(self.model_dtype, copy=False)))]


def _rewrite(module: nn.Module, prefix: str, swap) -> None:
    for attr, child in list(vars(module).items()):
        name = f"{prefix}{attr}"
        if isinstance(child, nn.ModuleList):
            for index, sub in enumerate(child.modules):
                new = swap(f"{name}.{index}", sub)
                if new is not None:
                    child.modules[index] = new
                else:
                    _rewrite(sub, f"{name}.{index}.", swap)
        elif isinstance(child, nn.Module):
            new = swap(name, child)
            if new is not None:
                setattr(module, attr, new)
            else:
                _rewrite(child, f"{name}.", swap)


QUANTS: dict[str, QuantScheme] = {
    "q0f32": QuantScheme("q0f32", "float32", "no quantization, float32 weights and compute"),
    "q0f16": QuantScheme("q0f16", "float16", "no quantization, float16 weights and compute"),
    "q8f16_1": QuantScheme(
        "q8f16_1", "float16", "int8 symmetric, group 32, float16 scales and compute", GroupQuant(8, 32, "float16")
    ),
    "q4f16_1": QuantScheme(
        "q4f16_1",
        "float16",
        "int4 symmetric, group 32, 8 per uint32, float16 scales and compute",
        GroupQuant(4, 32, "float16"),
    ),
    "q4f32_1": QuantScheme(
        "q4f32_1",
        "float32",
        "int4 symmetric, group 32, 8 per uint32, float32 scales and compute",
        GroupQuant(4, 32, "float32"),
    ),
    "q3f16_1": QuantScheme(
        "q3f16_1",
        "float16",
        "int3 symmetric, group 40, 10 per uint32, float16 scales and compute",
        GroupQuant(3, 40, "float16"),
    ),
}


def get_quant(name: str) -> QuantScheme:
    if name not in QUANTS:
        raise LlmcError(f"unknown quantization {name!r}; known: {', '.join(QUANTS)} (see `llmc quants`).")
    return QUANTS[name]
