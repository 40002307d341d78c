"""Arcee (AFM): the Llama block with an ungated MLP, ``down(relu(up(x)) ** 2)`` (``hidden_act: relu2``)."""

from __future__ import annotations

from llmc.models.base import GGUFSpec
from llmc.models.llama import LlamaVariant, unpermute_gguf_qk

VARIANT = LlamaVariant(mlp_gated=False)
FEATURES = "ungated ReLU^2 MLP"


# llama.cpp's ``arcee``: Llama's tensors (Q/K rows permuted) without ffn_gate
GGUF = GGUFSpec(("arcee",), "arcee", config=lambda meta: {"hidden_act": "relu2"}, fix_tensor=unpermute_gguf_qk)
