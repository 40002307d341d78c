"""The Llama family: Llama 2/3 (incl. rope scaling), Qwen2 (q/k/v bias), Qwen3 (QK-norm per head,
explicit head_dim), Mistral (sliding-window attention), SmolLM (tied embeddings), Phi-3 (checkpoint
already fused, longrope, partial rotary), OLMo 2 (norms after attention/MLP, QK-norm over all heads), and the
families whose differences are ``LlamaVariant`` switches (scale multipliers, NoPE layers, an ungated MLP,
weightless LayerNorm, q/k/v clipping, interleaved rotary pairs): their family files hold the variant.

q/k/v projections are fused into one ``qkv_proj`` and gate/up into ``gate_up_proj`` (one GEMV each
at decode); ``weight_sources`` says how HF tensors are concatenated to make them. RoPE is applied by
the KV cache's kernels for ``default``/``llama3`` scaling, by the module for the other types.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache

from llmc.errors import ConfigError
from llmc.models.attention import AttentionSpec
from llmc.models.base import (
    BuildSizes,
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
GATED_ACTIVATIONS = ("silu",)  # act(gate) * up
PLAIN_ACTIVATIONS = ("relu2", "silu")  # act(up)
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
    # scale multipliers (Granite): embeddings x embedding_multiplier, each block's output x residual_multiplier
    # before its residual add, attention scores x attention_multiplier (0: head_dim ** -0.5), logits / logits_scaling
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    attention_multiplier: float = 0.0
    logits_scaling: float = 1.0
    hidden_act: str = "silu"  # the MLP activation: "silu" (gated: SwiGLU), "relu2" (relu(x)^2, ungated)
    mlp_gated: bool = True  # False: down(act(up(x))), no gate projection (Arcee)
    norm: str = "rms"  # "rms": RMSNorm; "layer": LayerNorm without weight or bias (OLMo)
    clip_qkv: float = 0.0  # q, k and v clamped to [-clip_qkv, clip_qkv] after the projection (OLMo); 0: none
    nope_layers: list[int] = field(default_factory=list)  # layers without RoPE (SmolLM3, EXAONE 4)
    rope_interleaved: bool = False  # the checkpoint rotates pairs (2i, 2i+1) (GLM, Ernie 4.5): rows permuted
    gate_up_fused: bool = False  # the checkpoint stores mlp.gate_up_proj (gate rows, then up rows) (GLM)


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
    aliases: tuple[tuple[str, str], ...] = ()  # (config.json key, the Llama key it sets when that one is absent)
    o_bias_key: str = "attention_bias"  # the config.json key that gives o_proj a bias ("": never)
    multipliers: bool = False  # Granite's four scales (``LlamaConfig.embedding_multiplier`` ...)
    mlp_gated: bool = True  # see ``LlamaConfig.mlp_gated``
    norm: str = "rms"  # see ``LlamaConfig.norm``
    norm_eps: float = 0.0  # a fixed norm epsilon (OLMo's LayerNorm: 1e-5); 0: config.json's rms_norm_eps
    # layers without RoPE: "interval" (``no_rope_layers`` flags, else every ``no_rope_layer_interval``-th layer:
    # SmolLM3), "full" (the full-attention layers of a config with a sliding window: EXAONE 4), "" (none)
    nope: str = ""
    rope_interleaved: bool = False  # see ``LlamaConfig.rope_interleaved``
    gate_up_fused: bool = False  # see ``LlamaConfig.gate_up_fused``


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


def _nope_layers(hf: dict, variant: LlamaVariant, layers: int, source: str) -> list[int]:
    """The layers a variant's config.json runs without RoPE."""
    if variant.nope == "interval":
        flags = hf.get("no_rope_layers")
        if flags is None:
            interval = hf.get("no_rope_layer_interval", 4)
            if not isinstance(interval, int) or interval < 1:
                raise ConfigError(f"{source}: no_rope_layer_interval is {interval!r}; expected a positive integer.")
            flags = [int((i + 1) % interval != 0) for i in range(layers)]
        if not isinstance(flags, list) or len(flags) < layers:
            raise ConfigError(
                f"{source}: no_rope_layers must list a 0/1 flag for each of the {layers} layers; got {flags!r}."
            )
        return [i for i in range(layers) if not flags[i]]
    if variant.nope == "full" and hf.get("sliding_window") is not None:
        kinds = list(hf.get("layer_types") or [])
        if len(kinds) < layers:
            raise ConfigError(f"{source}: layer_types must name the attention of each of the {layers} layers.")
        return [i for i in range(layers) if kinds[i] != "sliding_attention"]
    return []


def _activation(hf: dict, gated: bool, source: str) -> str:
    act = hf.get("hidden_act") or "silu"
    supported = GATED_ACTIVATIONS if gated else PLAIN_ACTIVATIONS
    if act not in supported:
        kind = "a gated (gate/up)" if gated else "an ungated (up/down)"
        raise ConfigError(
            f"{source}: hidden_act {act!r} is not supported for {kind} MLP (supported: {', '.join(supported)})."
        )
    return act


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
    model_type = hf.get("model_type", "llama")
    variant = variant or VARIANTS.get(model_type, VARIANTS["llama"])
    hf = {**{new: hf[old] for old, new in variant.aliases if old in hf}, **hf}
    required_ints(hf, source, REQUIRED_FIELDS)
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
    config = LlamaConfig(
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
        o_proj_bias=bool(hf.get(variant.o_bias_key, False)) if variant.o_bias_key else False,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        layer_types=layer_types if any(t == "sliding_attention" for t in layer_types) else [],
        sliding_window=int(hf.get("sliding_window") or 0) if layer_types else 0,
        qk_norm=variant.qk_norm,
        post_norm=variant.post_norm,
        **(moe_fields(hf, model_type, layers, source) if variant.moe else {}),
        **(multiplier_fields(hf, source) if variant.multipliers else {}),
        hidden_act=_activation(hf, variant.mlp_gated, source),
        mlp_gated=variant.mlp_gated,
        norm=variant.norm,
        clip_qkv=float(hf.get("clip_qkv") or 0.0),
        nope_layers=_nope_layers(hf, variant, layers, source),
        rope_interleaved=variant.rope_interleaved,
        gate_up_fused=variant.gate_up_fused,
    )
    if variant.norm_eps:
        config.rms_norm_eps = variant.norm_eps
    return config


def multiplier_fields(hf: dict, source: str) -> dict:
    """Granite's scales: positive numbers, 1 when absent (as in ``GraniteConfig``: the attention scale too)."""
    fields = {}
    for key in ("embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling"):
        value = hf.get(key, 1.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{source}: {key} is {value!r}; expected a positive number.")
        fields[key] = float(value)
    return fields


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
    def __init__(self, c: LlamaConfig):
        self.gated, self.act = c.mlp_gated, c.hidden_act
        if self.gated:
            self.gate_up_proj = nn.Linear(c.hidden_size, 2 * c.intermediate_size, bias=c.mlp_bias)
        else:
            self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.gated:
            return self.down_proj(swiglu(self.gate_up_proj(x)))
        up = self.up_proj(x)
        return self.down_proj(op.square(op.relu(up)) if self.act == "relu2" else op.silu(up))


class WeightlessLayerNorm(nn.Module):
    """LayerNorm with no learned scale or offset (OLMo 1)."""

    def __init__(self, dim: int, eps: float):
        self.dim, self.eps = dim, eps

    def forward(self, x: Tensor) -> Tensor:
        return op.layer_norm(x, self.dim, eps=self.eps)


def block_norm(c: LlamaConfig) -> nn.Module:
    """A hidden-size norm of the config's kind."""
    if c.norm == "layer":
        return WeightlessLayerNorm(c.hidden_size, c.rms_norm_eps)
    return nn.RMSNorm(c.hidden_size, -1, c.rms_norm_eps, bias=False)


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
        self.clip = c.clip_qkv
        self.scale = c.attention_multiplier or self.head_dim**-0.5
        self.rotary_dim = c.rotary_dim or c.head_dim
        self.rope = None  # (inv_freq, scale) when the module applies RoPE (set by LlamaForCausalLM)

    def forward(self, x: Tensor, paged_kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        b, s, _ = x.shape
        qkv = self.qkv_proj(x)
        if self.clip:
            low, high = (Tensor.from_scalar(bound, qkv.dtype) for bound in (-self.clip, self.clip))
            qkv = op.minimum(op.maximum(qkv, low), high)
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
        # otherwise RoPE (HF rotate-half convention) is applied inside the cache's attention kernels, or the
        # layer has none (a NoPE layer of a model that rotates q/k itself)
        out = paged_kv_cache.attention_with_fused_qkv(layer_id, qkv, self.q_heads, sm_scale=self.scale)
        return self.o_proj(op.reshape(out, (b, s, self.q_heads * self.head_dim)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, c: LlamaConfig, layer_id: int):
        self.self_attn = LlamaAttention(c)
        if layer_id in c.moe_layers:
            self.mlp = SparseMoE(c.hidden_size, c.moe_experts, c.moe_intermediate_size, c.moe_top_k, c.moe_renormalize)
        else:
            self.mlp = LlamaMLP(c)
        self.post_norm = c.post_norm
        self.residual_multiplier = c.residual_multiplier
        if c.post_norm:
            self.post_attention_layernorm = block_norm(c)
            self.post_feedforward_layernorm = block_norm(c)
        else:
            self.input_layernorm = block_norm(c)
            self.post_attention_layernorm = block_norm(c)

    def _scaled(self, x: Tensor) -> Tensor:
        return x * self.residual_multiplier if self.residual_multiplier != 1.0 else x

    def forward(self, hidden: Tensor, paged_kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        if self.post_norm:
            hidden = hidden + self.post_attention_layernorm(self.self_attn(hidden, paged_kv_cache, layer_id))
            return hidden + self.post_feedforward_layernorm(self.mlp(hidden))
        hidden = hidden + self._scaled(self.self_attn(self.input_layernorm(hidden), paged_kv_cache, layer_id))
        return hidden + self._scaled(self.mlp(self.post_attention_layernorm(hidden)))


class LlamaModel(nn.Module):
    def __init__(self, c: LlamaConfig):
        self.embed_tokens = Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList([LlamaDecoderLayer(c, i) for i in range(c.num_hidden_layers)])
        self.norm = block_norm(c)

    def forward(self, hidden: Tensor, paged_kv_cache: PagedKVCache) -> Tensor:
        for layer_id, layer in enumerate(self.layers):
            hidden = layer(hidden, paged_kv_cache, layer_id)
        return self.norm(hidden)


class LlamaForCausalLM(CausalLMBase):
    def __init__(self, config: LlamaConfig, sizes: BuildSizes = BuildSizes()):
        self.config, self.sizes = config, sizes
        self.model = LlamaModel(config)
        kind = rope_type(config.rope_scaling)
        if kind not in IN_CACHE_ROPE_TYPES or config.nope_layers:
            # the module rotates q/k: a rope type the cache's kernels lack, or NoPE layers (TVM's cache applies
            # its RoPE to every layer or none)
            self.rope_in_model = True
            rope = rope_inv_freq(
                config.rope_scaling,
                config.rope_theta,
                config.rotary_dim or config.head_dim,
                config.max_position_embeddings,
                sizes.context_window,
            )
            for layer_id, layer in enumerate(self.model.layers):
                layer.self_attn.rope = None if layer_id in config.nope_layers else rope
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.dtype = "float32"

    def attention_specs(self) -> list[AttentionSpec]:
        nope = set(self.config.nope_layers)
        return [replace(s, rope="none") if i in nope else s for i, s in enumerate(super().attention_specs())]

    def embed(self, input_ids: Tensor):
        hidden = self.model.embed_tokens(input_ids)
        scale = self.config.embedding_multiplier
        return hidden * scale if scale != 1.0 else hidden

    def get_logits(self, hidden: Tensor) -> Tensor:
        logits = super().get_logits(hidden)
        scale = self.config.logits_scaling
        return logits / scale if scale != 1.0 else logits


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
        rotate_half = _rotate_half_qk(c) if getattr(c, "rope_interleaved", False) else None
        sources[f"{attn}.qkv_proj.weight"] = WeightSource(
            [f"{attn}.{p}_proj.weight" for p in "qkv"], [(r, hidden) for r in qkv_rows], rotate_half
        )
        if c.attention_bias:
            sources[f"{attn}.qkv_proj.bias"] = WeightSource(
                [f"{attn}.{p}_proj.bias" for p in "qkv"], [(r,) for r in qkv_rows], rotate_half
            )
        if i in getattr(c, "moe_layers", ()):
            sources.update(moe_weight_sources(c, i))
            continue
        if not getattr(c, "mlp_gated", True) or getattr(c, "gate_up_fused", False):
            continue  # up_proj / gate_up_proj: the checkpoint's own tensor
        sources[f"{mlp}.gate_up_proj.weight"] = WeightSource(
            [f"{mlp}.gate_proj.weight", f"{mlp}.up_proj.weight"], [(inter, hidden)] * 2
        )
        if c.mlp_bias:
            sources[f"{mlp}.gate_up_proj.bias"] = WeightSource(
                [f"{mlp}.gate_proj.bias", f"{mlp}.up_proj.bias"], [(inter,)] * 2
            )
    return sources


def interleaved_to_half(rows: np.ndarray, heads: int, head_dim: int, rotary_dim: int) -> np.ndarray:
    """Rows of ``heads`` q or k heads whose first ``rotary_dim`` dims RoPE rotates in pairs (2i, 2i + 1)
    (GLM, Ernie 4.5), reordered to rotate-half pairs (i, i + rotary_dim / 2): q . k is unchanged, and the
    rotate-half RoPE the cache applies to the new rows is the checkpoint's RoPE on the old ones."""
    rest = rows.shape[1:]
    heads_rows = rows.reshape(heads, head_dim, *rest).copy()
    pairs = heads_rows[:, :rotary_dim].reshape(heads, rotary_dim // 2, 2, *rest)
    heads_rows[:, :rotary_dim] = pairs.swapaxes(1, 2).reshape(heads, rotary_dim, *rest)
    return heads_rows.reshape(rows.shape)


def _rotate_half_qk(c: LlamaConfig):
    """The fused q/k/v transform of an interleaved-rotary checkpoint: q and k rows reordered, v kept."""
    d, hq, hkv = c.head_dim, c.num_attention_heads, c.num_key_value_heads
    rotary = c.rotary_dim or d

    def transform(qkv: np.ndarray) -> np.ndarray:
        q, k, v = np.split(qkv, [hq * d, (hq + hkv) * d])
        q, k = interleaved_to_half(q, hq, d, rotary), interleaved_to_half(k, hkv, d, rotary)
        return np.concatenate([q, k, v])

    return transform


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


def unpermute_gguf_qk(name: str, array: np.ndarray, config: dict, parts: tuple[str, ...] = ("weight", "bias")):
    """llama.cpp's converter permuted Llama's Q/K rows (HF rotate-half -> interleaved pairs): weights and
    biases (``parts``: what it permuted; its OLMo converter leaves the biases)."""
    if name.endswith(tuple(f"{qk}_proj.{part}" for qk in "qk" for part in parts)):
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
    fix_tensor=unpermute_gguf_qk,
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
