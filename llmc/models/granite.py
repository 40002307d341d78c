"""Granite (IBM): the Llama block with four scales: embeddings times ``embedding_multiplier``, each
attention/MLP output times ``residual_multiplier`` before its residual add, ``attention_multiplier`` as the
attention scale (instead of head_dim ** -0.5), and logits divided by ``logits_scaling``.
"""

from __future__ import annotations

from llmc.models.base import GGUFSpec
from llmc.models.llama import LlamaVariant, unpermute_gguf_qk

VARIANT = LlamaVariant(multipliers=True)
FEATURES = "embedding/residual/attention multipliers, logits scaling"


# llama.cpp's ``granite``: Llama's tensors (Q/K rows permuted) and the four scales under its own names
GGUF = GGUFSpec(
    ("granite",),
    "granite",
    config=lambda meta: {
        "embedding_multiplier": meta("embedding_scale") or 1.0,
        "residual_multiplier": meta("residual_scale") or 1.0,
        # absent: llama.cpp scales scores by head_dim ** -0.5
        "attention_multiplier": meta("attention.scale")
        or meta("attention.key_length", meta("embedding_length") // meta("attention.head_count")) ** -0.5,
        "logits_scaling": meta("logit_scale") or 1.0,
    },
    fix_tensor=unpermute_gguf_qk,
)
