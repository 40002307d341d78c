"""A safetensors checkpoint whose Linear weights are stored pre-quantized (AWQ, GPTQ, fp8).

``QuantizedCheckpoint`` wraps the folder's reader and offers every quantized weight two ways, as the GGUF
reader does for its blocks:

* ``get_raw(name)``: the weight's own codes, zero points and scales, moved into llmc's planes
  (``StoredLayout``): the same numbers, re-packed along the input dimension; ``llmc.quant.stored``
  compiles them as they are (``--quant awq|gptq|fp8``, the default for such a checkpoint);
* ``get(name)``: the weight dequantized to float32 (any other ``--quant``: ``q0f32`` gives the exact float
  model, ``q4f16_1`` re-quantizes it).

Layouts read (``quantization_config``, see ``llmc.checkpoint.quant_config``):

* AWQ gemm: ``qweight`` int32 ``[in, out/8]`` (8 output columns per word in AWQ's order 0,2,4,6,1,3,5,7),
  ``qzeros`` int32 ``[in/group, out/8]`` (same packing), ``scales`` fp16 ``[in/group, out]``;
* GPTQ: ``qweight`` int32 ``[in*bits/32, out]`` (packed along the input), ``qzeros`` int32
  ``[groups, out*bits/32]`` (along the output; v1 stores zero - 1), ``scales`` ``[groups, out]``,
  ``g_idx`` int32 ``[in]`` (the group of each input column: ``k // group`` unless act-order);
* fp8: ``weight`` float8_e4m3fn ``[out, in]`` and ``weight_scale_inv`` / ``weight_scale`` float
  (per block, per output channel or per tensor; multiplied, despite the name).
"""

from __future__ import annotations

import numpy as np

from llmc.checkpoint.quant_config import StoredLayout, StoredQuant
from llmc.errors import CheckpointError

AWQ_ORDER = np.array([0, 2, 4, 6, 1, 3, 5, 7])  # nibble i of an AWQ word holds output column AWQ_ORDER[i]
AWQ_NIBBLE = np.argsort(AWQ_ORDER)  # output column j of a word sits in nibble AWQ_NIBBLE[j]
INT_PARTS = ("qweight", "qzeros", "scales", "g_idx")
FP8_NAN = 0x7F  # e4m3fn: exponent and mantissa all ones (either sign)


def unpack_words(words: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """int32 words -> uint8 codes, ``32 // bits`` per word (lowest bits first) laid out along ``axis`` (0 or 1)."""
    per = 32 // bits
    shifts = np.arange(0, 32, bits, dtype=np.uint32)
    codes = ((np.ascontiguousarray(words).view(np.uint32)[..., None] >> shifts) & np.uint32((1 << bits) - 1)).astype(
        np.uint8
    )
    rows, cols = words.shape
    if axis == 0:
        return codes.transpose(0, 2, 1).reshape(rows * per, cols)
    return codes.reshape(rows, cols * per)


def pack_rows(values: np.ndarray, bits: int) -> np.ndarray:
    """``[rows, n]`` small unsigned integers -> uint32 ``[rows, ceil(n * bits / 32)]``, value ``k`` at bits
    ``bits * (k % per)`` of word ``k // per`` (llmc's weight order; zero-padded)."""
    per = 32 // bits
    rows, n = values.shape
    padded = np.zeros((rows, -(-n // per) * per), np.uint32)
    padded[:, :n] = values
    shifts = (np.arange(per, dtype=np.uint32) * bits)[None, None, :]
    return np.bitwise_or.reduce(padded.reshape(rows, -1, per) << shifts, axis=-1).astype(np.uint32)


def fp8_to_float(raw: np.ndarray) -> np.ndarray:
    """e4m3fn bytes -> float32 (every code but NaN is exact)."""
    import ml_dtypes

    return np.asarray(raw, np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)


class QuantizedCheckpoint:
    """``reader`` (a ``SafetensorsCheckpoint``) with its quantized Linear weights under their float names."""

    def __init__(self, reader, quant: StoredQuant, source: str):
        self.reader, self.quant = reader, quant
        self.path, self.config = reader.path, reader.config
        self._all = set(reader.names())
        self._shapes = self._find_weights()
        if not self._shapes:
            raise CheckpointError(
                f"{source}: quantization_config says {quant.source_method}, but no tensor is stored that way "
                f"({'*.qweight' if quant.method != 'fp8' else 'float8_e4m3fn *.weight'}). Is this the right folder?"
            )
        self.layout = self._layout()

    # ------------------------------------------------------------------ what is stored
    def _find_weights(self) -> dict[str, tuple[int, int]]:
        """Float weight name -> (rows, cols) of every quantized weight, from the headers."""
        out = {}
        for name in self.reader.names():
            if self.quant.method == "fp8":
                array = self.reader.get(name)  # memory-mapped: no data read
                if array.dtype.name == "float8_e4m3fn":
                    if array.ndim != 2:
                        raise CheckpointError(f"{self.reader.describe(name)}: fp8 tensor {name} is not a matrix.")
                    out[name] = (int(array.shape[0]), int(array.shape[1]))
            elif name.endswith(".qweight"):
                words = self.reader.get(name)
                if words.ndim != 2 or words.dtype != np.int32:
                    raise CheckpointError(
                        f"{self.reader.describe(name)}: {name} is {words.dtype} {list(words.shape)}; "
                        "AWQ/GPTQ store a 2-D int32 qweight."
                    )
                rows, cols = words.shape
                per = 32 // self.quant.bits
                shape = (cols * per, rows) if self.quant.method == "awq" else (cols, rows * per)
                out[name.removesuffix(".qweight") + ".weight"] = shape
        return out

    def _layout(self) -> StoredLayout:
        if self.quant.method == "fp8":  # a scale per tensor is kept per row (fused q/k/v: three scales)
            block = self.quant.block if self.quant.block != (0, 0) else (1, 0)
            return StoredLayout("fp8", 8, scale_dtype="float32", block=block)
        first = next(iter(self._shapes)).removesuffix(".weight")
        scales = self.reader.get(f"{first}.scales")
        dtype = "float16" if scales.dtype == np.float16 else "float32"
        return StoredLayout("int", self.quant.bits, self.quant.group, dtype)

    def stored_weights(self) -> dict[str, tuple[int, int]]:
        """``{float weight name: (rows, cols)}`` of every weight stored quantized."""
        return dict(self._shapes)

    def act_order(self, name: str) -> bool:
        """GPTQ: whether ``name``'s ``g_idx`` departs from ``k // group`` (act-order, ``desc_act``)."""
        base = name.removesuffix(".weight")
        if self.quant.method != "gptq" or f"{base}.g_idx" not in self._all:
            return False
        rows, cols = self._shapes[name]
        return not np.array_equal(self._g_idx(base, cols), np.arange(cols) // self.layout.group_size(cols))

    # ------------------------------------------------------------------ the reader interface
    def names(self) -> list[str]:
        companions = {f"{n.removesuffix('.weight')}.{p}" for n in self._shapes for p in INT_PARTS}
        companions |= {f"{n.removesuffix('.weight')}.{p}" for n in self._shapes for p in self._fp8_parts()}
        floats = [n for n in self.reader.names() if n not in companions and n not in self._shapes]
        return floats + list(self._shapes)

    def _fp8_parts(self) -> tuple[str, ...]:
        return (self.quant.scale_name, "input_scale") if self.quant.method == "fp8" else ()

    def describe(self, name: str) -> str:
        if name in self._shapes and self.quant.method != "fp8":
            return self.reader.describe(name.removesuffix(".weight") + ".qweight")
        return self.reader.describe(name)

    def get(self, name: str) -> np.ndarray:
        """A float tensor as stored; a quantized weight dequantized to float32 ``[rows, cols]``."""
        if name not in self._shapes:
            return self.reader.get(name)
        rows, cols = self._shapes[name]
        base = name.removesuffix(".weight")
        if self.layout.kind == "fp8":
            block_rows, block_cols = self.layout.scale_block(rows, cols)
            scales = self._fp8_scales(base, rows, cols)
            scale = np.repeat(np.repeat(scales, block_rows, axis=0), block_cols, axis=1)
            return fp8_to_float(self._fp8_bytes(name)) * scale[:rows, :cols]
        _, planes = self.get_raw(name, allow_act_order=True)
        codes = unpack_words(planes["qweight"], self.quant.bits, 1)[:, :cols].astype(np.float32)
        zeros = unpack_words(planes["qzeros"], 8, 1).astype(np.float32)
        groups = (
            self._g_idx(base, cols)
            if self.quant.method == "gptq" and f"{base}.g_idx" in self._all
            else np.arange(cols) // self.layout.group_size(cols)
        )
        return (codes - zeros[:, groups]) * planes["scales"].astype(np.float32)[:, groups]

    def get_raw(self, name: str, allow_act_order: bool = False) -> tuple[str, dict[str, np.ndarray]]:
        """``(method, planes)`` of a quantized weight in llmc's layout (``StoredLayout.plane_shapes``)."""
        rows, cols = self._shapes[name]
        base = name.removesuffix(".weight")
        if self.quant.method == "fp8":
            planes = {"qweight": pack_rows(self._fp8_bytes(name), 8), "scales": self._fp8_scales(base, rows, cols)}
        else:
            if not allow_act_order and self.act_order(name):
                raise CheckpointError(f"{self.describe(name)}: {base}.g_idx is in act-order; see --quant q4f16_1.")
            planes = self._int_planes(base, rows, cols)
        return self.quant.method, planes

    # ------------------------------------------------------------------ the formats
    def _tensor(self, name: str, dtypes: tuple, shape: tuple[int, ...]) -> np.ndarray:
        array = self.reader.get(name)
        if array.dtype.name not in dtypes or tuple(array.shape) != shape:
            raise CheckpointError(
                f"{self.reader.describe(name)}: tensor {name} is {array.dtype} {list(array.shape)}; "
                f"{self.quant.source_method} needs {' or '.join(dtypes)} {list(shape)}. "
                "Do the weights match config.json?"
            )
        return array

    def _int_planes(self, base: str, rows: int, cols: int) -> dict[str, np.ndarray]:
        bits, per, method = self.quant.bits, 32 // self.quant.bits, self.quant.method
        group = self.layout.group_size(cols)
        if cols % group:
            raise CheckpointError(
                f"{self.describe(base + '.weight')}: {base} has {cols} input columns, not a multiple of "
                f"quantization_config.group_size {group}."
            )
        groups = cols // group
        if method == "awq":
            codes = self._awq_unpack(self._tensor(f"{base}.qweight", ("int32",), (cols, rows // per)))
            zeros = self._awq_unpack(self._tensor(f"{base}.qzeros", ("int32",), (groups, rows // per)))
        else:
            codes = unpack_words(self._tensor(f"{base}.qweight", ("int32",), (cols // per, rows)), bits, 0)
            zeros = unpack_words(self._tensor(f"{base}.qzeros", ("int32",), (groups, -(-rows // per))), bits, 1)
            zeros = zeros[:, :rows].astype(np.int32) + self.quant.zero_offset
            if zeros.max(initial=0) > 255:
                raise CheckpointError(f"{self.describe(base + '.weight')}: {base}.qzeros holds a zero point above 255.")
        scales = self._tensor(f"{base}.scales", ("float16", "bfloat16", "float32"), (groups, rows))
        return {
            "qweight": pack_rows(codes.T, bits),
            "qzeros": pack_rows(np.ascontiguousarray(zeros.T), 8),
            "scales": np.ascontiguousarray(scales.T.astype(self.layout.scale_dtype)),
        }

    def _awq_unpack(self, words: np.ndarray) -> np.ndarray:
        """AWQ words ``[n, out/8]`` -> codes ``[n, out]`` in column order."""
        codes = unpack_words(words, 4, 1).reshape(words.shape[0], -1, 8)
        return codes[:, :, AWQ_NIBBLE].reshape(words.shape[0], -1)

    def _g_idx(self, base: str, cols: int) -> np.ndarray:
        g_idx = self.reader.get(f"{base}.g_idx")
        if g_idx.shape != (cols,) or g_idx.dtype.kind not in "iu":
            raise CheckpointError(
                f"{self.reader.describe(base + '.g_idx')}: {base}.g_idx is {g_idx.dtype} {list(g_idx.shape)}; "
                f"expected {cols} integers."
            )
        return np.asarray(g_idx, np.int64)

    def _fp8_bytes(self, name: str) -> np.ndarray:
        raw = np.ascontiguousarray(self.reader.get(name)).view(np.uint8)
        if ((raw & 0x7F) == FP8_NAN).any():
            raise CheckpointError(f"{self.reader.describe(name)}: fp8 tensor {name} holds NaN codes.")
        return raw

    def _fp8_scales(self, base: str, rows: int, cols: int) -> np.ndarray:
        name = f"{base}.{self.quant.scale_name}"
        scale = self.reader.get(name)
        (expected, _) = self.layout.plane_shapes(rows, cols)["scales"]
        per_tensor = self.quant.block == (0, 0)
        if scale.dtype.kind != "f" or scale.size != (1 if per_tensor else expected[0] * expected[1]):
            raise CheckpointError(
                f"{self.reader.describe(name)}: tensor {name} is {scale.dtype} {list(scale.shape)}; the "
                f"{self.quant.source_method} layout of a {rows}x{cols} weight needs {expected[0] * expected[1]} float "
                f"scales ({list(expected)})."
            )
        scale = np.asarray(scale, np.float32)
        scale = np.broadcast_to(scale.reshape(-1, 1), expected) if per_tensor else scale.reshape(expected)
        return np.ascontiguousarray(scale)


def open_quantized(reader, source: str):
    """``reader`` itself for a float checkpoint; a ``QuantizedCheckpoint`` when config.json has a
    ``quantization_config`` (an unsupported one is a ``ConfigError`` naming its field)."""
    from llmc.checkpoint.quant_config import parse_quant_config

    qc = reader.config.get("quantization_config")
    if isinstance(qc, dict) and qc.get("quant_method") == "mxfp4":  # GPT-OSS's experts: decoded, or kept (--quant keep)
        from llmc.checkpoint.mxfp4 import Mxfp4Checkpoint

        return Mxfp4Checkpoint(reader, source)
    quant = parse_quant_config(reader.config, source)
    return reader if quant is None else QuantizedCheckpoint(reader, quant, source)
