"""Granite (IBM): the Llama block with four scales: embeddings times ``embedding_multiplier``, each
attention/MLP output times ``residual_multiplier`` before its residual add, ``attention_multiplier`` as the
attention scale (instead of head_dim ** -0.5), and logits divided by ``logits_scaling``.
"""

from __future__ import annotations

from llmc.models.llama import LlamaVariant

VARIANT = LlamaVariant(multipliers=True)
FEATURES = "embedding/residual/attention multipliers, logits scaling"
