"""``--quant awq|gptq|fp8``: a pre-quantized Hugging Face checkpoint's weights compiled as they are stored.

The scheme is bound to a checkpoint (``prepare``, from ``llmc.checkpoint.quantized.QuantizedCheckpoint``):
every module weight whose checkpoint tensors are all stored quantized becomes a ``StoredLinear``
(``llmc.quant.stored_layers``) with the checkpoint's codes, zero points and scales moved into llmc's planes
(``StoredLayout``): the weights decode to exactly the checkpoint's values. Weights the quantizer left in
float (embeddings, ``lm_head``, ``modules_to_not_convert``) stay float; a quantized weight that no
``StoredLinear`` can hold (a tied or quantized embedding, MoE expert stacks, a transformed weight, GPTQ
act-order) fails with the way out, or is dequantized on load where that loses nothing.

``llmc-config.json`` records the layout and the quantized parameters (``stored_quant``), so a weights
folder (``llmc quantize``) rebuilds the module and is repacked for a CPU's integer kernels when compiled.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np
from tvm.relax.frontend import nn

from llmc.checkpoint.quant_config import StoredLayout
from llmc.checkpoint.quantized import QuantizedCheckpoint
from llmc.errors import CheckpointError, ConfigError
from llmc.quant import int_dot
from llmc.quant.rewrite import rewrite_modules
from llmc.quant.scheme import Arrays, QuantScheme
from llmc.quant.stored_layers import INT_NAMES, StoredLinear, int_dot_arrays, takes_int_path

_PORTABLE = {v: k for k, v in INT_NAMES.items()}  # integer array -> the plane it is made from


@dataclass(frozen=True)
class StoredScheme(QuantScheme):
    """A checkpoint's own AWQ / GPTQ / fp8 weights, bound to one checkpoint by ``prepare``."""

    nominal_bits: float = 4.0  # ``llmc quants`` before binding
    layout: StoredLayout | None = field(default=None, compare=False)
    params: dict = field(default_factory=dict, compare=False)  # module weight -> (rows, cols)
    keeps_raw: ClassVar[bool] = True  # quantized weights come from ``reader.get_raw``

    # ------------------------------------------------------------------ binding
    def prepare(self, reader, sources: dict, path) -> StoredScheme:
        """The quantized weights of ``reader`` that this scheme keeps, by module parameter."""
        if not isinstance(reader, QuantizedCheckpoint):
            raise ConfigError(
                f"{path}: --quant {self.name} compiles a checkpoint's own {self.name} weights, and this checkpoint "
                "has no quantization_config. Pick a scheme that quantizes float weights (e.g. q4f16_1)."
            )
        if reader.quant.method != self.name:
            raise ConfigError(
                f"{path}: holds {reader.quant.source_method} weights, not {self.name}; drop --quant to keep them "
                f"(--quant {reader.quant.method}), or pick a float or group scheme to dequantize them on load."
            )
        stored = reader.stored_weights()
        params, used = {}, set()
        for param, source in sources.items():
            used.update(name for name in source.names if name in stored)
            if not source.names or not all(name in stored for name in source.names):
                continue  # partly float: dequantized on load
            if source.transform is not None or not self._fusable(reader.layout, source.names, stored):
                continue  # dequantized on load (``reader.get``): exact in float
            for name, expected in zip(source.names, source.shapes):
                if tuple(expected) != stored[name]:
                    raise CheckpointError(
                        f"{reader.describe(name)}: {name} is stored as a {stored[name][0]}x{stored[name][1]} weight, "
                        f"expected {expected[0]}x{expected[1]} from config.json. Do the weights match the config?"
                    )
            params[param] = (sum(stored[n][0] for n in source.names), stored[source.names[0]][1])
        params.update({name: shape for name, shape in stored.items() if name not in used})
        for param in params:
            self._refuse_act_order(reader, sources, param)
        return replace(self, layout=reader.layout, params=params)

    @staticmethod
    def _fusable(layout: StoredLayout, names: list[str], stored: dict) -> bool:
        """Fused parts share one layout: fp8 block scales must not straddle two parts."""
        step = layout.block[0] if layout.kind == "fp8" else 1
        return all(stored[name][0] % (step or 1) == 0 for name in names[:-1])

    def _refuse_act_order(self, reader: QuantizedCheckpoint, sources: dict, param: str) -> None:
        names = sources[param].names if param in sources else [param]
        for name in names:
            if reader.act_order(name):
                base = name.removesuffix(".weight")
                raise ConfigError(
                    f"{reader.describe(name)}: {base}.g_idx is in act-order (quantization_config.desc_act true); "
                    "--quant gptq keeps weights whose groups follow the input order. Compile with --quant q0f32 "
                    "(exact) or q4f16_1 to dequantize them on load."
                )

    def with_stored(self, stored: dict) -> StoredScheme:
        record = stored.get("stored_quant")
        if record is None:
            return replace(self, layout=None, params={})
        params = {name: (int(r), int(c)) for name, (r, c) in record["params"].items()}
        return replace(self, layout=StoredLayout.from_record(record["layout"]), params=params)

    def record(self) -> dict:
        if self.layout is None:
            return {}
        params = {name: list(shape) for name, shape in self.params.items()}
        return {"stored_quant": {"layout": self.layout.record(), "params": params}}

    @property
    def bits_per_param(self) -> float:
        """Average stored bits per quantized weight (the checkpoint's own planes)."""
        if self.layout is None or not self.params:
            return float(self.nominal_bits)
        bits = sum(self.layout.bits_per_weight(r, c) * r * c for r, c in self.params.values())
        return bits / sum(r * c for r, c in self.params.values())

    # ------------------------------------------------------------------ model rewrite
    def int_dot_isa(self, target) -> str | None:
        if self.layout is None or not any(takes_int_path(self.layout, c) for _, c in self.params.values()):
            return None
        return int_dot.target_isa(target)

    def quantize_module(
        self, module: nn.Module, quantize_embeddings: bool = True, isa: str | None = None, dtype: str | None = None
    ) -> set[str]:
        if self.layout is None:
            raise ConfigError(f"--quant {self.name} needs a checkpoint quantized with {self.name}.")
        replaced: set[str] = set()

        def swap(name: str, child: nn.Module) -> nn.Module | None:
            param = f"{name}.weight"
            if param not in self.params or not isinstance(child, nn.Linear):
                return None  # float, or a quantized embedding / expert stack: dequantized on load
            if name.split(".")[-1] == "lm_head" and not quantize_embeddings:
                return None
            rows, cols = self.params[param]
            if (child.out_features, child.in_features) != (rows, cols):
                wanted = f"{child.out_features}x{child.in_features}"
                raise ConfigError(f"{param}: stored as {rows}x{cols}, the model wants {wanted}.")
            replaced.add(param)
            layer_isa = isa if isa is not None and takes_int_path(self.layout, cols) else None
            return StoredLinear(self.layout, cols, rows, child.bias is not None, layer_isa, dtype or "float32")

        rewrite_modules(module, swap)
        return replaced

    # ------------------------------------------------------------------ weight conversion
    def convert_raw(self, name: str, parts: list, int_layout: bool) -> Arrays:
        """The planes of a stored weight from its tensors' ``(method, planes)`` (fused parts: rows stacked)."""
        planes = {key: np.concatenate([p[key] for _, p in parts], axis=0) for key in parts[0][1]}
        return self._arrays(name.removesuffix(".weight"), planes, int_layout)

    def _arrays(self, prefix: str, planes: dict[str, np.ndarray], int_layout: bool) -> Arrays:
        cols = self.params[f"{prefix}.weight"][1]
        if int_layout and takes_int_path(self.layout, cols):
            arrays = int_dot_arrays(self.layout, planes, cols)
            return [(f"{prefix}.{n}", a) for n, a in zip(("q_weight", "q_scale", "q_min"), arrays)]
        order = self.layout.plane_shapes(*self.params[f"{prefix}.weight"])
        return [(f"{prefix}.{n}", planes[n]) for n in order]

    def portable_name(self, name: str) -> str:
        prefix, _, leaf = name.rpartition(".")
        return f"{prefix}.{_PORTABLE[leaf]}" if leaf in _PORTABLE and f"{prefix}.weight" in self.params else name

    def relayout_stream(self, arrays, dtype: str | None, int_layout: bool):
        """A weights folder's arrays: a stored weight's planes (in a run) -> the target's arrays; others cast."""
        pending: dict[str, np.ndarray] = {}
        part = None
        for name, array in arrays:
            prefix, _, leaf = name.rpartition(".")
            if f"{prefix}.weight" in self.params and leaf in self.layout.plane_shapes(1, 1):
                if prefix != part and pending:
                    yield from self._arrays(part, pending, int_layout)
                    pending = {}
                part = prefix
                pending[leaf] = array
                continue
            if pending:
                yield from self._arrays(part, pending, int_layout)
                pending, part = {}, None
            yield from self.relayout([(name, array)], dtype, int_layout)
        if pending:
            yield from self._arrays(part, pending, int_layout)
