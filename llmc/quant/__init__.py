"""Quantization schemes by name (``llmc quants`` prints this table).

Every scheme is a ``QuantScheme`` (``llmc.quant.scheme``: the hooks the compiler calls); the float
schemes are plain instances, the others subclasses: ``GroupScheme`` (llmc's group quantization),
``KeepScheme`` (a GGUF file's own formats), ``EncodeScheme`` (llmc's encoders into GGML blocks) and
``StoredScheme`` (an AWQ / GPTQ / fp8 checkpoint's own weights).
"""

from __future__ import annotations

from llmc.errors import LlmcError
from llmc.quant.encode import EncodeScheme
from llmc.quant.group import GroupQuant
from llmc.quant.group_scheme import GroupScheme
from llmc.quant.keep import KEEP
from llmc.quant.scheme import QuantScheme
from llmc.quant.stored import StoredScheme

__all__ = ["KEEP_QUANT", "QUANTS", "QuantScheme", "get_quant"]

QUANTS: dict[str, QuantScheme] = {
    "q0f32": QuantScheme("q0f32", "float32", "no quantization, float32 weights and compute"),
    "q0f16": QuantScheme("q0f16", "float16", "no quantization, float16 weights and compute"),
    "q8f16_1": GroupScheme(
        "q8f16_1", "float16", "int8 symmetric, group 32, float16 scales and compute", GroupQuant(8, 32, "float16")
    ),
    "q4f16_1": GroupScheme(
        "q4f16_1",
        "float16",
        "int4 symmetric, group 32, 8 per uint32, float16 scales and compute",
        GroupQuant(4, 32, "float16"),
    ),
    "q4f32_1": GroupScheme(
        "q4f32_1",
        "float32",
        "int4 symmetric, group 32, 8 per uint32, float32 scales and compute",
        GroupQuant(4, 32, "float32"),
    ),
    "q3f16_1": GroupScheme(
        "q3f16_1",
        "float16",
        "int3 symmetric, group 40, 10 per uint32, float16 scales and compute",
        GroupQuant(3, 40, "float16"),
    ),
    "keep": KEEP,
    "q4f16_s": GroupScheme(
        "q4f16_s",
        "float16",
        "int4 symmetric, group 32, float16 scales chosen by error search (q4f16_1's layout and kernels)",
        GroupQuant(4, 32, "float16", search=True),
    ),
    "q3f16_s": GroupScheme(
        "q3f16_s",
        "float16",
        "int3 symmetric, group 40, float16 scales chosen by error search (q3f16_1's layout and kernels)",
        GroupQuant(3, 40, "float16", search=True),
    ),
    "q4a_s": EncodeScheme(
        "q4a_s",
        "float32",
        "int4 asymmetric (scale + minimum), group 32, searched, as GGML Q4_1 blocks; embedding Q8_0",
        encode_format="Q4_1",
    ),
    "awq": StoredScheme(
        "awq", "float16", "an AWQ checkpoint's int4 codes, zero points and fp16 scales as stored (its default)", 4.25
    ),
    "gptq": StoredScheme(
        "gptq", "float16", "a GPTQ checkpoint's int4/int8 codes, zero points and scales as stored (its default)", 4.25
    ),
    "fp8": StoredScheme(
        "fp8", "float16", "an fp8 checkpoint's e4m3 weights and float32 block/channel/tensor scales (its default)", 8.0
    ),
}
KEEP_QUANT = "keep"  # the default for GGUF files


def get_quant(name: str) -> QuantScheme:
    """The scheme registered as ``name``; an ``LlmcError`` naming the known ones otherwise."""
    if name not in QUANTS:
        raise LlmcError(f"unknown quantization {name!r}; known: {', '.join(QUANTS)} (see `llmc quants`).")
    return QUANTS[name]
