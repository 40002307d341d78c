"""InternLM 3: the Llama block (transformers runs it as Llama); its own config.json names the q/k/v/o bias
``qkv_bias`` and the MLP bias ``bias``, which the variant reads as Llama's ``attention_bias`` / ``mlp_bias``.
"""

from __future__ import annotations

from llmc.models.llama import LlamaVariant

VARIANT = LlamaVariant(aliases=(("qkv_bias", "attention_bias"), ("bias", "mlp_bias")))
FEATURES = "the Llama block (qkv_bias / bias config names)"
