"""DeepSeek-V2 and DeepSeek-V3 (``deepseek_v2``, ``deepseek_v3``): multi-head latent attention (MLA), dense first
layers, then mixture-of-experts layers with shared experts.

**MLA.** Each token's keys and values come from one latent: ``kv_a_proj_with_mqa(x)`` gives ``c_kv``
(``kv_lora_rank`` wide, RMS-normed) and ``k_pe`` (``qk_rope_head_dim``, rotated, shared by every head); head
``h``'s key is ``[W_UK[h] c_kv, k_pe]`` and its value ``W_UV[h] c_kv`` (``kv_b_proj`` stacks ``W_UK`` and
``W_UV``). Queries come from ``q_proj`` or the low-rank ``q_a_proj -> q_a_layernorm -> q_b_proj``.

The module absorbs ``W_UK`` into the query and ``W_UV`` after attention, so the paged KV cache stores only the
latent, one KV head per token: ``q . k = (W_UK[h]^T q_nope) . c_kv + q_pe . k_pe``, and
``sum_j p_j W_UV[h] c_j = W_UV[h] (sum_j p_j c_j)``. Attention is then MQA with ``num_attention_heads`` query
heads over one head of width ``qk_rope_head_dim + kv_lora_rank`` laid out ``[pe, c_kv]``; the value is the same
vector (its ``pe`` part of the output is dropped). ``ModelConfig.num_key_value_heads`` / ``head_dim`` describe
that cache (1 and the latent width); the MLA sizes have fields of their own.

**RoPE** is applied by the module (rotate-half on the ``pe`` part, yarn and the other HF types through
``rope_inv_freq``). DeepSeek-V2 rotates interleaved pairs (complex multiplication), DeepSeek-V3 too when
``rope_interleave`` (its default): the rope rows of q and k are reordered at conversion, which leaves
``q_pe . k_pe`` unchanged. Yarn's ``mscale_all_dim`` scales the softmax (transformers' ``yarn_apply_mscale``).

**Routing.** V2: softmax scores, top-k (``greedy``) or top-k within the ``topk_group`` best of ``n_group`` expert
groups by their best score (``group_limited_greedy``); the chosen scores times ``routed_scaling_factor``
(transformers 5 does not renormalise V2's weights). V3: sigmoid scores, choice by score +
``e_score_correction_bias`` within the ``topk_group`` groups with the largest top-2 sums, weights = the chosen
plain scores, renormalised when ``norm_topk_prob``, times ``routed_scaling_factor``. Layers from
``first_k_dense_replace`` on are MoE layers; their shared experts form one SwiGLU MLP added to the routed output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache

from llmc.errors import ConfigError
from llmc.models.base import (
    BuildSizes,
    CausalLMBase,
    ModelConfig,
    WeightSource,
    positive_int,
    required_ints,
    rope_settings,
)
from llmc.models.layers import (
    DecoderStack,
    apply_rope,
    pre_norm_residual,
    rope_type,
    set_module_rope,
    swiglu,
)
from llmc.models.llama import check_rope
from llmc.models.moe import Router, SparseMoE

REQUIRED_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
    "kv_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
)
LATENT_NORM_EPS = 1e-6  # transformers builds q_a_layernorm / kv_a_layernorm with the RMSNorm default, not rms_norm_eps
TOPK_METHODS = ("greedy", "group_limited_greedy")  # DeepSeek-V2's; V3 always groups (``noaux_tc``)
FEATURES = {
    "deepseek_v2": "multi-head latent attention (latent KV cache, absorbed W_UK/W_UV), optional q LoRA, "
    "interleaved rope incl. yarn mscale, MoE with shared experts (softmax, greedy or group-limited top-k)",
    "deepseek_v3": "multi-head latent attention (latent KV cache, absorbed W_UK/W_UV), q LoRA, rope_interleave, "
    "yarn mscale, MoE with shared experts (sigmoid + e_score_correction_bias, group-limited top-k, norm_topk_prob, "
    "routed_scaling_factor)",
}


@dataclass
class DeepseekConfig(ModelConfig):
    """``num_key_value_heads`` (1) and ``head_dim`` (``qk_rope_head_dim + kv_lora_rank``) describe the latent KV
    cache; ``rotary_dim`` is ``qk_rope_head_dim``."""

    q_lora_rank: int = 0  # 0: q_proj; otherwise q_a_proj -> q_a_layernorm -> q_b_proj
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    softmax_scale: float = 0.0  # (qk_nope + qk_rope) ** -0.5, times yarn's mscale(mscale_all_dim) ** 2
    rope_interleaved: bool = True  # the checkpoint rotates pairs (2i, 2i + 1): rope rows reordered at conversion
    # MoE (layers ``moe_layers``: those from first_k_dense_replace on)
    moe_experts: int = 0
    moe_top_k: int = 0
    moe_intermediate_size: int = 0
    moe_layers: list[int] = field(default_factory=list)
    shared_experts: int = 0
    scoring: str = "softmax"  # "softmax" (V2) or "sigmoid" (V3, with e_score_correction_bias)
    n_group: int = 1  # expert groups; the choice is limited to the topk_group best ones
    topk_group: int = 1
    group_score: str = "max"  # a group's score: its best expert's ("max", V2) or its best two's sum ("top2", V3)
    moe_renormalize: bool = False  # the chosen weights divided by their sum (V3's norm_topk_prob)
    routed_scaling_factor: float = 1.0
    # weight layout, not architecture: GGUF files hold kv_b_proj as llama.cpp split it (attn_k_b: W_UK^T per
    # head, attn_v_b: W_UV per head), offered by the reader as self_attn.k_b_proj / v_b_proj
    kv_b_split: bool = False


def _yarn_softmax_mscale(rope: dict) -> float:
    """transformers' ``yarn_apply_mscale``: the softmax scale's factor, ``mscale(factor, mscale_all_dim) ** 2``."""
    if rope_type(rope) == "default" or not rope.get("mscale_all_dim"):
        return 1.0
    factor = float(rope["factor"])
    mscale = 1.0 if factor <= 1 else 0.1 * float(rope["mscale_all_dim"]) * math.log(factor) + 1.0
    return float(mscale * mscale)


def _moe_fields(hf: dict, model_type: str, layers: int, source: str) -> dict:
    experts = positive_int(hf, "n_routed_experts", source)
    top_k = positive_int(hf, "num_experts_per_tok", source)
    groups = int(hf.get("n_group") or 1)
    topk_group = int(hf.get("topk_group") or groups)
    first_dense = int(hf.get("first_k_dense_replace") or 0)
    if model_type == "deepseek_v2":
        method = hf.get("topk_method") or "greedy"
        if method not in TOPK_METHODS:
            raise ConfigError(
                f"{source}: topk_method {method!r} is not supported for deepseek_v2 "
                f"(supported: {', '.join(TOPK_METHODS)})."
            )
        if method == "greedy":
            groups = topk_group = 1
        scoring, group_score, renormalize = "softmax", "max", False
    else:
        scoring, group_score, renormalize = "sigmoid", "top2", bool(hf.get("norm_topk_prob", True))
    if groups < 1 or experts % groups or not 1 <= topk_group <= groups:
        raise ConfigError(
            f"{source}: n_group {groups} must divide n_routed_experts {experts}, with 1 <= topk_group "
            f"({topk_group}) <= n_group."
        )
    if top_k > topk_group * (experts // groups):
        raise ConfigError(
            f"{source}: num_experts_per_tok {top_k} is more than the {topk_group} chosen groups of "
            f"{experts // groups} experts hold."
        )
    if group_score == "top2" and groups > 1 and experts // groups < 2:
        raise ConfigError(f"{source}: deepseek_v3 scores a group by its best two experts; groups of 1 cannot.")
    return dict(
        moe_experts=experts,
        moe_top_k=top_k,
        moe_intermediate_size=positive_int(hf, "moe_intermediate_size", source),
        moe_layers=[i for i in range(layers) if i >= first_dense],
        shared_experts=int(hf.get("n_shared_experts") or 0),
        scoring=scoring,
        n_group=groups,
        topk_group=topk_group,
        group_score=group_score,
        moe_renormalize=renormalize,
        routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
    )


def parse_config(hf: dict, source: str) -> DeepseekConfig:
    """A ``DeepseekConfig`` from a DeepSeek-V2 or -V3 config.json (transformers 4 and 5 layouts)."""
    model_type = hf.get("model_type", "deepseek_v2")
    required_ints(hf, source, REQUIRED_FIELDS)
    if (hf.get("hidden_act") or "silu") != "silu":
        raise ConfigError(f"{source}: hidden_act {hf.get('hidden_act')!r} is not supported (supported: silu).")
    rope_theta, rope = rope_settings(hf)
    kind = check_rope(rope, source)
    rope_scaling = (
        {} if kind == "default" else {"rope_type": kind, **{k: v for k, v in rope.items() if k != "rope_type"}}
    )
    layers, heads = hf["num_hidden_layers"], hf["num_attention_heads"]
    lora, nope, rope_dim = hf["kv_lora_rank"], hf["qk_nope_head_dim"], hf["qk_rope_head_dim"]
    if rope_dim % 2:
        raise ConfigError(f"{source}: qk_rope_head_dim {rope_dim} is odd; rotary embeddings need an even width.")
    q_lora = hf.get("q_lora_rank")
    if q_lora is not None:
        q_lora = positive_int(hf, "q_lora_rank", source)
    interleaved = model_type == "deepseek_v2" or bool(hf.get("rope_interleave", True))
    return DeepseekConfig(
        model_type=model_type,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=1,  # the latent cache: one head per token
        head_dim=rope_dim + lora,
        rotary_dim=rope_dim,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)) if model_type == "deepseek_v2" else False,
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        q_lora_rank=q_lora or 0,
        kv_lora_rank=lora,
        qk_nope_head_dim=nope,
        qk_rope_head_dim=rope_dim,
        v_head_dim=hf["v_head_dim"],
        softmax_scale=float((nope + rope_dim) ** -0.5 * _yarn_softmax_mscale(rope_scaling)),
        rope_interleaved=interleaved,
        kv_b_split=bool(hf.get("kv_b_split", False)),
        **_moe_fields(hf, model_type, layers, source),
    )


# ---------------------------------------------------------------------- attention
def per_head_matmul(x: Tensor, weight: Tensor) -> Tensor:
    """``y[b, s, h] = x[b, s, h] @ weight[h]``: ``x`` ``[b, s, heads, i]``, ``weight`` ``[heads, i, o]``.

    One TE reduction rather than a batched ``matmul`` over permuted heads: TVM 0.27's Adreno (android) schedule of
    that batched matmul fails to vectorize its symbolic-length loop; this form builds for llvm, cuda and android."""

    def compute(xt: te.Tensor, w: te.Tensor):
        b, s, heads, width = xt.shape
        k = te.reduce_axis((0, width), name="k")
        return te.compute(
            (b, s, heads, w.shape[2]),
            lambda i, j, h, o: te.sum(xt[i, j, h, k] * w[h, k, o], axis=k),
            name="per_head_matmul",
        )

    return op.tensor_expr_op(compute, name_hint="per_head_matmul", args=[x, weight])


class MLAttention(nn.Module):
    """Multi-head latent attention over a cache of latents (``[k_pe, c_kv]``, one KV head), W_UK and W_UV absorbed."""

    def __init__(self, c: DeepseekConfig):
        self.heads, self.nope, self.rope_dim = c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim
        self.lora, self.v_dim = c.kv_lora_rank, c.v_head_dim
        q_width = self.heads * (self.nope + self.rope_dim)
        self.q_lora = c.q_lora_rank
        if self.q_lora:
            self.q_a_proj = nn.Linear(c.hidden_size, self.q_lora, bias=c.attention_bias)
            self.q_a_layernorm = nn.RMSNorm(self.q_lora, -1, LATENT_NORM_EPS, bias=False)
            self.q_b_proj = nn.Linear(self.q_lora, q_width, bias=False)
        else:
            self.q_proj = nn.Linear(c.hidden_size, q_width, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(c.hidden_size, self.lora + self.rope_dim, bias=c.attention_bias)
        self.kv_a_layernorm = nn.RMSNorm(self.lora, -1, LATENT_NORM_EPS, bias=False)
        # kv_b_proj split per head (weight_sources): W_UK [heads, nope, lora] and W_UV transposed [heads, lora, v]
        self.w_uk = nn.Parameter((self.heads, self.nope, self.lora))
        self.w_uv = nn.Parameter((self.heads, self.lora, self.v_dim))
        self.o_proj = nn.Linear(self.heads * self.v_dim, c.hidden_size, bias=c.attention_bias)
        self.scale = c.softmax_scale
        self.rope = None  # (inv_freq, cos/sin scale): set by DeepseekForCausalLM

    def forward(self, x: Tensor, paged_kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        b, s, _ = x.shape
        heads, width = self.heads, self.rope_dim + self.lora
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if self.q_lora else self.q_proj(x)
        q_nope, q_pe = op.split(op.reshape(q, (b, s, heads, self.nope + self.rope_dim)), [self.nope], axis=3)
        q_latent = per_head_matmul(q_nope, self.w_uk)  # [b, s, heads, lora]: W_UK absorbed
        c_kv, k_pe = op.split(self.kv_a_proj_with_mqa(x), [self.lora], axis=2)
        latent = op.reshape(op.concat([k_pe, self.kv_a_layernorm(c_kv)], dim=2), (b, s, 1, width))
        # heads: the queries, the latent as key, the latent as value (its pe part is dropped after attention)
        qkv = op.concat([op.concat([q_pe, q_latent], dim=3), latent, latent], dim=2)
        positions = paged_kv_cache.get_query_positions(b * s)
        qkv = apply_rope(qkv, positions, *self.rope, heads + 1, self.rope_dim)
        out = paged_kv_cache.attention_with_fused_qkv(layer_id, qkv, heads, sm_scale=self.scale)  # [b, s, heads, width]
        _, out_latent = op.split(out, [self.rope_dim], axis=3)
        values = per_head_matmul(out_latent, self.w_uv)  # [b, s, heads, v]: W_UV absorbed
        return self.o_proj(op.reshape(values, (b, s, heads * self.v_dim)))


# ---------------------------------------------------------------------- MLP and MoE
class DeepseekMLP(nn.Module):
    """SwiGLU with fused gate/up rows (the dense layers' MLP and the shared experts)."""

    def __init__(self, hidden: int, inter: int, bias: bool):
        self.gate_up_proj = nn.Linear(hidden, 2 * inter, bias=bias)
        self.down_proj = nn.Linear(inter, hidden, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(swiglu(self.gate_up_proj(x)))


class DeepseekRouter(Router):
    """The float gate, plus V3's ``e_score_correction_bias`` (added to the scores for the choice only)."""

    def __init__(self, hidden: int, experts: int, correction_bias: bool):
        super().__init__(hidden, experts)
        self.e_score_correction_bias = nn.Parameter((experts,)) if correction_bias else None


NEG_FLOOR = -3.0e38  # a score below every real one: an expert already chosen
NEG_MASKED = -1.0e30  # an expert outside the chosen groups (above NEG_FLOOR: chosen only if nothing else is left)


def _argmax_rounds(value, n, count: int, rounds: int, name: str) -> list[te.Tensor]:
    """``rounds`` rounds of (max, first index of it) over ``value(t, i)`` for ``i < count``, each round skipping
    the indices chosen before: ``[n]`` float32 tensors of indices, largest first, the lower index on ties.

    The index reductions run in float32 (exact below 2 ** 24): an int32 argmin over TE's int64 loop variable is a
    cast min that TVM's GPU cross-thread reduction cannot match to a reducer (a CUDA build fails)."""
    chosen: list[te.Tensor] = []
    for rank in range(rounds):
        chosen.append(_argmax_round(value, n, count, tuple(chosen), f"{name}{rank}"))
    return chosen


def _argmax_round(value, n, count: int, before: tuple[te.Tensor, ...], name: str) -> te.Tensor:
    def masked(t, i):
        taken = tirx.const(False, "bool")
        for index in before:
            taken = tirx.Or(taken, index[t] == i.astype("float32"))
        return tirx.if_then_else(taken, tirx.const(NEG_FLOOR, "float32"), value(t, i))

    r = te.reduce_axis((0, count), name="r")
    best = te.compute((n,), lambda t: te.max(masked(t, r.var), axis=r), name=f"{name}_value")
    r2 = te.reduce_axis((0, count), name="r")
    return te.compute(
        (n,),
        lambda t: te.min(
            tirx.if_then_else(masked(t, r2.var) == best[t], r2.var.astype("float32"), tirx.const(count, "float32")),
            axis=r2,
        ),
        name=f"{name}_index",
    )


class DeepseekMoE(SparseMoE):
    """Routed experts (``SparseMoE``'s kernels) with DeepSeek's routing, plus the shared experts."""

    def __init__(self, c: DeepseekConfig):
        super().__init__(c.hidden_size, c.moe_experts, c.moe_intermediate_size, c.moe_top_k, c.moe_renormalize)
        self.gate = DeepseekRouter(c.hidden_size, c.moe_experts, correction_bias=c.scoring == "sigmoid")
        self.shared_experts = (
            DeepseekMLP(c.hidden_size, c.moe_intermediate_size * c.shared_experts, c.mlp_bias)
            if c.shared_experts
            else None
        )
        self.scoring, self.group_score, self.scaling = c.scoring, c.group_score, c.routed_scaling_factor
        self.n_group, self.topk_group = c.n_group, c.topk_group

    def _choose(self, scores: Tensor, bias: Tensor | None) -> Tensor:
        """The chosen experts ``[n, top_k]`` (int32): by score (+ bias), within the ``topk_group`` best groups."""
        experts, groups, top_k = self.num_experts, self.n_group, self.top_k
        size = experts // groups
        limited = groups > 1 and self.topk_group < groups

        def compute(p: te.Tensor, *rest: te.Tensor):
            n = p.shape[0]

            def choice(t, e):
                return p[t, e] + rest[0][e].astype("float32") if rest else p[t, e]

            if limited:
                if self.group_score == "max":  # V2: a group's best score
                    r = te.reduce_axis((0, size), name="g")
                    group = te.compute(
                        (n, groups), lambda t, g: te.max(choice(t, g * size + r.var), axis=r), name="group"
                    )
                else:  # V3: the sum of a group's two best scores (for choice)
                    r = te.reduce_axis((0, size), name="g")
                    first = te.compute((n, groups), lambda t, g: te.max(choice(t, g * size + r.var), axis=r), name="g1")
                    r1 = te.reduce_axis((0, size), name="g")
                    at = te.compute(
                        (n, groups),
                        lambda t, g: te.min(
                            tirx.if_then_else(
                                choice(t, g * size + r1.var) == first[t, g],
                                r1.var.astype("float32"),
                                tirx.const(size, "float32"),
                            ),
                            axis=r1,
                        ),
                        name="g1_index",
                    )
                    r2 = te.reduce_axis((0, size), name="g")
                    second = te.compute(
                        (n, groups),
                        lambda t, g: te.max(
                            tirx.if_then_else(
                                r2.var.astype("float32") == at[t, g],
                                tirx.const(NEG_FLOOR, "float32"),
                                choice(t, g * size + r2.var),
                            ),
                            axis=r2,
                        ),
                        name="g2",
                    )
                    group = te.compute((n, groups), lambda t, g: first[t, g] + second[t, g], name="group")
                kept = _argmax_rounds(lambda t, g: group[t, g], n, groups, self.topk_group, "group_top")

                def value(t, e):
                    inside = tirx.const(False, "bool")
                    for g in kept:
                        inside = tirx.Or(inside, g[t] == (e // size).astype("float32"))
                    return tirx.if_then_else(inside, choice(t, e), tirx.const(NEG_MASKED, "float32"))
            else:
                value = choice
            chosen = _argmax_rounds(value, n, experts, top_k, "expert_top")

            def pick(t, j):
                index = chosen[-1][t]
                for rank in reversed(range(top_k - 1)):
                    index = tirx.if_then_else(j == rank, chosen[rank][t], index)
                return index.astype("int32")

            return te.compute((n, top_k), pick, name="topk_index")

        args = [scores] + ([bias] if bias is not None else [])
        return op.tensor_expr_op(compute, name_hint="deepseek_topk", args=args)

    def _weights(self, scores: Tensor, expert_ids: Tensor) -> Tensor:
        """The chosen experts' plain scores, renormalised (V3's ``norm_topk_prob``), times the routed scaling."""
        renormalize, scaling = self.renormalize, self.scaling

        def compute(p: te.Tensor, ids: te.Tensor):
            n, top_k = ids.shape
            picked = te.compute((n, top_k), lambda t, j: p[t, ids[t, j]], name="routing_pick")
            if renormalize:
                total = te.compute(
                    (n,), lambda t: sum(picked[t, j] for j in range(int(top_k))) + tirx.const(1e-20, "float32"),
                    name="routing_sum",
                )  # fmt: skip
                return te.compute(
                    (n, top_k), lambda t, j: picked[t, j] / total[t] * tirx.const(scaling, "float32"), name="weights"
                )
            return te.compute((n, top_k), lambda t, j: picked[t, j] * tirx.const(scaling, "float32"), name="weights")

        return op.tensor_expr_op(compute, name_hint="deepseek_routing_weights", args=[scores, expert_ids])

    def route(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.gate(flat)
        scores = op.sigmoid(logits) if self.scoring == "sigmoid" else op.softmax(logits, axis=-1)
        expert_ids = self._choose(scores, self.gate.e_score_correction_bias)
        return expert_ids, self._weights(scores, expert_ids)

    def forward(self, x: Tensor) -> Tensor:
        routed = super().forward(x)
        return routed + self.shared_experts(x) if self.shared_experts is not None else routed


# ---------------------------------------------------------------------- the model
class DeepseekDecoderLayer(nn.Module):
    def __init__(self, c: DeepseekConfig, layer_id: int):
        self.self_attn = MLAttention(c)
        if layer_id in c.moe_layers:
            self.mlp = DeepseekMoE(c)
        else:
            self.mlp = DeepseekMLP(c.hidden_size, c.intermediate_size, c.mlp_bias)
        self.input_layernorm = nn.RMSNorm(c.hidden_size, -1, c.rms_norm_eps, bias=False)
        self.post_attention_layernorm = nn.RMSNorm(c.hidden_size, -1, c.rms_norm_eps, bias=False)

    def forward(self, hidden: Tensor, paged_kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        return pre_norm_residual(self, hidden, paged_kv_cache, layer_id, self.mlp)


class DeepseekForCausalLM(CausalLMBase):
    rope_in_model = True  # RoPE on the pe part only; the cache sees an un-rotated-by-it latent head

    def __init__(self, config: DeepseekConfig, sizes: BuildSizes = BuildSizes()):
        self.config, self.sizes = config, sizes
        self.model = DecoderStack(config, DeepseekDecoderLayer)
        set_module_rope(self.model, config, sizes, config.qk_rope_head_dim)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.dtype = "float32"


# ---------------------------------------------------------------------- weights
def _half_order(rows: int) -> np.ndarray:
    """Interleaved pairs (2i, 2i + 1) -> rotate-half pairs (i, i + rows / 2): the evens, then the odds."""
    return np.concatenate([np.arange(0, rows, 2), np.arange(1, rows, 2)])


def _q_rows(c: DeepseekConfig):
    """q_proj / q_b_proj rows: each head's rope rows reordered for rotate-half."""
    width = c.qk_nope_head_dim + c.qk_rope_head_dim

    def transform(weight: np.ndarray) -> np.ndarray:
        heads = weight.reshape(c.num_attention_heads, width, *weight.shape[1:]).copy()
        heads[:, c.qk_nope_head_dim :] = heads[:, c.qk_nope_head_dim :][:, _half_order(c.qk_rope_head_dim)]
        return heads.reshape(weight.shape)

    return transform


def _kv_a_rows(c: DeepseekConfig):
    """kv_a_proj_with_mqa rows (weight or bias): the k_pe rows reordered for rotate-half."""

    def transform(array: np.ndarray) -> np.ndarray:
        out = array.copy()
        out[c.kv_lora_rank :] = array[c.kv_lora_rank :][_half_order(c.qk_rope_head_dim)]
        return out

    return transform


def _kv_b_split(c: DeepseekConfig, part: str):
    """kv_b_proj ``[heads * (nope + v), lora]`` -> W_UK ``[heads, nope, lora]`` or W_UV^T ``[heads, lora, v]``."""

    def transform(weight: np.ndarray) -> np.ndarray:
        heads = weight.reshape(c.num_attention_heads, c.qk_nope_head_dim + c.v_head_dim, c.kv_lora_rank)
        if part == "uk":
            return np.ascontiguousarray(heads[:, : c.qk_nope_head_dim])
        return np.ascontiguousarray(heads[:, c.qk_nope_head_dim :].transpose(0, 2, 1))

    return transform


def _per_head_transpose(weight: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(weight.transpose(0, 2, 1))


def weight_sources(c: DeepseekConfig) -> dict[str, WeightSource]:
    """Module parameters that are not a same-named HF tensor: reordered rope rows, kv_b_proj's two halves, fused
    gate/up projections, stacked experts."""
    hidden, heads = c.hidden_size, c.num_attention_heads
    q_rows = heads * (c.qk_nope_head_dim + c.qk_rope_head_dim)
    kv_b = [(heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank)]
    sources = {}
    for i in range(c.num_hidden_layers):
        attn, mlp = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        if c.rope_interleaved:
            q_name = f"{attn}.q_b_proj.weight" if c.q_lora_rank else f"{attn}.q_proj.weight"
            sources[q_name] = WeightSource([q_name], [(q_rows, c.q_lora_rank or hidden)], _q_rows(c))
            kv_a = f"{attn}.kv_a_proj_with_mqa"
            width = c.kv_lora_rank + c.qk_rope_head_dim
            sources[f"{kv_a}.weight"] = WeightSource([f"{kv_a}.weight"], [(width, hidden)], _kv_a_rows(c))
            if c.attention_bias:
                sources[f"{kv_a}.bias"] = WeightSource([f"{kv_a}.bias"], [(width,)], _kv_a_rows(c))
        if c.kv_b_split:  # [heads, lora, nope] -> W_UK [heads, nope, lora]; [heads, v, lora] -> W_UV^T [heads, lora, v]
            uk, uv = [(heads, c.kv_lora_rank, c.qk_nope_head_dim)], [(heads, c.v_head_dim, c.kv_lora_rank)]
            sources[f"{attn}.w_uk"] = WeightSource([f"{attn}.k_b_proj.weight"], uk, _per_head_transpose)
            sources[f"{attn}.w_uv"] = WeightSource([f"{attn}.v_b_proj.weight"], uv, _per_head_transpose)
        else:
            sources[f"{attn}.w_uk"] = WeightSource([f"{attn}.kv_b_proj.weight"], kv_b, _kv_b_split(c, "uk"))
            sources[f"{attn}.w_uv"] = WeightSource([f"{attn}.kv_b_proj.weight"], kv_b, _kv_b_split(c, "uv"))
        if i in c.moe_layers:
            sources.update(_moe_sources(c, mlp))
            if c.shared_experts:
                sources.update(_gate_up(f"{mlp}.shared_experts", hidden, c.moe_intermediate_size * c.shared_experts, c))
        else:
            sources.update(_gate_up(mlp, hidden, c.intermediate_size, c))
    return sources


def _gate_up(prefix: str, hidden: int, inter: int, c: DeepseekConfig) -> dict[str, WeightSource]:
    sources = {
        f"{prefix}.gate_up_proj.weight": WeightSource(
            [f"{prefix}.gate_proj.weight", f"{prefix}.up_proj.weight"], [(inter, hidden)] * 2
        )
    }
    if c.mlp_bias:
        sources[f"{prefix}.gate_up_proj.bias"] = WeightSource(
            [f"{prefix}.gate_proj.bias", f"{prefix}.up_proj.bias"], [(inter,)] * 2
        )
    return sources


def _moe_sources(c: DeepseekConfig, mlp: str) -> dict[str, WeightSource]:
    """The routed experts stacked (expert e's gate and up rows, then the next expert's), as ``SparseMoE`` keeps them."""
    inter, hidden, experts = c.moe_intermediate_size, c.hidden_size, range(c.moe_experts)
    return {
        f"{mlp}.experts.gate_up_proj.weight": WeightSource(
            [f"{mlp}.experts.{e}.{name}.weight" for e in experts for name in ("gate_proj", "up_proj")],
            [(inter, hidden)] * (2 * c.moe_experts),
        ),
        f"{mlp}.experts.down_proj.weight": WeightSource(
            [f"{mlp}.experts.{e}.down_proj.weight" for e in experts], [(hidden, inter)] * c.moe_experts
        ),
    }
