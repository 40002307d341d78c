"""OLMo 1 (AllenAI): the Llama block with LayerNorms that have no weight or bias (eps 1e-5, transformers'
``OlmoLayerNorm``) and, when ``clip_qkv`` is set, q/k/v clamped to [-clip_qkv, clip_qkv].
"""

from __future__ import annotations

from llmc.models.llama import LlamaVariant

VARIANT = LlamaVariant(norm="layer", norm_eps=1e-5)
FEATURES = "weightless LayerNorm, optional q/k/v clipping"
