"""``QuantScheme``: the interface every quantization scheme implements, with the defaults of a float scheme.

The compiler drives a scheme through these hooks, in this order, and calls each one directly:

1. ``prepare(reader, sources, path)`` binds the scheme to a checkpoint (``llmc compile``/``quantize``
   of a checkpoint); ``with_stored(stored)`` rebuilds it from a weights folder's ``llmc-config.json``.
2. ``record()`` gives the fields that ``with_stored`` reads back, written into ``llmc-config.json``.
3. ``compute_dtype(target)`` and ``int_dot_isa(target)`` pick the target's dtype and CPU integer path;
   ``quantize_module(...)`` swaps the model's layers for quantized ones and names the weights it took.
4. Each weight of a checkpoint: ``convert(...)`` from a float array, or ``convert_raw(...)`` from the
   checkpoint's own encoded blocks where ``keeps_raw``; a weights folder's arrays go through
   ``relayout_stream(...)`` to the target's layout, named by ``portable_name(...)``.

The defaults leave the model in float (``model_dtype``): ``q0f32`` and ``q0f16`` are plain instances.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tvm.relax.frontend import nn

Arrays = list[tuple[str, np.ndarray]]  # (stored name, array) of one parameter


@dataclass(frozen=True)
class QuantScheme:
    """A weight format by name: its compute dtype, its module rewrite and its weight conversion."""

    name: str
    model_dtype: str
    description: str

    keeps_raw: ClassVar[bool] = False
    """Whether quantized weights come from the checkpoint's encoded blocks (``convert_raw``), not floats."""

    # ------------------------------------------------------------------ binding
    def prepare(self, reader: Any, sources: dict, path: Path | str) -> QuantScheme:
        """This scheme bound to one checkpoint (``reader``; ``sources``: the family's ``weight_sources``).
        Default: the scheme itself (nothing depends on the checkpoint)."""
        return self

    def with_stored(self, stored: dict) -> QuantScheme:
        """This scheme as ``record`` left it in a weights folder's ``llmc-config.json``. Default: itself."""
        return self

    def record(self) -> dict:
        """Fields for ``llmc-config.json`` that ``with_stored`` reads back. Default: none."""
        return {}

    @property
    def bits_per_param(self) -> float:
        """Average stored bits per weight. Default: those of ``model_dtype``."""
        return float(np.dtype(self.model_dtype).itemsize * 8)

    # ------------------------------------------------------------------ model rewrite
    def compute_dtype(self, target) -> str:
        """Activations and float weights: float32 on CPUs (fp16 arithmetic there is emulated and slow)."""
        return "float32" if target.kind.name == "llvm" else self.model_dtype

    def int_dot_isa(self, target) -> str | None:
        """The CPU integer-dot instruction set this scheme uses on ``target``. Default: None (float path)."""
        return None

    def quantize_module(
        self, module: nn.Module, quantize_embeddings: bool = True, isa: str | None = None, dtype: str | None = None
    ) -> set[str]:
        """Swap layers of ``module`` for quantized ones in place; return the float weight names replaced.

        ``quantize_embeddings``: also the token embedding and LM head; ``isa``: the CPU integer layout
        (``int_dot_isa``); ``dtype``: the compute dtype. Default: no rewrite, nothing replaced.
        """
        return set()

    # ------------------------------------------------------------------ weight conversion
    def convert(
        self, name: str, array: np.ndarray, quantized: set[str], dtype: str | None = None, int_layout: bool = False
    ) -> Arrays:
        """The stored arrays of one float parameter (``quantized``: what ``quantize_module`` replaced;
        ``dtype``: of float weights; ``int_layout``: the CPU integer layout). Default: cast to ``dtype``."""
        return [(name, np.ascontiguousarray(array.astype(dtype or self.model_dtype, copy=False)))]

    def convert_raw(self, name: str, parts: list[tuple[str, np.ndarray]], int_layout: bool) -> Arrays:
        """The stored arrays of a replaced weight from its tensors' encoded rows ``[(format, uint8 rows)]``;
        called instead of ``convert`` where ``keeps_raw``. Default: unsupported (raises)."""
        raise NotImplementedError(f"quantization {self.name} converts float weights, not encoded blocks")

    def relayout(self, arrays: Arrays, dtype: str | None, int_layout: bool) -> Arrays:
        """One parameter's stored arrays in the portable layout -> those a target's module wants.
        Default: float arrays cast to ``dtype`` (None: unchanged), others as they are."""
        if dtype is None:
            return arrays
        return [
            (name, np.ascontiguousarray(a.astype(dtype, copy=False)) if a.dtype.kind == "f" else a)
            for name, a in arrays
        ]

    def relayout_stream(
        self, arrays: Iterable[tuple[str, np.ndarray]], dtype: str | None, int_layout: bool
    ) -> Iterator[tuple[str, np.ndarray]]:
        """A weights folder's ``(name, array)`` stream -> the target's arrays, in order.
        Default: ``relayout`` of each array alone."""
        for name, array in arrays:
            yield from self.relayout([(name, array)], dtype, int_layout)

    def portable_name(self, name: str) -> str:
        """The name a module parameter has in a weights folder. Default: the same."""
        return name
