"""OLMo 2 (AllenAI): the Llama block with its norms after attention and after the MLP (post-norm) and an
RMSNorm over all heads' queries and keys (QK-norm before the head split). A family file of its own: the
Llama module already has both switches, so the family is its variant and the registry line names it.
"""

from __future__ import annotations

from llmc.models.base import GGUFSpec
from llmc.models.llama import LlamaVariant

VARIANT = LlamaVariant(qk_norm="all", post_norm=True)
FEATURES = "norms after attention/MLP, QK-norm over all heads"

# llama.cpp's olmo2: the HF rows as they are (no Q/K permutation), its own names for the two post-norms
GGUF = GGUFSpec(
    ("olmo2",),
    "olmo2",
    block_names={
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
        "post_attention_norm": "post_attention_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    },
)
