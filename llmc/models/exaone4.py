"""EXAONE 4 (LG AI): OLMo 2's block (norms after attention and MLP) with QK-norm per head and sliding-window
layers; with a sliding window, its full-attention layers have no RoPE (NoPE), so the module applies RoPE to
the sliding layers itself.
"""

from __future__ import annotations

from llmc.models.llama import LlamaVariant

VARIANT = LlamaVariant(sliding="config", qk_norm="head", post_norm=True, nope="full")
FEATURES = "norms after attention/MLP, QK-norm per head, sliding layers with RoPE, NoPE global layers"
