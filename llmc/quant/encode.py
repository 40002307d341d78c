"""llmc's own encoders into GGML block formats, for float checkpoints: the weights then run through the
same decode kernels as ``--quant keep`` (every target), and gguf-py can read them back.

``Q4_1`` (asymmetric 4-bit with a minimum, group 32, fp16 scale and minimum: 5.0 bits per weight)
with the scale and minimum chosen by error search (``llmc.quant.search``). The token embedding (also
the tied LM head) is kept at 8 bits, ``Q8_0`` (gguf-py's reference quantizer), as llama.cpp keeps its
output tensor at 6-8 bits: it is the most sensitive matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
from tvm.relax.frontend import nn

from llmc.errors import ConfigError
from llmc.models.layers import Embedding
from llmc.quant.ggml_formats import FORMATS
from llmc.quant.keep import KeepScheme
from llmc.quant.rewrite import rewrite_modules
from llmc.quant.search import search_asymmetric


def encode_q4_1(weight: np.ndarray, rows_per_chunk: int = 1024) -> np.ndarray:
    """Float ``[rows, cols]`` (cols a multiple of 32) -> Q4_1 blocks ``uint8 [rows, cols // 32 * 20]``."""
    rows, cols = weight.shape
    out = np.empty((rows, cols // 32, 20), np.uint8)
    for start in range(0, rows, rows_per_chunk):
        groups = np.asarray(weight[start : start + rows_per_chunk], np.float32).reshape(-1, cols // 32, 32)
        d, m = search_asymmetric(groups, 16)
        d16, m16 = d.astype(np.float16), m.astype(np.float16)
        step = d16.astype(np.float32)[..., None]
        safe = np.where(step == 0, 1, step)
        q = np.clip(np.rint((groups - m16.astype(np.float32)[..., None]) / safe), 0, 15).astype(np.uint8)
        q[np.broadcast_to(step == 0, q.shape)] = 0
        block = out[start : start + rows_per_chunk]
        block[..., 0:2] = d16.view(np.uint8).reshape(*d16.shape, 2)
        block[..., 2:4] = m16.view(np.uint8).reshape(*m16.shape, 2)
        block[..., 4:20] = q[..., :16] | (q[..., 16:] << 4)
    return out.reshape(rows, -1)


def encode_q8_0(weight: np.ndarray) -> np.ndarray:
    """Float ``[rows, cols]`` -> Q8_0 blocks (gguf-py's reference: ``d = absmax / 127``, round to nearest)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    return np.asarray(quantize(np.asarray(weight, np.float32), GGMLQuantizationType.Q8_0))


ENCODERS = {"Q4_1": encode_q4_1, "Q8_0": encode_q8_0}


@dataclass(frozen=True)
class EncodeScheme(KeepScheme):
    """Every Linear/Embedding weight of a float checkpoint encoded by llmc into ``encode_format``."""

    encode_format: str = "Q4_1"
    embedding_format: str = "Q8_0"  # the token embedding / tied LM head (and an untied lm_head)
    keeps_raw: ClassVar[bool] = False  # llmc encodes the float weights (``convert``)

    def prepare(self, reader, sources: dict, path) -> EncodeScheme:
        return replace(self, formats={}, columns={}, embeddings=set())

    def quantize_module(
        self, module: nn.Module, quantize_embeddings: bool = True, isa: str | None = None, dtype: str | None = None
    ) -> set[str]:
        if not self.formats:  # a float checkpoint: every matrix whose width fits the block size
            block = FORMATS[self.encode_format].block_size

            def record(name: str, child: nn.Module):
                head = name.split(".")[-1] == "lm_head"
                if isinstance(child, nn.Linear) and child.in_features % block == 0:
                    fmt = self.embedding_format if head else self.encode_format
                    self.formats[f"{name}.weight"] = ((fmt, child.out_features),)
                    self.columns[f"{name}.weight"] = child.in_features
                elif isinstance(child, Embedding) and child.dim % block == 0:
                    self.formats[f"{name}.weight"] = ((self.embedding_format, child.num),)
                    self.columns[f"{name}.weight"] = child.dim
                return None

            rewrite_modules(module, record)
            if not self.formats:
                raise ConfigError(f"--quant {self.name}: no weight has a width divisible by {block}.")
        return super().quantize_module(module, quantize_embeddings, isa, dtype)

    def convert(self, name, array, quantized, dtype=None, int_layout=False):
        if name not in quantized:
            return super().convert(name, array, quantized, dtype, int_layout)
        ((fmt, _),) = self.formats[name]
        return self.convert_raw(name, [(fmt, ENCODERS[fmt](np.asarray(array, np.float32)))], int_layout)

    @property
    def bits_per_param(self) -> float:
        return FORMATS[self.encode_format].bits_per_weight if not self.formats else super().bits_per_param
