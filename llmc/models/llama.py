"""The Llama family: Llama 2/3 (incl. ``llama3`` rope scaling), Qwen2 (q/k/v bias), SmolLM (tied embeddings).

q/k/v projections are fused into one ``qkv_proj`` and gate/up into ``gate_up_proj`` (one GEMV each
at decode); ``weight_sources`` says how HF tensors are concatenated to make them.
"""

from __future__ import annotations

from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache

from llmc.errors import ConfigError
from llmc.models.base import CausalLMBase, ModelConfig, WeightSource
from llmc.models.layers import Embedding, silu_multiply

SUPPORTED_ROPE_TYPES = {"default", "llama3"}
REQUIRED_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def parse_config(hf: dict, source: str) -> ModelConfig:
    """A ``ModelConfig`` from a config.json dict (transformers 4 and 5 layouts)."""
    missing = [key for key in REQUIRED_FIELDS if not isinstance(hf.get(key), int)]
    if missing:
        raise ConfigError(f"{source}: config.json lacks integer field(s) {', '.join(missing)}.")
    model_type = hf.get("model_type", "llama")
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope_theta = float(rope.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    rope_type = rope.get("rope_type", rope.get("type", "default")) or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(
            f"{source}: rope scaling type {rope_type!r} is not supported "
            f"(supported: {', '.join(sorted(SUPPORTED_ROPE_TYPES))})."
        )
    rope_scaling = {}
    if rope_type == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        rope_scaling = {"rope_type": "llama3", **{k: float(rope[k]) for k in keys}}
    heads = hf["num_attention_heads"]
    is_qwen2 = model_type == "qwen2"
    if is_qwen2 and hf.get("use_sliding_window"):
        raise ConfigError(f"{source}: Qwen2 with use_sliding_window=true is not supported yet.")
    bias = bool(hf.get("attention_bias", False))
    return ModelConfig(
        model_type=model_type,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=bias or is_qwen2,
        o_proj_bias=bias,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
    )


class LlamaMLP(nn.Module):
    def __init__(self, c: ModelConfig):
        self.gate_up_proj = nn.Linear(c.hidden_size, 2 * c.intermediate_size, bias=c.mlp_bias)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        gate_up = self.gate_up_proj(x)
        if getattr(self, "fast_silu", False):  # CPUs, float32 (set by LlamaForCausalLM)
            return self.down_proj(silu_multiply(gate_up, gate_up.shape[-1] // 2))
        gate, up = op.split(gate_up, 2, axis=-1)
        return self.down_proj(op.silu(gate) * up)


class LlamaAttention(nn.Module):
    def __init__(self, c: ModelConfig):
        self.head_dim, self.q_heads, self.kv_heads = c.head_dim, c.num_attention_heads, c.num_key_value_heads
        qkv_out = (self.q_heads + 2 * self.kv_heads) * self.head_dim
        self.qkv_proj = nn.Linear(c.hidden_size, qkv_out, bias=c.attention_bias)
        self.o_proj = nn.Linear(self.q_heads * self.head_dim, c.hidden_size, bias=c.o_proj_bias)

    def forward(self, x: Tensor, paged_kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        b, s, _ = x.shape
        qkv = op.reshape(self.qkv_proj(x), (b, s, self.q_heads + 2 * self.kv_heads, self.head_dim))
        # RoPE (HF rotate-half convention) is applied inside the cache's attention kernels
        out = paged_kv_cache.attention_with_fused_qkv(layer_id, qkv, self.q_heads, sm_scale=self.head_dim**-0.5)
        return self.o_proj(op.reshape(out, (b, s, self.q_heads * self.head_dim)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, c: ModelConfig):
        self.self_attn = LlamaAttention(c)
        self.mlp = LlamaMLP(c)
        self.input_layernorm = nn.RMSNorm(c.hidden_size, -1, c.rms_norm_eps, bias=False)
        self.post_attention_layernorm = nn.RMSNorm(c.hidden_size, -1, c.rms_norm_eps, bias=False)

    def forward(self, hidden: Tensor, paged_kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), paged_kv_cache, layer_id)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class LlamaModel(nn.Module):
    def __init__(self, c: ModelConfig):
        self.embed_tokens = Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList([LlamaDecoderLayer(c) for _ in range(c.num_hidden_layers)])
        self.norm = nn.RMSNorm(c.hidden_size, -1, c.rms_norm_eps, bias=False)

    def forward(self, hidden: Tensor, paged_kv_cache: PagedKVCache) -> Tensor:
        for layer_id, layer in enumerate(self.layers):
            hidden = layer(hidden, paged_kv_cache, layer_id)
        return self.norm(hidden)


class LlamaForCausalLM(CausalLMBase):
    def __init__(self, config: ModelConfig, target):
        self.config = config
        self.target = target  # the paged KV cache's kernels depend on the target
        self.model = LlamaModel(config)
        for layer in self.model.layers:
            layer.mlp.fast_silu = target.kind.name == "llvm"
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.dtype = "float32"


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
        sources[f"{mlp}.gate_up_proj.weight"] = WeightSource(
            [f"{mlp}.gate_proj.weight", f"{mlp}.up_proj.weight"], [(inter, hidden)] * 2
        )
        if c.mlp_bias:
            sources[f"{mlp}.gate_up_proj.bias"] = WeightSource(
                [f"{mlp}.gate_proj.bias", f"{mlp}.up_proj.bias"], [(inter,)] * 2
            )
    return sources
