"""Seed-OSS (ByteDance): the Llama block with q/k/v biases (``attention_bias``) and an o_proj bias of its own
(``attention_out_bias``, off in the released models).
"""

from __future__ import annotations

from llmc.models.base import GGUFSpec
from llmc.models.llama import LlamaVariant

VARIANT = LlamaVariant(o_bias_key="attention_out_bias")
FEATURES = "q/k/v bias, o_proj bias by attention_out_bias"


# llama.cpp's ``seed_oss``: rotate-half RoPE as in HF (no permutation), its own name for the MLP's norm; q/k/v and
# o_proj biases each as present
GGUF = GGUFSpec(
    ("seed_oss",),
    "seed_oss",
    block_names={"post_attention_norm": "post_attention_layernorm"},
    config=lambda meta: {
        "attention_bias": meta.has("blk.0.attn_q.bias"),
        "attention_out_bias": meta.has("blk.0.attn_output.bias"),
    },
)
