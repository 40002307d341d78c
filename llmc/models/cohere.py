"""Cohere (``cohere``: Command-R, Aya 23): LayerNorm without bias, attention and SwiGLU MLP in parallel on one
shared norm, interleaved rotary (pairs ``(2i, 2i+1)``), optional QK LayerNorm with a weight per head
(``use_qk_norm``), logits scaled by ``logit_scale``, tied embeddings. The module is ``llmc.models.neox``'s: the
interleaved pairs become rotate-half's by reordering each head's q/k rows (and QK-norm weights) at conversion,
so the KV cache's own RoPE kernels serve.
"""

from __future__ import annotations

import numpy as np

from llmc.errors import ConfigError
from llmc.models.base import GGUFSpec, WeightSource
from llmc.models.llama import unpermute_qk
from llmc.models.neox import HFNames, NeoXConfig, deinterleave_rows, require_silu, rope_fields, shape_fields, weight_map

FEATURES = "LayerNorm without bias, parallel attention + SwiGLU on one norm, interleaved rotary, QK-norm, logit scale"
NAMES = HFNames(embed="model.embed_tokens", final_norm="model.norm")


def parse_config(hf: dict, source: str) -> NeoXConfig:
    shape = shape_fields(hf, source)  # first: the sizes are checked before anything reads them
    require_silu(hf, source)
    rope = rope_fields(hf, source)
    if rope["rotary_dim"]:
        raise ConfigError(f"{source}: cohere with a partial_rotary_factor is not supported.")
    bias = bool(hf.get("attention_bias", False))
    scale = hf.get("logit_scale")
    return NeoXConfig(
        model_type="cohere",
        **shape,
        **rope,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        attention_bias=bias,
        o_proj_bias=bias,
        max_position_embeddings=int(hf.get("max_position_embeddings", 8192)),
        residual="parallel",
        norm_bias=False,
        mlp="swiglu",
        qk_norm="head" if hf.get("use_qk_norm") else "",
        logit_scale=float(0.0625 if scale is None else scale),
    )


def weight_sources(c: NeoXConfig) -> dict[str, WeightSource]:
    """The shared map; q/k rows (and QK-norm weights) of each head reordered from interleaved to rotate-half."""
    sources = weight_map(c, NAMES)
    for i in range(c.num_hidden_layers):
        attn = f"model.layers.{i}.self_attn"
        for part in ("weight", "bias") if c.attention_bias else ("weight",):
            sources[f"{attn}.qkv_proj.{part}"].transform = deinterleave_rows(c)
        for norm, heads in (("q_norm", c.num_attention_heads), ("k_norm", c.num_key_value_heads)) if c.qk_norm else ():
            sources[f"{attn}.{norm}.weight"].transform = lambda array, heads=heads: np.ascontiguousarray(
                unpermute_qk(array.reshape(-1), heads).reshape(array.shape)
            )
    return sources


# llama.cpp's ``command-r``: HF Cohere's tensors, interleaved RoPE kept (no permutation), the logit scale
GGUF = GGUFSpec(
    ("command-r",),
    "cohere",
    block_names={"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"},
    config=lambda meta: {
        "layer_norm_eps": meta("attention.layer_norm_epsilon", 1e-5),
        "logit_scale": meta("logit_scale", 0.0625),
        "use_qk_norm": meta.has("blk.0.attn_q_norm.weight"),
    },
)
