"""Gemma 3 (``gemma3_text``, and the text part of the multimodal ``gemma3`` config) and Gemma 2.

Differences from Llama: ``(1 + w)`` RMSNorms (the offset is added to the weights at conversion, so
the module uses plain RMSNorm), norms before and after attention and MLP, QK-norm, GELU-tanh gated
MLP, embeddings scaled by sqrt(hidden), ``query_pre_attn_scalar`` for the attention scale, and
alternating sliding-window / global layers whose RoPE bases differ (local ``rope_local_base_freq``,
global ``rope_theta`` with its scaling): RoPE is applied by the module, not the KV cache.
Gemma 2: no QK-norm, one RoPE base, every other layer sliding, and tanh soft-capping of the attention
scores (``attention_softcap``: the KV cache's kernels apply it) and of the final logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache

from llmc.errors import ConfigError
from llmc.models.base import BuildSizes, CausalLMBase, GGUFSpec, ModelConfig, WeightSource, required_ints, rope_settings
from llmc.models.layers import Embedding, Norm, apply_rope, gelu_tanh_multiply, rope_inv_freq
from llmc.models.llama import check_rope

REQUIRED_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


@dataclass
class Gemma3Config(ModelConfig):
    query_pre_attn_scalar: float = 256.0
    rope_local_theta: float = 10000.0
    embed_scale: float = 1.0
    weight_prefix: str = "model."  # where the text model's tensors live in the checkpoint
    qk_norm: bool = True
    attn_logit_softcapping: float = 0.0  # Gemma 2: scores -> cap * tanh(scores / cap)
    final_logit_softcapping: float = 0.0


def _rope_parameters(hf: dict) -> tuple[dict, dict]:
    """(global, local) rope parameter dicts from the transformers 4 or 5 layout, theta included."""
    params = hf.get("rope_parameters") or {}
    if "full_attention" in params:
        return dict(params["full_attention"]), dict(params.get("sliding_attention") or {})
    global_rope = dict(params or hf.get("rope_scaling") or {})
    global_rope.setdefault("rope_theta", hf.get("rope_theta", 1_000_000.0))
    return global_rope, {"rope_type": "default", "rope_theta": hf.get("rope_local_base_freq", 10_000.0)}


def parse_config(hf: dict, source: str) -> Gemma3Config:
    prefix = "model."
    if hf.get("model_type") == "gemma3" and "text_config" in hf:
        hf = {**hf["text_config"], "tie_word_embeddings": hf.get("tie_word_embeddings", True)}
        prefix = "model.language_model."
    required_ints(hf, source, REQUIRED_FIELDS)
    if hf.get("model_type") == "gemma2":
        return _parse_gemma2(hf, source)
    unsupported = [
        k for k in ("attn_logit_softcapping", "final_logit_softcapping", "use_bidirectional_attention") if hf.get(k)
    ]
    if unsupported:
        raise ConfigError(f"{source}: Gemma 3 with {', '.join(unsupported)} is not supported yet.")
    layers = hf["num_hidden_layers"]
    global_rope, local_rope = _rope_parameters(hf)
    theta = float(global_rope.pop("rope_theta", 1_000_000.0))
    if "type" in global_rope:
        global_rope["rope_type"] = global_rope.pop("type")
    check_rope(global_rope, source)
    pattern = hf.get("sliding_window_pattern", 6)
    layer_types = hf.get("layer_types") or [
        "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)
    ]
    return Gemma3Config(
        model_type="gemma3_text",
        **_shared_fields(hf, theta, global_rope, layer_types, default_positions=32768),
        rope_local_theta=float(local_rope.get("rope_theta", hf.get("rope_local_base_freq", 10_000.0))),
        weight_prefix=prefix,
    )


def _shared_fields(hf: dict, theta: float, rope: dict, layer_types: list, default_positions: int) -> dict:
    """The ``Gemma3Config`` fields Gemma 2 and Gemma 3 read from config.json the same way."""
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    return {
        "vocab_size": hf["vocab_size"],
        "hidden_size": hf["hidden_size"],
        "intermediate_size": hf["intermediate_size"],
        "num_hidden_layers": hf["num_hidden_layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": hf.get("num_key_value_heads") or heads,
        "head_dim": head_dim,
        "rms_norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "rope_theta": theta,
        "rope_scaling": rope if rope.get("rope_type", "default") != "default" else {},
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", True)),
        "attention_bias": bool(hf.get("attention_bias", False)),
        "o_proj_bias": bool(hf.get("attention_bias", False)),
        "max_position_embeddings": int(hf.get("max_position_embeddings", default_positions)),
        "layer_types": list(layer_types),
        "sliding_window": int(hf.get("sliding_window") or 4096),
        "query_pre_attn_scalar": float(hf.get("query_pre_attn_scalar") or head_dim),
        "embed_scale": float(hf["hidden_size"]) ** 0.5,
    }


def _parse_gemma2(hf: dict, source: str) -> Gemma3Config:
    if hf.get("use_bidirectional_attention"):
        raise ConfigError(f"{source}: Gemma 2 with use_bidirectional_attention is not supported.")
    layers = hf["num_hidden_layers"]
    theta, rope = rope_settings(hf)
    check_rope(rope, source)
    layer_types = hf.get("layer_types") or [
        "sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(layers)
    ]
    return Gemma3Config(
        model_type="gemma2",
        **_shared_fields(hf, theta, rope, layer_types, default_positions=8192),
        rope_local_theta=theta,
        qk_norm=False,
        attn_logit_softcapping=float(hf.get("attn_logit_softcapping") or 0.0),
        final_logit_softcapping=float(hf.get("final_logit_softcapping") or 0.0),
    )


class Gemma3Attention(nn.Module):
    def __init__(self, c: Gemma3Config, rope: tuple):
        self.head_dim, self.q_heads, self.kv_heads = c.head_dim, c.num_attention_heads, c.num_key_value_heads
        qkv_out = (self.q_heads + 2 * self.kv_heads) * self.head_dim
        self.qkv_proj = nn.Linear(c.hidden_size, qkv_out, bias=c.attention_bias)
        self.o_proj = nn.Linear(self.q_heads * self.head_dim, c.hidden_size, bias=c.o_proj_bias)
        self.qk_norm = c.qk_norm
        if c.qk_norm:
            self.q_norm = Norm(c.head_dim, c.rms_norm_eps)
            self.k_norm = Norm(c.head_dim, c.rms_norm_eps)
        self.rope = rope
        self.sm_scale = c.query_pre_attn_scalar**-0.5

    def forward(self, x: Tensor, paged_kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        b, s, _ = x.shape
        qkv = op.reshape(self.qkv_proj(x), (b, s, self.q_heads + 2 * self.kv_heads, self.head_dim))
        if self.qk_norm:
            q, k, v = op.split(qkv, [self.q_heads, self.q_heads + self.kv_heads], axis=2)
            qkv = op.concat([self.q_norm(q), self.k_norm(k), v], dim=2)
        positions = paged_kv_cache.get_query_positions(b * s)
        qkv = apply_rope(qkv, positions, *self.rope, self.q_heads + self.kv_heads, self.head_dim)
        out = paged_kv_cache.attention_with_fused_qkv(layer_id, qkv, self.q_heads, sm_scale=self.sm_scale)
        return self.o_proj(op.reshape(out, (b, s, self.q_heads * self.head_dim)))


class Gemma3MLP(nn.Module):
    def __init__(self, c: Gemma3Config):
        self.gate_up_proj = nn.Linear(c.hidden_size, 2 * c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate_up = self.gate_up_proj(x)
        return self.down_proj(gelu_tanh_multiply(gate_up, gate_up.shape[-1] // 2))


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, c: Gemma3Config, rope: tuple):
        self.self_attn = Gemma3Attention(c, rope)
        self.mlp = Gemma3MLP(c)
        for name in NORMS:
            setattr(self, name, Norm(c.hidden_size, c.rms_norm_eps))

    def forward(self, hidden: Tensor, paged_kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        attn = self.self_attn(self.input_layernorm(hidden), paged_kv_cache, layer_id)
        hidden = hidden + self.post_attention_layernorm(attn)
        mlp = self.mlp(self.pre_feedforward_layernorm(hidden))
        return hidden + self.post_feedforward_layernorm(mlp)


NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")


class Gemma3Model(nn.Module):
    def __init__(self, c: Gemma3Config, context_window: int):
        window = max(context_window, c.max_position_embeddings)
        global_rope = rope_inv_freq(c.rope_scaling, c.rope_theta, c.head_dim, c.max_position_embeddings, window)
        local_rope = rope_inv_freq({}, c.rope_local_theta, c.head_dim, c.max_position_embeddings, window)
        self.embed_tokens = Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(
            [
                Gemma3DecoderLayer(c, local_rope if kind == "mha_sliding" else global_rope)
                for kind in c.attention_kinds()
            ]
        )
        self.norm = Norm(c.hidden_size, c.rms_norm_eps)

    def forward(self, hidden: Tensor, paged_kv_cache: PagedKVCache) -> Tensor:
        for layer_id, layer in enumerate(self.layers):
            hidden = layer(hidden, paged_kv_cache, layer_id)
        return self.norm(hidden)


class Gemma3ForCausalLM(CausalLMBase):
    rope_in_model = True

    def __init__(self, config: Gemma3Config, sizes: BuildSizes = BuildSizes()):
        self.config, self.sizes = config, sizes
        self.model = Gemma3Model(config, sizes.context_window)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.dtype = "float32"

    def attention_softcap(self) -> float:
        return self.config.attn_logit_softcapping

    def get_logits(self, hidden: Tensor) -> Tensor:
        logits = super().get_logits(hidden)
        cap = self.config.final_logit_softcapping
        return op.tanh(logits / cap) * cap if cap else logits

    def embed(self, input_ids: Tensor):
        embeds = self.model.embed_tokens(input_ids)
        return embeds * self.config.embed_scale


def _plus_one(array: np.ndarray) -> np.ndarray:
    """Gemma's RMSNorm multiplies by ``1 + w``; the module multiplies by its weight."""
    return array.astype(np.float32) + np.float32(1.0)


def weight_sources(c: Gemma3Config) -> dict[str, WeightSource]:
    """Every parameter: fused q/k/v and gate/up, norms offset by one, names under the text model's prefix."""
    d, hq, hkv, hidden, inter = (
        c.head_dim,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.hidden_size,
        c.intermediate_size,
    )
    p = c.weight_prefix
    sources = {
        "model.embed_tokens.weight": WeightSource([f"{p}embed_tokens.weight"], [(c.vocab_size, hidden)]),
        "model.norm.weight": WeightSource([f"{p}norm.weight"], [(hidden,)], _plus_one),
    }
    if not c.tie_word_embeddings:
        sources["lm_head.weight"] = WeightSource(["lm_head.weight"], [(c.vocab_size, hidden)])
    for i in range(c.num_hidden_layers):
        ours, theirs = f"model.layers.{i}", f"{p}layers.{i}"
        qkv_rows = [hq * d, hkv * d, hkv * d]
        sources[f"{ours}.self_attn.qkv_proj.weight"] = WeightSource(
            [f"{theirs}.self_attn.{x}_proj.weight" for x in "qkv"], [(r, hidden) for r in qkv_rows]
        )
        if c.attention_bias:
            sources[f"{ours}.self_attn.qkv_proj.bias"] = WeightSource(
                [f"{theirs}.self_attn.{x}_proj.bias" for x in "qkv"], [(r,) for r in qkv_rows]
            )
            sources[f"{ours}.self_attn.o_proj.bias"] = WeightSource([f"{theirs}.self_attn.o_proj.bias"], [(hidden,)])
        sources[f"{ours}.self_attn.o_proj.weight"] = WeightSource(
            [f"{theirs}.self_attn.o_proj.weight"], [(hidden, hq * d)]
        )
        for norm in ("q_norm", "k_norm") if c.qk_norm else ():
            sources[f"{ours}.self_attn.{norm}.weight"] = WeightSource(
                [f"{theirs}.self_attn.{norm}.weight"], [(d,)], _plus_one
            )
        sources[f"{ours}.mlp.gate_up_proj.weight"] = WeightSource(
            [f"{theirs}.mlp.gate_proj.weight", f"{theirs}.mlp.up_proj.weight"], [(inter, hidden)] * 2
        )
        sources[f"{ours}.mlp.down_proj.weight"] = WeightSource([f"{theirs}.mlp.down_proj.weight"], [(hidden, inter)])
        for norm in NORMS:
            sources[f"{ours}.{norm}.weight"] = WeightSource([f"{theirs}.{norm}.weight"], [(hidden,)], _plus_one)
    return sources


# ---------------------------------------------------------------------- GGUF
def _gguf_config(meta) -> dict:
    """llama.cpp's gemma3 metadata: sliding window 512 by default, every 6th layer global, local base 10000."""
    return {
        "sliding_window": int(meta("attention.sliding_window", 512)),
        "sliding_window_pattern": 6,
        "rope_local_base_freq": 10000.0,
        "query_pre_attn_scalar": meta("attention.key_length"),
        "tie_word_embeddings": True,
    }


def _minus_one(name: str, array: np.ndarray, config: dict) -> np.ndarray:
    """llama.cpp's converter stores Gemma norms as ``1 + w``; HF convention is ``w``."""
    return array - np.float32(1.0) if name.endswith("norm.weight") else array


GGUF_GEMMA3 = GGUFSpec(
    ("gemma3",),
    "gemma3_text",
    block_names={
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    },
    config=_gguf_config,
    fix_tensor=_minus_one,
)


GEMMA2_27B_LAYERS = 46  # llama.cpp tells Gemma 2 27B by its layer count


def _gemma2_gguf_config(meta) -> dict:
    """llama.cpp's gemma2 metadata: every other layer sliding (layer 0 first), soft-caps, one rope base; its
    attention scale is 1/sqrt(head_dim) (query_pre_attn_scalar is not stored; llama.cpp takes the head width, as
    Gemma 2 2B and 9B have it, and hidden / heads for the 46-layer 27B)."""
    scalar = meta("attention.key_length")
    if meta("block_count") == GEMMA2_27B_LAYERS:
        scalar = meta("embedding_length") // meta("attention.head_count")
    return {
        "model_type": "gemma2",
        "sliding_window": int(meta("attention.sliding_window", 4096)),
        "attn_logit_softcapping": float(meta("attn_logit_softcapping", 0.0) or 0.0),
        "final_logit_softcapping": float(meta("final_logit_softcapping", 0.0) or 0.0),
        "query_pre_attn_scalar": scalar,
        "tie_word_embeddings": True,
    }


GGUF_GEMMA2 = GGUFSpec(
    ("gemma2",),
    "gemma2",
    block_names={
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    },
    config=_gemma2_gguf_config,
    fix_tensor=_minus_one,
)
