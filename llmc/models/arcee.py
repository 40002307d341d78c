"""Arcee (AFM): the Llama block with an ungated MLP, ``down(relu(up(x)) ** 2)`` (``hidden_act: relu2``)."""

from __future__ import annotations

from llmc.models.llama import LlamaVariant

VARIANT = LlamaVariant(mlp_gated=False)
FEATURES = "ungated ReLU^2 MLP"
