"""Ernie 4.5 (Baidu, dense): the Llama block with RoPE on interleaved pairs (2i, 2i + 1) and one ``use_bias``
for every projection. The q/k rows are reordered at conversion to the rotate-half layout, so the cache's RoPE
computes the checkpoint's (``llama.interleaved_to_half``).
"""

from __future__ import annotations

from llmc.models.base import GGUFSpec
from llmc.models.llama import LlamaVariant

VARIANT = LlamaVariant(aliases=(("use_bias", "attention_bias"), ("use_bias", "mlp_bias")), rope_interleaved=True)
FEATURES = "interleaved RoPE (q/k rows reordered), use_bias on every projection"


# llama.cpp's ``ernie4_5``: interleaved RoPE kept as in HF (no permutation); biases as the file has them
GGUF = GGUFSpec(("ernie4_5",), "ernie4_5")
