"""Phi-2 (``phi``; Phi-1/1.5 alike): LayerNorm with bias, partial rotary, attention and MLP in parallel on one
shared norm, biases on every projection (``dense`` output, ``fc1``/``fc2`` GELU MLP) and on the LM head; optional
QK LayerNorm (one over each head's dims, shared by the heads). The module is ``llmc.models.neox``'s.
"""

from __future__ import annotations

from llmc.errors import ConfigError
from llmc.models.base import GGUFSpec, WeightSource
from llmc.models.neox import HFNames, NeoXConfig, gelu_kind, rope_fields, shape_fields, weight_map

FEATURES = "LayerNorm, parallel attention + GELU MLP on one norm, partial rotary, biases, LM-head bias"
NAMES = HFNames(
    embed="model.embed_tokens",
    final_norm="model.final_layernorm",
    o="self_attn.dense",
    q_norm="self_attn.q_layernorm",
    k_norm="self_attn.k_layernorm",
    mlp=("mlp.fc1", "mlp.fc2"),
)


def parse_config(hf: dict, source: str) -> NeoXConfig:
    shape = shape_fields(hf, source)  # first: the sizes are checked before anything reads them
    if hf.get("tie_word_embeddings"):
        raise ConfigError(f"{source}: phi with tie_word_embeddings=true is not supported (its LM head has a bias).")
    return NeoXConfig(
        model_type="phi",
        **shape,
        **rope_fields(hf, source, default_partial=0.5),
        attention_bias=True,
        o_proj_bias=True,
        mlp_bias=True,
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        residual="parallel",
        gelu_tanh=gelu_kind(hf, source, "gelu_new"),
        qk_norm="shared" if hf.get("qk_layernorm") else "",
        lm_head_bias=True,
    )


def weight_sources(c: NeoXConfig) -> dict[str, WeightSource]:
    return weight_map(c, NAMES)


# llama.cpp's ``phi2``: HF Phi's tensors (output norm and head with biases), LayerNorm epsilon under its own key;
# its converter writes ``feed_forward_length`` as 4 x hidden (the reader takes the MLP width from ffn_down)
GGUF = GGUFSpec(
    ("phi2",),
    "phi",
    block_names={"attn_output": "self_attn.dense", "ffn_up": "mlp.fc1", "ffn_down": "mlp.fc2"},
    global_names={"output_norm": "model.final_layernorm"},
    config=lambda meta: {"layer_norm_eps": meta("attention.layer_norm_epsilon", 1e-5), "hidden_act": "gelu_new"},
)
