"""GPT-NeoX (Pythia, ``gpt_neox``): LayerNorm with bias, rotary on ``rotary_pct`` of each head, attention and
GELU MLP in parallel on two norms (``use_parallel_residual``; sequential otherwise), and q/k/v fused per head in
the checkpoint (``query_key_value`` rows: head 0's q, k, v, then head 1's...), regrouped here into all q, all k,
all v. The module is ``llmc.models.neox``'s.
"""

from __future__ import annotations

import numpy as np

from llmc.models.base import GGUFSpec, WeightSource
from llmc.models.neox import HFNames, NeoXConfig, gelu_kind, rope_fields, shape_fields, weight_map

FEATURES = "LayerNorm, parallel residual (two norms) or sequential, partial rotary, per-head fused q/k/v"
NAMES = HFNames(
    embed="gpt_neox.embed_in",
    final_norm="gpt_neox.final_layer_norm",
    layer="gpt_neox.layers.{i}",
    lm_head="embed_out",
    o="attention.dense",
    mlp=("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
)


def parse_config(hf: dict, source: str) -> NeoXConfig:
    shape = shape_fields(hf, source)  # first: the sizes are checked before anything reads them
    rope = {"partial_rotary_factor": hf.get("rotary_pct", 0.25), **hf}  # transformers 4 names
    rope.setdefault("rope_theta", hf.get("rotary_emb_base", 10000.0))
    bias = bool(hf.get("attention_bias", True))
    return NeoXConfig(
        model_type="gpt_neox",
        **shape,
        **rope_fields(rope, source),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=bias,
        o_proj_bias=bias,
        mlp_bias=True,
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        residual="parallel_two_norms" if hf.get("use_parallel_residual", True) else "sequential",
        gelu_tanh=gelu_kind(hf, source, "gelu"),
    )


def weight_sources(c: NeoXConfig) -> dict[str, WeightSource]:
    """The shared map, with the one ``query_key_value`` tensor per layer regrouped from per-head q/k/v."""
    sources = weight_map(c, NAMES)
    heads, d, hidden = c.num_attention_heads, c.head_dim, c.hidden_size

    def regroup(array: np.ndarray) -> np.ndarray:  # rows (heads, 3, d) -> (3, heads, d)
        rest = array.shape[1:]
        return np.ascontiguousarray(array.reshape(heads, 3, d, *rest).swapaxes(0, 1).reshape(array.shape))

    for i in range(c.num_hidden_layers):
        fused = f"gpt_neox.layers.{i}.attention.query_key_value"
        ours = f"model.layers.{i}.self_attn.qkv_proj"
        sources[f"{ours}.weight"] = WeightSource([f"{fused}.weight"], [(3 * hidden, hidden)], regroup)
        if c.attention_bias:
            sources[f"{ours}.bias"] = WeightSource([f"{fused}.bias"], [(3 * hidden,)], regroup)
    return sources


def _per_head_qkv(name: str, array: np.ndarray, config: dict) -> np.ndarray:
    """llama.cpp's converter regrouped ``query_key_value`` rows (heads, 3, d) into (3, heads, d): put them back
    (row moves only, so a quantized tensor's block rows move alike)."""
    if ".attention.query_key_value." not in name:
        return array
    heads, rest = config["num_attention_heads"], array.shape[1:]
    return np.ascontiguousarray(array.reshape(3, heads, -1, *rest).swapaxes(0, 1).reshape(array.shape))


# llama.cpp's ``gptneox``: HF GPT-NeoX's tensors, q/k/v regrouped (undone by ``_per_head_qkv``)
GGUF = GGUFSpec(
    ("gptneox",),
    "gpt_neox",
    block_names={
        "attn_qkv": "attention.query_key_value",
        "attn_output": "attention.dense",
        "ffn_up": "mlp.dense_h_to_4h",
        "ffn_down": "mlp.dense_4h_to_h",
    },
    global_names={"token_embd": "gpt_neox.embed_in", "output_norm": "gpt_neox.final_layer_norm", "output": "embed_out"},
    layer_prefix="gpt_neox.layers",
    config=lambda meta: {
        "layer_norm_eps": meta("attention.layer_norm_epsilon", 1e-5),
        "use_parallel_residual": bool(meta("use_parallel_residual", True)),
        "hidden_act": "gelu",
    },
    fix_tensor=_per_head_qkv,
)
