"""SmolLM3 (Hugging Face): the Llama block with NoPE layers: a layer whose ``no_rope_layers`` flag is 0 (by
default every ``no_rope_layer_interval``-th, 4) attends without RoPE. TVM's paged KV cache rotates every
layer or none, so the module applies RoPE itself to the other layers (their ``AttentionSpec`` says so).
"""

from __future__ import annotations

from llmc.models.base import GGUFSpec
from llmc.models.llama import LlamaVariant, unpermute_gguf_qk

VARIANT = LlamaVariant(sliding="unsupported", nope="interval")
FEATURES = "NoPE layers (no_rope_layers / no_rope_layer_interval), RoPE by the module"


# llama.cpp's ``smollm3``: Llama's tensors (Q/K rows permuted); llama.cpp has every 4th layer NoPE, fixed
GGUF = GGUFSpec(
    ("smollm3",), "smollm3", config=lambda meta: {"no_rope_layer_interval": 4}, fix_tensor=unpermute_gguf_qk
)
