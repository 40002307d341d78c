"""Seed-OSS (ByteDance): the Llama block with q/k/v biases (``attention_bias``) and an o_proj bias of its own
(``attention_out_bias``, off in the released models).
"""

from __future__ import annotations

from llmc.models.llama import LlamaVariant

VARIANT = LlamaVariant(o_bias_key="attention_out_bias")
FEATURES = "q/k/v bias, o_proj bias by attention_out_bias"
