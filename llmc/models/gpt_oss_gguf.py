"""GPT-OSS GGUF files (llama.cpp's ``gpt-oss`` architecture) read as their HF checkpoints.

llama.cpp's converter splits the interleaved ``gate_up_proj`` into gate and up expert stacks (MXFP4 blocks repacked
into ggml's MXFP4 type for the released checkpoints, plain matrices otherwise), names the sinks
``attn_sinks.weight`` and the pre-MLP norm ``post_attention_norm``; the family reads that layout
(``GptOssConfig.gguf_layout``). What the metadata lacks is taken from GPT-OSS's own configs: the SwiGLU limit
(7.0, which llama.cpp also fixes), even layers sliding, and yarn without truncation (``truncate: false``).
"""

from __future__ import annotations

from llmc.models.base import GGUFSpec


def _config(meta) -> dict:
    config = {
        "sliding_window": meta("attention.sliding_window"),
        "num_local_experts": meta("expert_count"),
        "num_experts_per_tok": meta("expert_used_count"),
        "intermediate_size": meta("expert_feed_forward_length"),
        "attention_bias": True,
        "swiglu_limit": 7.0,
        "gguf_layout": True,
    }
    yarn = meta.yarn()
    if yarn:
        config["rope_scaling"] = {**yarn, "truncate": False}
    return config


GGUF = GGUFSpec(
    ("gpt-oss",),
    "gpt_oss",
    block_names={
        "attn_sinks": "self_attn.sinks",
        "post_attention_norm": "post_attention_layernorm",
        "ffn_gate_inp": "mlp.router",
        "ffn_gate_exps": "mlp.experts.gate_proj",
        "ffn_up_exps": "mlp.experts.up_proj",
        "ffn_down_exps": "mlp.experts.down_proj",
    },
    config=_config,
    # each expert's slice of the ffn_*_exps stacks under a name of its own (the biases stay stacked)
    expert_name=lambda model_type, layer, kind, expert: f"model.layers.{layer}.mlp.experts.{expert}.{kind}_proj.weight",
)
