"""MXFP4 checkpoints (``quantization_config.quant_method: mxfp4``, GPT-OSS's released experts): decoded at load, or
kept as stored (``--quant keep``).

Each packed tensor ``NAME`` is stored as ``NAME_blocks`` (uint8 ``[..., rows, groups, 16]``: 32 e2m1 codes per
group, the low nibble first) and ``NAME_scales`` (uint8 ``[..., rows, groups]``: e8m0 exponents, bias 127). The
reader offers ``NAME`` as the dense tensor transformers' own decoder makes (``convert_moe_packed_tensors``:
code value times ``2 ** (scale - 127)``, then the last two axes swapped, so an expert stack reads ``[E, in, out]``),
exactly: every e2m1 value times a power of two is a float32 (and a bfloat16). Those weights go through a float or
group ``--quant`` scheme like any float checkpoint.

``--quant keep`` keeps the 4-bit blocks instead (``tensor_types`` / ``get_raw``, the interface of the GGUF reader):
each packed tensor is offered as ggml's ``MXFP4`` type, its rows as stored (``[... * rows, groups * 32]``,
output-major, before transformers' swap), every group of 32 moved losslessly into a 17-byte ggml block: the same
exponent byte (ggml's ``kvalues * 2 ** (e - 128)`` is e2m1 times ``2 ** (e - 127)``), the same 4-bit codes, only
their nibbles reordered (ggml's byte ``j`` holds weights ``j`` and ``j + 16``, the checkpoint's ``2j`` and
``2j + 1``; code 8, e2m1's -0, decodes to +0 there). The other tensors are offered as ``F32``: they stay float
parameters in the compute dtype.
"""

from __future__ import annotations

import numpy as np

from llmc.errors import CheckpointError, ConfigError

E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)
E8M0_BIAS = 127
BLOCKS, SCALES = "_blocks", "_scales"


def repack_ggml(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``[..., rows, groups, 16]`` codes and ``[..., rows, groups]`` exponents -> ggml MXFP4 rows, uint8
    ``[prod(...) * rows, groups * 17]`` (per block: the exponent byte, then weight ``j`` in the low nibble of byte
    ``j`` and weight ``j + 16`` in its high nibble)."""
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], 32)  # weight order
    out = np.empty((*blocks.shape[:-1], 17), np.uint8)
    out[..., 0] = scales
    out[..., 1:] = codes[..., :16] | (codes[..., 16:] << 4)
    rows = int(np.prod(blocks.shape[:-2], dtype=np.int64))
    return out.reshape(rows, -1)


def decode_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``[..., rows, groups, 16]`` codes and ``[..., rows, groups]`` exponents -> ``[..., groups * 32, rows]``."""
    codes = np.stack([E2M1[blocks & 0x0F], E2M1[blocks >> 4]], axis=-1).reshape(*blocks.shape[:-1], 32)
    values = np.ldexp(codes, scales.astype(np.int32)[..., None] - E8M0_BIAS)
    return np.ascontiguousarray(np.swapaxes(values.reshape(*blocks.shape[:-2], -1), -1, -2))


class Mxfp4Checkpoint:
    """A safetensors reader whose ``NAME_blocks`` / ``NAME_scales`` pairs read as the decoded ``NAME`` (``get``) or as
    ggml MXFP4 rows (``get_raw``, for ``--quant keep``)."""

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

    def tensor_types(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """``{name: (ggml type, stored shape)}`` for ``--quant keep``: packed tensors as ``MXFP4`` rows
        ``(prod(...) * rows, groups * 32)``, every other tensor ``F32`` (kept float) in its own shape."""
        types = {}  # shapes from the readers' memory-mapped views (nothing is decoded)
        for name in self._names:
            if name in self._packed:
                *lead, groups, _ = self.reader.get(name + BLOCKS).shape
                types[name] = ("MXFP4", (int(np.prod(lead, dtype=np.int64)), int(groups) * 32))
            else:
                types[name] = ("F32", tuple(int(d) for d in self.reader.get(name).shape))
        return types

    def get_raw(self, name: str) -> tuple[str, np.ndarray]:
        """A packed tensor's blocks as ggml MXFP4 rows (``repack_ggml``, lossless): ``("MXFP4", uint8 rows)``."""
        if name not in self._packed:
            raise CheckpointError(f"{self.describe(name)}: {name} is not MXFP4-packed; it has no blocks to keep.")
        return "MXFP4", repack_ggml(*self._pair(name))

    def get(self, name: str) -> np.ndarray:
        if name not in self._packed:
            return self.reader.get(name)
        return decode_mxfp4(*self._pair(name))

    def _pair(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``NAME_blocks`` and ``NAME_scales``, checked."""
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
        return np.asarray(blocks), np.asarray(scales)
