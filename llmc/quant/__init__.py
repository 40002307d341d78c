"""Quantization schemes by name (``llmc quants`` prints this table).

A scheme rewrites the model (Linear/Embedding -> quantized versions) and converts each weight
array, both from the same ``GroupQuant`` definition. Norms and biases stay full precision.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from tvm.relax.frontend import nn

from llmc.errors import LlmcError
from llmc.models.layers import Embedding
from llmc.models.moe import ExpertWeights
from llmc.quant import int_dot
from llmc.quant.experts import QuantizedExpertWeights
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

    def int_dot_isa(self, target) -> str | None:
        """The CPU integer-dot instruction set this scheme uses on ``target`` (None: the float path)."""
        if self.group is None or not int_dot.supports(self.group):
            return None
        return int_dot.target_isa(target)

    def compute_dtype(self, target) -> str:
        """Activations and float weights: float32 on CPUs (fp16 arithmetic there is emulated and slow)."""
        return "float32" if target.kind.name == "llvm" else self.model_dtype

    def quantize_module(
        self, module: nn.Module, quantize_embeddings: bool = True, isa: str | None = None, dtype: str | None = None
    ) -> set[str]:
        """Swap Linear/Embedding layers for quantized ones in place; return the float weight names replaced.

        ``isa`` selects the CPU integer layout and kernels (``int_dot_isa``); ``dtype`` the compute
        dtype when it differs from the scheme's (float32 on CPUs: scales are stored as float32).
        """
        replaced: set[str] = set()
        if self.group is None:
            return replaced
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

        _rewrite(module, "", swap)
        return replaced

    def convert(
        self, name: str, array: np.ndarray, quantized: set[str], dtype: str | None = None, int_layout: bool = False
    ) -> list[tuple[str, np.ndarray]]:
        """The stored arrays for one float parameter (``dtype``: of float weights; ``int_layout``: CPU repack)."""
        if name in quantized:
            packed, scale = self.group.quantize(np.asarray(array, dtype=np.float32))
            prefix = name.removesuffix(".weight")
            return self.relayout([(f"{prefix}.q_weight", packed), (f"{prefix}.q_scale", scale)], dtype, int_layout)
        return [(name, np.ascontiguousarray(array.astype(dtype or self.model_dtype, copy=False)))]

    def relayout(self, arrays: list[tuple[str, np.ndarray]], dtype: str | None, int_layout: bool) -> list:
        """One parameter's stored arrays in the standard layout -> those a target's module wants:
        repacked for the CPU integer kernels (``int_layout``; scales keep their dtype), other float
        arrays cast to ``dtype``."""
        if int_layout and len(arrays) == 2 and arrays[0][0].endswith(".q_weight"):
            (weight_name, packed), (scale_name, scale) = arrays
            return list(zip((weight_name, scale_name), int_dot.repack(self.group, packed, scale)))
        if dtype is None:
            return arrays
        return [
            (name, np.ascontiguousarray(a.astype(dtype, copy=False)) if a.dtype.kind == "f" else a)
            for name, a in arrays
        ]

    def portable_name(self, name: str) -> str:
        """The name a module parameter has in a weights folder (the same for group schemes)."""
        return name

    def relayout_stream(self, arrays, dtype: str | None, int_layout: bool):
        """A weights folder's ``(name, array)`` stream -> the target's arrays (``relayout`` per parameter)."""
        pending: list = []
        for name, array in arrays:
            pending.append((name, array))
            if name.endswith(".q_weight"):
                continue  # its scale follows
            yield from self.relayout(pending, dtype, int_layout)
            pending = []


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


from llmc.quant.encode import EncodeScheme  # noqa: E402 - these build on QuantScheme above
from llmc.quant.keep import KEEP  # noqa: E402

QUANTS["keep"] = KEEP
QUANTS["q4f16_s"] = QuantScheme(
    "q4f16_s",
    "float16",
    "int4 symmetric, group 32, float16 scales chosen by error search (q4f16_1's layout and kernels)",
    GroupQuant(4, 32, "float16", search=True),
)
QUANTS["q3f16_s"] = QuantScheme(
    "q3f16_s",
    "float16",
    "int3 symmetric, group 40, float16 scales chosen by error search (q3f16_1's layout and kernels)",
    GroupQuant(3, 40, "float16", search=True),
)
QUANTS["q4a_s"] = EncodeScheme(
    "q4a_s",
    "float32",
    "int4 asymmetric (scale + minimum), group 32, searched, as GGML Q4_1 blocks; embedding Q8_0",
    encode_format="Q4_1",
)
KEEP_QUANT = "keep"  # the default for GGUF files


def get_quant(name: str) -> QuantScheme:
    if name not in QUANTS:
        raise LlmcError(f"unknown quantization {name!r}; known: {', '.join(QUANTS)} (see `llmc quants`).")
    return QUANTS[name]
