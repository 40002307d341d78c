"""DeepSeek-V2 / V3 GGUF files (llama.cpp's ``deepseek2`` architecture) read as their HF checkpoints.

llama.cpp's converter keeps the HF rows (no Q/K permutation; llama.cpp rotates DeepSeek's pairs as HF does),
stacks the routed experts, and splits ``kv_b_proj`` per head into ``attn_k_b`` (W_UK transposed) and
``attn_v_b`` (W_UV): the family reads those two directly (``DeepseekConfig.kv_b_split``). What the metadata
lacks is taken as llama.cpp takes it:

* V3 or V2: sigmoid gating (``expert_gating_func`` 2) or an ``exp_probs_b`` bias is V3, otherwise V2 (whose
  GGUFs often carry no gating function);
* V2's ``topk_method``: group-limited when the file has more than one expert group, else greedy;
* yarn: ``yarn_log_multiplier`` is ``0.1 * mscale_all_dim``; ``mscale`` is taken equal to it (DeepSeek's own
  configs; llama.cpp's kernels assume it), so the rotary embedding keeps its magnitude.
"""

from __future__ import annotations

from llmc.models.base import GGUFSpec

SIGMOID_GATING = 2  # llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_SIGMOID


def _config(meta) -> dict:
    rope_dim = meta("rope.dimension_count")
    first_moe = meta("leading_dense_block_count", 0)
    v3 = meta("expert_gating_func") == SIGMOID_GATING or meta.has(f"blk.{first_moe}.exp_probs_b.bias")
    groups = meta("expert_group_count", 1)
    config = {
        "model_type": "deepseek_v3" if v3 else "deepseek_v2",
        "q_lora_rank": meta("attention.q_lora_rank"),
        "kv_lora_rank": meta("attention.kv_lora_rank"),
        "qk_rope_head_dim": rope_dim,
        "qk_nope_head_dim": meta("attention.key_length_mla", 0) - (rope_dim or 0),
        "v_head_dim": meta("attention.value_length_mla"),
        "first_k_dense_replace": first_moe,
        "n_routed_experts": meta("expert_count"),
        "num_experts_per_tok": meta("expert_used_count"),
        "moe_intermediate_size": meta("expert_feed_forward_length"),
        "n_shared_experts": meta("expert_shared_count", 0),
        "routed_scaling_factor": float(meta("expert_weights_scale", 1.0)),
        "norm_topk_prob": bool(meta("expert_weights_norm", False)),
        "n_group": groups,
        "topk_group": meta("expert_group_used_count", groups),
        "topk_method": "group_limited_greedy" if groups > 1 else "greedy",
        "kv_b_split": True,
    }
    yarn = meta.yarn()
    if yarn:
        mscale = float(meta("rope.scaling.yarn_log_multiplier", 0.0)) / 0.1
        config["rope_scaling"] = {**yarn, "mscale": mscale, "mscale_all_dim": mscale}
    return config


GGUF = GGUFSpec(
    architectures=("deepseek2",),
    model_type="deepseek_v2",
    block_names={
        "attn_q": "self_attn.q_proj",
        "attn_q_a": "self_attn.q_a_proj",
        "attn_q_a_norm": "self_attn.q_a_layernorm",
        "attn_q_b": "self_attn.q_b_proj",
        "attn_kv_a_mqa": "self_attn.kv_a_proj_with_mqa",
        "attn_kv_a_norm": "self_attn.kv_a_layernorm",
        "attn_k_b": "self_attn.k_b_proj",
        "attn_v_b": "self_attn.v_b_proj",
        "ffn_gate_inp": "mlp.gate",
        "exp_probs_b": "mlp.gate.e_score_correction_{suffix}",  # HF: e_score_correction_bias, no ".bias"
        "ffn_gate_shexp": "mlp.shared_experts.gate_proj",
        "ffn_up_shexp": "mlp.shared_experts.up_proj",
        "ffn_down_shexp": "mlp.shared_experts.down_proj",
    },
    config=_config,
    expert_name=lambda model_type, layer, kind, expert: f"model.layers.{layer}.mlp.experts.{expert}.{kind}_proj.weight",
)
