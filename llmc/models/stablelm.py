"""StableLM (``stablelm``: StableLM 2, StableLM-3B-4E1T, Zephyr): LayerNorm with bias, rotary on
``partial_rotary_factor`` of each head, a SwiGLU MLP, optional q/k/v bias (``use_qkv_bias``), optional QK
LayerNorm with a weight per head (``qk_layernorm``: one LayerNorm module per head in the checkpoint) and
optional parallel attention + MLP on one norm (``use_parallel_residual``). The module is ``llmc.models.neox``'s.
"""

from __future__ import annotations

import numpy as np

from llmc.models.base import GGUFSpec, WeightSource
from llmc.models.neox import HFNames, NeoXConfig, require_silu, rope_fields, shape_fields, weight_map

FEATURES = "LayerNorm, partial rotary, SwiGLU, optional q/k/v bias, per-head QK LayerNorm, parallel residual"
NAMES = HFNames(embed="model.embed_tokens", final_norm="model.norm")


def parse_config(hf: dict, source: str) -> NeoXConfig:
    shape = shape_fields(hf, source)  # first: the sizes are checked before anything reads them
    require_silu(hf, source)
    return NeoXConfig(
        model_type="stablelm",
        **shape,
        **rope_fields(hf, source, default_partial=0.25),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=bool(hf.get("use_qkv_bias", False)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
        residual="parallel" if hf.get("use_parallel_residual") else "sequential",
        mlp="swiglu",
        qk_norm="head" if hf.get("qk_layernorm") else "",
    )


def weight_sources(c: NeoXConfig) -> dict[str, WeightSource]:
    """The shared map; a QK-norm's per-head LayerNorm weights stacked into one ``[heads, head_dim]``."""
    sources = weight_map(c, NAMES)
    if not c.qk_norm:
        return sources
    d = c.head_dim
    for i in range(c.num_hidden_layers):
        for ours, theirs, heads in (
            ("q_norm", "q_layernorm", c.num_attention_heads),
            ("k_norm", "k_layernorm", c.num_key_value_heads),
        ):
            sources[f"model.layers.{i}.self_attn.{ours}.weight"] = WeightSource(
                [f"model.layers.{i}.self_attn.{theirs}.norms.{h}.weight" for h in range(heads)],
                [(d,)] * heads,
                lambda array, heads=heads: np.ascontiguousarray(array.reshape(heads, d)),
            )
    return sources


# llama.cpp's ``stablelm``: HF StableLM's tensors, the per-head QK-norms stacked (offered per head again); like
# llama.cpp, a file without ``ffn_norm`` is a parallel block
GGUF = GGUFSpec(
    ("stablelm",),
    "stablelm",
    row_names={"attn_q_norm": "self_attn.q_layernorm.norms.{j}", "attn_k_norm": "self_attn.k_layernorm.norms.{j}"},
    config=lambda meta: {
        "layer_norm_eps": meta("attention.layer_norm_epsilon", 1e-5),
        "use_parallel_residual": not meta.has("blk.0.ffn_norm.weight"),
        "use_qkv_bias": meta.has("blk.0.attn_q.bias"),
        "qk_layernorm": meta.has("blk.0.attn_q_norm.weight"),
    },
)
