"""``--quant keep``: every weight keeps its GGUF tensor's format (a scheme per parameter).

Hugging Face MXFP4 checkpoints (GPT-OSS's) are kept the same way: their reader (``llmc.checkpoint.mxfp4``) offers
the expert blocks as ggml's MXFP4 type, repacked losslessly, and every other tensor as F32 (float parameters). One
scheme for both, not an ``mxfp4`` scheme of its own: the blocks become ggml MXFP4 planes, so the GGUF path's
layers, kernels (float decode, the CPU integer path), ``llmc-config.json`` record and weights folders serve them.

The scheme is bound to a checkpoint: ``formats`` maps each module weight to its runs of rows and
their GGML types (a fused q/k/v weight of a Q4_K_M file: ``[("Q4_K", 2048), ("Q6_K", 256)]``, rows
in the order the family concatenates them). The same map, stored in ``llmc-config.json``
(``tensor_formats``), rebuilds the module from a weights folder. Weights that are F32 in every part
stay plain float parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np
from tvm.relax.frontend import nn

from llmc.errors import ConfigError
from llmc.models.layers import Embedding
from llmc.models.moe import ExpertWeights
from llmc.quant import int_dot
from llmc.quant.experts import GGMLExpertWeights
from llmc.quant.ggml_formats import FORMATS, get_format
from llmc.quant.ggml_layers import (
    INT_DOT_FORMATS,
    GGMLLinear,
    array_names,
    int_dot_arrays,
    int_dot_group,
    make_embedding,
)
from llmc.quant.rewrite import rewrite_modules
from llmc.quant.scheme import QuantScheme

_INT_LEAVES = {"q_weight", "q_scale", "q_min", "q_super"}  # integer-path arrays (ggml_layers.array_names)
Runs = tuple[tuple[str, int], ...]  # (GGML type, rows) per run of rows


def merge_runs(parts: list[tuple[str, int]]) -> Runs:
    """Adjacent parts in the same format become one run (one kernel)."""
    runs: list[list] = []
    for fmt, rows in parts:
        if runs and runs[-1][0] == fmt:
            runs[-1][1] += rows
        else:
            runs.append([fmt, rows])
    return tuple((fmt, rows) for fmt, rows in runs)


def move_rows(name: str, transform, parts: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    """A kept weight's raw rows ``[(ggml type, uint8 [rows, bytes])]`` moved as the family's ``WeightSource``
    transform moves its float rows (GLM's and Cohere's q/k rows to rotate-half order, GPT-NeoX's q/k/v
    regrouped): the transform runs on row numbers, and must only reorder rows within each part (a block row
    moves whole; a transpose or a value change cannot be done on blocks, and is refused)."""
    total = sum(len(raw) for _, raw in parts)
    probe = np.repeat(np.arange(total, dtype=np.int64)[:, None], 2, axis=1)
    try:
        moved = np.asarray(transform(probe))
    except (ValueError, TypeError):
        moved = None
    rows_only = moved is not None and moved.shape == probe.shape and np.array_equal(moved[:, 0], moved[:, 1])
    out, start = [], 0
    for fmt, raw in parts:
        order = moved[start : start + len(raw), 0] - start if rows_only else None
        if order is None or not np.array_equal(np.sort(order), np.arange(len(raw))):
            raise ConfigError(
                f"{name}: its checkpoint tensors are changed on load in a way --quant keep cannot apply to "
                "GGML blocks; compile with --quant q0f32 or q4f16_1 to dequantize them instead."
            )
        out.append((fmt, np.ascontiguousarray(raw[order])))
        start += len(raw)
    return out


@dataclass(frozen=True)
class KeepScheme(QuantScheme):
    """The file's own formats, per parameter; bound to one checkpoint by ``bind``."""

    formats: dict = field(default_factory=dict, compare=False)  # param -> Runs
    columns: dict = field(default_factory=dict, compare=False)  # param -> in features (1 for vectors)
    embeddings: set = field(default_factory=set, compare=False)  # params swapped for GGML embeddings
    keeps_raw: ClassVar[bool] = True  # weights are the checkpoint's own blocks

    def prepare(self, reader, sources: dict, path) -> KeepScheme:
        """This scheme for one checkpoint (``llmc.compile.plan_from_config``)."""
        if not hasattr(reader, "tensor_types"):
            raise ConfigError(
                f"{path}: --quant keep keeps a GGUF file's own formats or an MXFP4 checkpoint's expert blocks, and "
                "this checkpoint is neither; pass a .gguf file, or pick a scheme that quantizes float weights "
                "(e.g. q4f16_1)."
            )
        return self.bind(reader.tensor_types(), sources, path)

    # ------------------------------------------------------------------ binding
    def bind(self, tensor_types: dict, sources: dict, path) -> KeepScheme:
        """Formats per module parameter from the checkpoint's ``{hf_name: (ggml type, shape)}`` and the
        family's ``weight_sources`` (fused parameters); unsupported types fail here, naming the tensor."""
        formats, columns, used = {}, {}, set()
        for param, source in sources.items():
            if all(name in tensor_types for name in source.names):
                used.update(source.names)
                formats[param] = [(tensor_types[n][0], int(tensor_types[n][1][0])) for n in source.names]
                columns[param] = int(np.prod(tensor_types[source.names[0]][1][1:], dtype=np.int64))
        for name, (fmt, shape) in tensor_types.items():
            if name not in used:
                formats[name] = [(fmt, int(shape[0]))]
                columns[name] = int(np.prod(shape[1:], dtype=np.int64))
        for param, parts in formats.items():
            if columns[param] > 1 or len(parts) > 1:  # matrices: every part must have a decoder
                for fmt, _ in parts:
                    get_format(fmt, param, path)
        formats = {param: merge_runs(parts) for param, parts in formats.items()}
        return replace(self, formats=formats, columns=columns, embeddings=set())

    def with_stored(self, stored: dict) -> KeepScheme:
        """The scheme recorded in a weights folder's ``llmc-config.json``."""
        if "tensor_formats" not in stored:
            raise ConfigError("weights folder: quantization keep without tensor_formats; re-run `llmc quantize`.")
        formats = {p: tuple((f, int(r)) for f, r in runs) for p, runs in stored["tensor_formats"]["runs"].items()}
        return replace(self, formats=formats, columns=dict(stored["tensor_formats"]["columns"]), embeddings=set())

    def record(self) -> dict:
        """``tensor_formats`` of llmc-config.json (runs per parameter) and the per-group summary."""
        return {
            "tensor_formats": {
                "runs": {p: [list(run) for run in runs] for p, runs in self.formats.items()},
                "columns": self.columns,
            },
            "tensor_groups": self.groups(),
        }

    def groups(self) -> dict[str, dict[str, int]]:
        """Weights per format for each tensor group (layer index replaced by ``*``)."""
        out: dict[str, dict[str, int]] = {}
        for param, runs in self.formats.items():
            group = re.sub(r"\.\d+\.", ".*.", param)
            for fmt, rows in runs:
                counts = out.setdefault(group, {})
                counts[fmt] = counts.get(fmt, 0) + rows * self.columns[param]
        return out

    @property
    def bits_per_param(self) -> float:
        """Average stored bits per weight over every parameter (F32 vectors included)."""
        if not self.formats:
            return 32.0
        bits = weights = 0
        for param, runs in self.formats.items():
            for fmt, rows in runs:
                count = rows * self.columns[param]
                per = FORMATS[fmt].bits_per_weight if fmt in FORMATS else 32.0
                bits, weights = bits + per * count, weights + count
        return bits / weights

    # ------------------------------------------------------------------ model rewrite
    def _kept(self, param: str) -> Runs | None:
        runs = self.formats.get(param)
        if runs is None or all(fmt == "F32" for fmt, _ in runs):
            return None
        return runs

    def int_dot_isa(self, target) -> str | None:
        if not any(fmt in INT_DOT_FORMATS for runs in self.formats.values() for fmt, _ in runs):
            return None
        return int_dot.target_isa(target)

    def quantize_module(
        self, module: nn.Module, quantize_embeddings: bool = True, isa: str | None = None, dtype: str | None = None
    ) -> set[str]:
        if not self.formats:
            raise ConfigError(
                "--quant keep needs a GGUF file or an MXFP4 checkpoint (it keeps their own tensor formats)."
            )
        replaced: set[str] = set()
        embeddings: set[str] = set()

        def swap(name: str, child: nn.Module) -> nn.Module | None:
            param = f"{name}.weight"
            runs = self._kept(param)
            is_head = name.split(".")[-1] == "lm_head"
            if runs is None or (is_head and not quantize_embeddings):
                return None
            if isinstance(child, ExpertWeights):
                if len(runs) != 1:
                    raise ConfigError(
                        f"{param}: the experts of this GGUF file mix formats ({', '.join(f for f, _ in runs)}), "
                        "which --quant keep cannot run yet; compile with --quant q4f16_1 (or q8f16_1)."
                    )
                replaced.add(param)
                return GGMLExpertWeights(child.experts, child.rows, child.cols, runs[0][0], isa)
            if isinstance(child, nn.Linear):
                replaced.add(param)
                return GGMLLinear(child.in_features, list(runs), child.bias is not None, isa, dtype or "float32")
            if isinstance(child, Embedding) and quantize_embeddings and len(runs) == 1:
                replaced.add(param)
                embeddings.add(param)
                return make_embedding(child.num, child.dim, runs[0][0], isa)
            return None

        rewrite_modules(module, swap)
        self.embeddings.clear()
        self.embeddings.update(embeddings)
        return replaced

    # ------------------------------------------------------------------ weight conversion
    def convert_raw(self, name: str, parts: list[tuple[str, np.ndarray]], int_layout: bool) -> list:
        """Stored arrays of a kept weight from its tensors' raw rows ``[(ggml type, uint8 [rows, bytes])]``."""
        runs: list[tuple[str, list]] = []
        for fmt, raw in parts:
            if runs and runs[-1][0] == fmt:
                runs[-1][1].append(raw)
            else:
                runs.append((fmt, [raw]))
        prefix = name.removesuffix(".weight")
        out = []
        for index, (fmt, raws) in enumerate(runs):
            planes = FORMATS[fmt].split(raws[0] if len(raws) == 1 else np.concatenate(raws, axis=0))
            part = prefix if name in self.embeddings else f"{prefix}.parts.{index}"
            out += self.part_arrays(part, fmt, planes, int_layout)
        return out

    @staticmethod
    def part_arrays(part: str, fmt: str, planes: dict[str, np.ndarray], int_layout: bool) -> list:
        if int_layout and int_dot_group(fmt, "any") is not None:
            return [(f"{part}.{leaf}", array) for leaf, array in zip(array_names(fmt), int_dot_arrays(fmt, planes))]
        return [(f"{part}.{plane.name}", planes[plane.name]) for plane in FORMATS[fmt].planes]

    def portable_name(self, name: str) -> str:
        """An integer-path array comes from its part's planes (named here by the format's first plane)."""
        prefix, _, leaf = name.rpartition(".")
        fmt = self._plane_format(prefix, set()) if leaf in _INT_LEAVES else None
        return f"{prefix}.{FORMATS[fmt].planes[0].name}" if fmt in FORMATS else name

    def relayout_stream(self, arrays, dtype: str | None, int_layout: bool):
        """A weights folder's arrays (portable planes) -> those of the target's module, in order."""
        pending: dict[str, np.ndarray] = {}
        part = None

        def flush():
            if not pending:
                return []
            fmt = self._plane_format(part, set(pending))
            if fmt is None:
                return [
                    (f"{part}.{n}", a.astype(dtype) if dtype and a.dtype.kind == "f" else a) for n, a in pending.items()
                ]
            return self.part_arrays(part, fmt, dict(pending), int_layout)

        for name, array in arrays:
            prefix, _, leaf = name.rpartition(".")
            if prefix != part:
                yield from flush()
                pending, part = {}, prefix
            pending[leaf] = array
        yield from flush()

    def _plane_format(self, part: str, leaves: set[str]) -> str | None:
        """The GGML format of a stored part (``...qkv_proj.parts.1`` or an embedding), None for float arrays."""
        match = re.match(r"^(.*)\.parts\.(\d+)$", part)
        param, index = (f"{match.group(1)}.weight", int(match.group(2))) if match else (f"{part}.weight", 0)
        runs = self._kept(param)
        if runs is None or index >= len(runs) or "weight" in leaves or "bias" in leaves:
            return None
        return runs[index][0]


def describe_groups(groups: dict[str, dict[str, int]]) -> list[tuple[str, str]]:
    """``llmc inspect`` lines: each tensor group (``layers.*.self_attn.qkv_proj``) and its formats by share."""
    lines = []
    for group, counts in sorted(groups.items()):
        total = sum(counts.values())
        shares = ", ".join(f"{fmt} {100 * n / total:.0f}%" for fmt, n in sorted(counts.items(), key=lambda x: -x[1]))
        lines.append((group.removeprefix("model.").removesuffix(".weight"), shares))
    return lines


KEEP = KeepScheme(
    "keep",
    "float32",
    "each tensor in its GGUF file's own format, decoded in the kernels (GGUF files; an MXFP4 checkpoint's experts)",
)
