"""The Llama family: Llama 2/3 (incl. rope scaling), Qwen2 (q/k/v bias), Qwen3 (QK-norm per head,
explicit head_dim), Mistral (sliding-window attention), SmolLM (tied embeddings), Phi-3 (checkpoint
already fused, longrope, partial rotary), OLMo 2 (norms after attention/MLP, QK-norm over all heads).

q/k/v projections are fused into one ``qkv_proj`` and gate/up into ``gate_up_proj`` (one GEMV each
at decode); ``weight_sources`` says how HF tensors are concatenated to make them. RoPE is applied by
the KV cache's kernels for ``default``/``llama3`` scaling, by the module for the other types.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache

from llmc.errors import ConfigError
from llmc.models.base import (
    CausalLMBase,
    GGUFSpec,
    ModelConfig,
    WeightSource,
    required_ints,
    rope_settings,
    sliding_layer_types,
)
from llmc.models.layers import (
    IN_CACHE_ROPE_TYPES,
    Embedding,
    Norm,
    apply_rope,
    rope_inv_freq,
    rope_type,
    swiglu,
)
from llmc.models.moe import SparseMoE

SUPPORTED_ROPE_TYPES = {"default", "linear", "dynamic", "yarn", "longrope", "llama3"}
REQUIRED_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
ROPE_KEYS = {
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


@dataclass
class LlamaConfig(ModelConfig):
    qk_norm: str = ""  # "head": RMSNorm over each q/k head (Qwen3); "all": over all q / all k heads (OLMo 2)
    post_norm: bool = False  # OLMo 2: residual + norm(attn(x)), residual + norm(mlp(x)), no input norms
    # sparse mixture of experts (Mixtral, Qwen3-MoE): layers in moe_layers route each token to moe_top_k
    # of moe_experts SwiGLU experts of moe_intermediate_size; the other layers keep the dense MLP
    moe_experts: int = 0
    moe_top_k: int = 0
    moe_intermediate_size: int = 0
    moe_renormalize: bool = False
    moe_layers: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class LlamaVariant:
    """What one ``model_type`` of the Llama family changes (one line each in ``VARIANTS``, or a family file of
    its own that the registry passes to ``parse_config``, as ``olmo2.py`` does)."""

    # sliding windows: "config" (``layer_types`` or ``sliding_window`` in config.json), "opt-in" (only with
    # ``use_sliding_window``), "unsupported" (refused when ``use_sliding_window``), "" (never)
    sliding: str = ""
    qkv_bias: bool = False  # q/k/v biases whatever ``attention_bias`` says (Qwen2)
    qk_norm: str = ""  # see ``LlamaConfig.qk_norm``
    post_norm: bool = False  # see ``LlamaConfig.post_norm``
    moe: bool = False  # sparse MoE layers (``moe_fields``)


VARIANTS: dict[str, LlamaVariant] = {
    "llama": LlamaVariant(),
    "qwen2": LlamaVariant(sliding="unsupported", qkv_bias=True),
    "qwen3": LlamaVariant(sliding="opt-in", qk_norm="head"),
    "qwen3_moe": LlamaVariant(sliding="opt-in", qk_norm="head", moe=True),
    "mistral": LlamaVariant(sliding="config"),
    "mixtral": LlamaVariant(sliding="config", moe=True),
    "phi3": LlamaVariant(sliding="config"),
}


def _layer_types(hf: dict, variant: LlamaVariant, layers: int, source: str) -> list[str]:
    """HF ``layer_types`` for a variant's config.json (empty: every layer full attention)."""
    if variant.sliding == "unsupported" and hf.get("use_sliding_window"):
        raise ConfigError(f"{source}: {hf.get('model_type')} with use_sliding_window=true is not supported yet.")
    if variant.sliding == "config" or (variant.sliding == "opt-in" and hf.get("use_sliding_window")):
        return sliding_layer_types(hf, layers)
    return []


def check_rope(rope: dict, source: str) -> str:
    kind = rope_type(rope)
    if kind not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(
            f"{source}: rope scaling type {kind!r} is not supported "
            f"(supported: {', '.join(sorted(SUPPORTED_ROPE_TYPES))})."
        )
    return kind


def parse_config(hf: dict, source: str, variant: LlamaVariant | None = None) -> LlamaConfig:
    """A ``LlamaConfig`` from a config.json dict (transformers 4 and 5 layouts); ``variant``: what the
    ``model_type`` changes (default: its ``VARIANTS`` line)."""
    required_ints(hf, source, REQUIRED_FIELDS)
    model_type = hf.get("model_type", "llama")
    variant = variant or VARIANTS.get(model_type, VARIANTS["llama"])
    rope_theta, rope = rope_settings(hf)
    kind = check_rope(rope, source)
    rope_scaling = {"rope_type": kind, **{k: v for k, v in rope.items() if k != "rope_type"}}
    if kind == "default":
        rope_scaling = {}
    if kind == "llama3":
        rope_scaling = {"rope_type": "llama3", **{k: float(rope[k]) for k in ROPE_KEYS["llama3"]}}
    heads = hf["num_attention_heads"]
    layers = hf["num_hidden_layers"]
    layer_types = _layer_types(hf, variant, layers, source)
    bias = bool(hf.get("attention_bias", False))
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    partial = float(rope.pop("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) or 1.0)
    rope_scaling.pop("partial_rotary_factor", None)
    if kind == "longrope":
        rope_scaling.setdefault(
            "original_max_position_embeddings",
            hf.get("original_max_position_embeddings") or hf.get("max_position_embeddings", 2048),
        )
    return LlamaConfig(
        model_type=model_type,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=hf.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        rotary_dim=int(head_dim * partial) if partial != 1.0 else 0,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=bias or variant.qkv_bias,
        o_proj_bias=bias,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        layer_types=layer_types if any(t == "sliding_attention" for t in layer_types) else [],
        sliding_window=int(hf.get("sliding_window") or 0) if layer_types else 0,
        qk_norm=variant.qk_norm,
        post_norm=variant.post_norm,
        **(moe_fields(hf, model_type, layers, source) if variant.moe else {}),
    )


def moe_fields(hf: dict, model_type: str, layers: int, source: str) -> dict:
    """The sparse-MoE fields of a Mixtral or Qwen3-MoE config.json."""
    experts = hf.get("num_local_experts") or hf.get("num_experts")
    top_k = hf.get("num_experts_per_tok")
    if not isinstance(experts, int) or not isinstance(top_k, int) or not 0 < top_k <= experts:
        raise ConfigError(
            f"{source}: a {model_type} config needs num_local_experts (or num_experts) and num_experts_per_tok "
            f"with 0 < num_experts_per_tok <= experts; got {experts!r} and {top_k!r}."
        )
    if model_type == "mixtral":
        return dict(
            moe_experts=experts,
            moe_top_k=top_k,
            moe_intermediate_size=hf["intermediate_size"],
            moe_renormalize=True,
            moe_layers=list(range(layers)),
        )
    step = int(hf.get("decoder_sparse_step") or 1)
    dense = set(hf.get("mlp_only_layers") or [])
    return dict(
        moe_experts=experts,
        moe_top_k=top_k,
        moe_intermediate_size=int(hf.get("moe_intermediate_size") or hf["intermediate_size"]),
        moe_renormalize=bool(hf.get("norm_topk_prob", False)),
        moe_layers=[i for i in range(layers) if i not in dense and (i + 1) % step == 0],
    )


class LlamaMLP(nn.Module):
    def __init__(self, c: ModelConfig):
        self.gate_up_proj = nn.Linear(c.hidden_size, 2 * c.intermediate_size, bias=c.mlp_bias)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(swiglu(self.gate_up_proj(x)))


class LlamaAttention(nn.Module):
    def __init__(self, c: LlamaConfig):
        self.head_dim, self.q_heads, self.kv_heads = c.head_dim, c.num_attention_heads, c.num_key_value_heads
        qkv_out = (self.q_heads + 2 * self.kv_heads) * self.head_dim
        self.qkv_proj = nn.Linear(c.hidden_size, qkv_out, bias=c.attention_bias)
        self.o_proj = nn.Linear(self.q_heads * self.head_dim, c.hidden_size, bias=c.o_proj_bias)
        if c.qk_norm:
            whole = c.qk_norm == "all"
            self.q_norm = Norm(c.head_dim * (self.q_heads if whole else 1), c.rms_norm_eps)
            self.k_norm = Norm(c.head_dim * (self.kv_heads if whole else 1), c.rms_norm_eps)
        self.qk_norm = c.qk_norm
        self.rotary_dim = c.rotary_dim or c.head_dim
        self.rope = None  # (inv_freq, scale) when the module applies RoPE (set by LlamaForCausalLM)

    def forward(self, x: Tensor, paged_kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        b, s, _ = x.shape
        qkv = self.qkv_proj(x)
        if self.qk_norm == "all":
            q, k, v = op.split(
                qkv, [self.q_heads * self.head_dim, (self.q_heads + self.kv_heads) * self.head_dim], axis=2
            )
            qkv = op.concat([self.q_norm(q), self.k_norm(k), v], dim=2)
        qkv = op.reshape(qkv, (b, s, self.q_heads + 2 * self.kv_heads, self.head_dim))
        if self.qk_norm == "head":
            q, k, v = op.split(qkv, [self.q_heads, self.q_heads + self.kv_heads], axis=2)
            qkv = op.concat([self.q_norm(q), self.k_norm(k), v], dim=2)
        if self.rope is not None:
            positions = paged_kv_cache.get_query_positions(b * s)
            qkv = apply_rope(qkv, positions, *self.rope, self.q_heads + self.kv_heads, self.rotary_dim)
        # otherwise RoPE (HF rotate-half convention) is applied inside the cache's attention kernels
        out = paged_kv_cache.attention_with_fused_qkv(layer_id, qkv, self.q_heads, sm_scale=self.head_dim**-0.5)
        return self.o_proj(op.reshape(out, (b, s, self.q_heads * self.head_dim)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, c: LlamaConfig, layer_id: int):
        self.self_attn = LlamaAttention(c)
        if layer_id in c.moe_layers:
            self.mlp = SparseMoE(c.hidden_size, c.moe_experts, c.moe_intermediate_size, c.moe_top_k, c.moe_renormalize)
        else:
            self.mlp = LlamaMLP(c)
        self.post_norm = c.post_norm
        if c.post_norm:
            self.post_attention_layernorm = nn.RMSNorm(c.hidden_size, -1, c.rms_norm_eps, bias=False)
            self.post_feedforward_layernorm = nn.RMSNorm(c.hidden_size, -1, c.rms_norm_eps, bias=False)
        else:
            self.input_layernorm = nn.RMSNorm(c.hidden_size, -1, c.rms_norm_eps, bias=False)
            self.post_attention_layernorm = nn.RMSNorm(c.hidden_size, -1, c.rms_norm_eps, bias=False)

    def forward(self, hidden: Tensor, paged_kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        if self.post_norm:
            hidden = hidden + self.post_attention_layernorm(self.self_attn(hidden, paged_kv_cache, layer_id))
            return hidden + self.post_feedforward_layernorm(self.mlp(hidden))
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), paged_kv_cache, layer_id)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class LlamaModel(nn.Module):
    def __init__(self, c: LlamaConfig):
        self.embed_tokens = Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList([LlamaDecoderLayer(c, i) for i in range(c.num_hidden_layers)])
        self.norm = nn.RMSNorm(c.hidden_size, -1, c.rms_norm_eps, bias=False)

    def forward(self, hidden: Tensor, paged_kv_cache: PagedKVCache) -> Tensor:
        for layer_id, layer in enumerate(self.layers):
            hidden = layer(hidden, paged_kv_cache, layer_id)
        return self.norm(hidden)


class LlamaForCausalLM(CausalLMBase):
    def __init__(self, config: LlamaConfig):
        self.config = config
        self.model = LlamaModel(config)
        kind = rope_type(config.rope_scaling)
        if kind not in IN_CACHE_ROPE_TYPES:
            self.rope_in_model = True
            rope = rope_inv_freq(
                config.rope_scaling,
                config.rope_theta,
                config.rotary_dim or config.head_dim,
                config.max_position_embeddings,
                config.context_window,
            )
            for layer in self.model.layers:
                layer.self_attn.rope = rope
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.dtype = "float32"


def fused_weight_sources(c: ModelConfig) -> dict[str, WeightSource]:
    """Phi-3: the checkpoint's qkv_proj and gate_up_proj are already the module's fused parameters."""
    return {}


def weight_sources(c: ModelConfig) -> dict[str, WeightSource]:
    """Module parameters that are not a same-named HF tensor: fused projections."""
    d, hq, hkv, hidden, inter = (
        c.head_dim,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.hidden_size,
        c.intermediate_size,
    )
    sources = {}
    for i in range(c.num_hidden_layers):
        attn, mlp = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        qkv_rows = [hq * d, hkv * d, hkv * d]
        sources[f"{attn}.qkv_proj.weight"] = WeightSource(
            [f"{attn}.{p}_proj.weight" for p in "qkv"], [(r, hidden) for r in qkv_rows]
        )
        if c.attention_bias:
            sources[f"{attn}.qkv_proj.bias"] = WeightSource(
                [f"{attn}.{p}_proj.bias" for p in "qkv"], [(r,) for r in qkv_rows]
            )
        if i in getattr(c, "moe_layers", ()):
            sources.update(moe_weight_sources(c, i))
            continue
        sources[f"{mlp}.gate_up_proj.weight"] = WeightSource(
            [f"{mlp}.gate_proj.weight", f"{mlp}.up_proj.weight"], [(inter, hidden)] * 2
        )
        if c.mlp_bias:
            sources[f"{mlp}.gate_up_proj.bias"] = WeightSource(
                [f"{mlp}.gate_proj.bias", f"{mlp}.up_proj.bias"], [(inter,)] * 2
            )
    return sources


# HF names of one expert's (gate, up, down) matrices, and of the router, per family
EXPERT_NAMES = {
    "mixtral": ("block_sparse_moe", "w1", "w3", "w2"),
    "qwen3_moe": ("mlp", "gate_proj", "up_proj", "down_proj"),
}


def moe_weight_sources(c: LlamaConfig, layer: int) -> dict[str, WeightSource]:
    """A sparse layer's router and experts: expert e's gate and up rows stacked, then the next expert's."""
    block, gate, up, down = EXPERT_NAMES[c.model_type]
    hf, ours = f"model.layers.{layer}.{block}", f"model.layers.{layer}.mlp"
    inter, hidden, experts = c.moe_intermediate_size, c.hidden_size, range(c.moe_experts)
    return {
        f"{ours}.gate.weight": WeightSource([f"{hf}.gate.weight"], [(c.moe_experts, hidden)]),
        f"{ours}.experts.gate_up_proj.weight": WeightSource(
            [f"{hf}.experts.{e}.{name}.weight" for e in experts for name in (gate, up)],
            [(inter, hidden)] * (2 * c.moe_experts),
        ),
        f"{ours}.experts.down_proj.weight": WeightSource(
            [f"{hf}.experts.{e}.{down}.weight" for e in experts], [(hidden, inter)] * c.moe_experts
        ),
    }


# ---------------------------------------------------------------------- GGUF
def unpermute_qk(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Invert llama.cpp's ``permute``: rows (heads, 2, d/2) were stored as (heads, d/2, 2)."""
    rows = weight.shape[0]
    rest = weight.shape[1:]
    return weight.reshape(num_heads, rows // num_heads // 2, 2, *rest).swapaxes(1, 2).reshape(weight.shape)


def _unpermute_llama_qk(name: str, array: np.ndarray, config: dict) -> np.ndarray:
    """llama.cpp's converter permuted Llama's Q/K rows (HF rotate-half -> interleaved pairs)."""
    if name.endswith(("q_proj.weight", "k_proj.weight")):
        key = "num_attention_heads" if "q_proj" in name else "num_key_value_heads"
        return unpermute_qk(array, config[key])
    return array


def _sliding_window_config(meta) -> dict:
    window = meta("attention.sliding_window", 0)
    return {"sliding_window": int(window), "model_type": "mistral"} if window else {}


def _moe_config(meta, model_type: str) -> dict:
    """config.json MoE fields from GGUF ``expert_*`` metadata (empty for a dense file). llama.cpp always
    renormalises the chosen experts' weights unless ``expert_weights_norm`` says otherwise."""
    experts = int(meta("expert_count", 0) or 0)
    if not experts:
        return {}
    config = {
        "model_type": model_type,
        "num_local_experts": experts,
        "num_experts_per_tok": int(meta("expert_used_count", 0) or 0),
        "norm_topk_prob": bool(meta("expert_weights_norm", True)),
    }
    if meta("expert_feed_forward_length") is not None:
        config["moe_intermediate_size"] = int(meta("expert_feed_forward_length"))
    return config


def _llama_config(meta) -> dict:
    """A llama-architecture file: Mistral when it has a sliding window, Mixtral when it has experts."""
    return {**_sliding_window_config(meta), **_moe_config(meta, "mixtral")}


def gguf_expert_name(model_type: str, layer: int, kind: str, expert: int) -> str:
    """The HF name of expert ``expert``'s ``kind`` ("gate", "up", "down") matrix in layer ``layer``."""
    block, *names = EXPERT_NAMES[model_type]
    name = dict(zip(("gate", "up", "down"), names))[kind]
    return f"model.layers.{layer}.{block}.experts.{expert}.{name}.weight"


GGUF_LLAMA = GGUFSpec(
    ("llama",),
    "llama",
    block_names={"ffn_gate_inp": "block_sparse_moe.gate"},
    config=_llama_config,
    fix_tensor=_unpermute_llama_qk,
    expert_name=gguf_expert_name,
)
GGUF_QWEN2 = GGUFSpec(("qwen2",), "qwen2")
GGUF_PHI3 = GGUFSpec(("phi3",), "phi3", block_names={"attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"})
QK_NORM_NAMES = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
GGUF_QWEN3 = GGUFSpec(("qwen3",), "qwen3", block_names=QK_NORM_NAMES)
GGUF_QWEN3_MOE = GGUFSpec(
    ("qwen3moe",),
    "qwen3_moe",
    block_names={**QK_NORM_NAMES, "ffn_gate_inp": "mlp.gate"},
    config=lambda meta: _moe_config(meta, "qwen3_moe"),
    expert_name=gguf_expert_name,
)
