"""GLM-4 (THUDM, ``model_type: glm``): the Llama block with partial RoPE on interleaved pairs (q/k rows
reordered at conversion, ``llama.interleaved_to_half``), q/k/v biases without an o_proj bias, and the
checkpoint's own fused ``gate_up_proj``.
"""

from __future__ import annotations

from llmc.models.base import GGUFSpec
from llmc.models.llama import LlamaVariant

VARIANT = LlamaVariant(o_bias_key="", rope_interleaved=True, gate_up_fused=True)
FEATURES = "partial interleaved RoPE (q/k rows reordered), q/k/v bias, fused gate_up"


# llama.cpp's ``chatglm`` (its converter's arch for HF GlmForCausalLM): interleaved RoPE kept as in HF, the
# fused gate_up as ``ffn_up``, q/k/v biases; the rotary fraction is ``rope.dimension_count``
GGUF = GGUFSpec(
    ("chatglm",),
    "glm",
    block_names={"ffn_up": "mlp.gate_up_proj"},
    config=lambda meta: {"attention_bias": meta.has("blk.0.attn_q.bias")},
)
