"""Quantization schemes by name: one line each (``llmc quants`` prints this table)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmc.errors import LlmcError


@dataclass(frozen=True)
class QuantScheme:
    """A weight format: the model's compute dtype and how each weight array is converted."""

    name: str
    model_dtype: str
    bits_per_param: float
    description: str

    def convert(self, name: str, array: np.ndarray) -> np.ndarray:
        """The stored form of one parameter (full-precision schemes only cast)."""
        return np.ascontiguousarray(array.astype(self.model_dtype, copy=False))


QUANTS: dict[str, QuantScheme] = {
    "q0f32": QuantScheme("q0f32", "float32", 32, "no quantization, float32 weights and compute"),
    "q0f16": QuantScheme("q0f16", "float16", 16, "no quantization, float16 weights and compute"),
}


def get_quant(name: str) -> QuantScheme:
    if name not in QUANTS:
        raise LlmcError(f"unknown quantization {name!r}; known: {', '.join(QUANTS)} (see `llmc quants`).")
    return QUANTS[name]
