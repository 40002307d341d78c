"""OLMo 1 (AllenAI): the Llama block with LayerNorms that have no weight or bias (eps 1e-5, transformers'
``OlmoLayerNorm``) and, when ``clip_qkv`` is set, q/k/v clamped to [-clip_qkv, clip_qkv].
"""

from __future__ import annotations

from llmc.models.base import GGUFSpec
from llmc.models.llama import LlamaVariant, unpermute_gguf_qk

VARIANT = LlamaVariant(norm="layer", norm_eps=1e-5)
FEATURES = "weightless LayerNorm, optional q/k/v clipping"


# llama.cpp's ``olmo``: Q/K weight rows permuted (its converter leaves q/k biases), no norm tensors
GGUF = GGUFSpec(
    ("olmo",),
    "olmo",
    config=lambda meta: {"clip_qkv": meta("attention.clamp_kqv")},
    fix_tensor=lambda name, array, config: unpermute_gguf_qk(name, array, config, ("weight",)),
)
