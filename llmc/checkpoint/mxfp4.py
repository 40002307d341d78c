"""MXFP4 checkpoints (``quantization_config.quant_method: mxfp4``, GPT-OSS's released experts) decoded at load.

Each packed tensor ``NAME`` is stored as ``NAME_blocks`` (uint8 ``[..., rows, groups, 16]``: 32 e2m1 codes per
group, the low nibble first) and ``NAME_scales`` (uint8 ``[..., rows, groups]``: e8m0 exponents, bias 127). The
reader offers ``NAME`` as the dense tensor transformers' own decoder makes (``convert_moe_packed_tensors``:
code value times ``2 ** (scale - 127)``, then the last two axes swapped, so an expert stack reads ``[E, in, out]``),
exactly: every e2m1 value times a power of two is a float32 (and a bfloat16). The decoded weights then go
through the ``--quant`` scheme like any float checkpoint; the 4-bit blocks are not kept as stored.
"""

from __future__ import annotations

import numpy as np

from llmc.errors import CheckpointError, ConfigError

E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)
E8M0_BIAS = 127
BLOCKS, SCALES = "_blocks", "_scales"


def decode_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``[..., rows, groups, 16]`` codes and ``[..., rows, groups]`` exponents -> ``[..., groups * 32, rows]``."""
    codes = np.stack([E2M1[blocks & 0x0F], E2M1[blocks >> 4]], axis=-1).reshape(*blocks.shape[:-1], 32)
    values = np.ldexp(codes, scales.astype(np.int32)[..., None] - E8M0_BIAS)
    return np.ascontiguousarray(np.swapaxes(values.reshape(*blocks.shape[:-2], -1), -1, -2))


class Mxfp4Checkpoint:
    """A safetensors reader whose ``NAME_blocks`` / ``NAME_scales`` pairs read as the decoded ``NAME``."""

    def __init__(self, reader, source: str):
        self.reader, self.path, self.config = reader, reader.path, reader.config
        stored = set(reader.names())
        self._packed = {
            name[: -len(BLOCKS)] for name in stored if name.endswith(BLOCKS) and name[: -len(BLOCKS)] + SCALES in stored
        }
        if not self._packed:
            raise ConfigError(
                f"{source}: quantization_config.quant_method is mxfp4 but no tensor has *_blocks / *_scales "
                "companions; the checkpoint is incomplete."
            )
        self._names = sorted((stored - {p + s for p in self._packed for s in (BLOCKS, SCALES)}) | self._packed)

    def names(self) -> list[str]:
        return self._names

    def describe(self, name: str) -> str:
        return self.reader.describe(name + BLOCKS if name in self._packed else name)

    def get(self, name: str) -> np.ndarray:
        if name not in self._packed:
            return self.reader.get(name)
        blocks, scales = self.reader.get(name + BLOCKS), self.reader.get(name + SCALES)
        if (
            blocks.dtype != np.uint8
            or scales.dtype != np.uint8
            or blocks.ndim < 3
            or blocks.shape[-1] != 16
            or blocks.shape[:-1] != scales.shape
        ):
            raise CheckpointError(
                f"{self.describe(name)}: {name}_blocks {blocks.dtype} {list(blocks.shape)} and _scales "
                f"{scales.dtype} {list(scales.shape)} are not an MXFP4 pair (uint8 [..., groups, 16] and "
                "[..., groups])."
            )
        return decode_mxfp4(np.asarray(blocks), np.asarray(scales))
