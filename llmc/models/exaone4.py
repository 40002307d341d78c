"""EXAONE 4 (LG AI): OLMo 2's block (norms after attention and MLP) with QK-norm per head and sliding-window
layers; with a sliding window, its full-attention layers have no RoPE (NoPE), so the module applies RoPE to
the sliding layers itself.
"""

from __future__ import annotations

from llmc.models.base import GGUFSpec
from llmc.models.llama import LlamaVariant

VARIANT = LlamaVariant(sliding="config", qk_norm="head", post_norm=True, nope="full")
FEATURES = "norms after attention/MLP, QK-norm per head, sliding layers with RoPE, NoPE global layers"


def _gguf_config(meta) -> dict:
    """A sliding window and llama.cpp's per-layer pattern (true: sliding) as config.json's ``layer_types``."""
    window, pattern = meta("attention.sliding_window"), meta("attention.sliding_window_pattern")
    if not window:
        return {}
    layers = int(meta("block_count"))
    if not isinstance(pattern, list):  # llama.cpp's default: every 4th layer global
        pattern = [(i + 1) % int(pattern or 4) != 0 for i in range(layers)]
    return {
        "sliding_window": int(window),
        "layer_types": ["sliding_attention" if sliding else "full_attention" for sliding in pattern[:layers]],
    }


# llama.cpp's ``exaone4``: rotate-half RoPE as in HF (no permutation), OLMo 2-style post-norms
GGUF = GGUFSpec(
    ("exaone4",),
    "exaone4",
    block_names={
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
        "post_attention_norm": "post_attention_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    },
    config=_gguf_config,
)
