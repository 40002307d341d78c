"""GPT-2: LayerNorm with bias, learned absolute positions, fused q/k/v with biases, GELU (tanh) MLP,
tied LM head. Its checkpoint stores every projection as a ``Conv1D`` ([in, out], ``y = x W + b``):
the weight map transposes them into the module's ``nn.Linear`` ([out, in]) layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache

from llmc.errors import ConfigError
from llmc.models.base import BuildSizes, CausalLMBase, GGUFSpec, ModelConfig, WeightSource, required_ints
from llmc.models.layers import Embedding, Norm, gather_rows

ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": None}


@dataclass
class GPT2Config(ModelConfig):
    activation: str = "gelu_new"
    conv1d: bool = True  # projections stored [in, out] (HF's Conv1D); False: [out, in] (llama.cpp's GGUF files)


def parse_config(hf: dict, source: str) -> GPT2Config:
    required_ints(hf, source, ("n_embd", "n_layer", "n_head", "vocab_size"))
    hidden, heads = hf["n_embd"], hf["n_head"]
    activation = hf.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"{source}: GPT-2 activation {activation!r} is not supported ({', '.join(ACTIVATIONS)}).")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise ConfigError(
            f"{source}: GPT-2 with scale_attn_by_inverse_layer_idx/reorder_and_upcast_attn is not supported."
        )
    return GPT2Config(
        model_type="gpt2",
        vocab_size=hf["vocab_size"],
        hidden_size=hidden,
        intermediate_size=hf.get("n_inner") or 4 * hidden,
        num_hidden_layers=hf["n_layer"],
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden // heads,
        rms_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        rope_theta=10000.0,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        attention_bias=True,
        o_proj_bias=True,
        mlp_bias=True,
        max_position_embeddings=int(hf.get("n_positions", 1024)),
        activation=activation,
        conv1d=bool(hf.get("conv1d_weights", True)),
    )


class GPT2Attention(nn.Module):
    def __init__(self, c: GPT2Config):
        self.heads, self.head_dim = c.num_attention_heads, c.head_dim
        self.qkv_proj = nn.Linear(c.hidden_size, 3 * c.hidden_size, bias=True)
        self.o_proj = nn.Linear(c.hidden_size, c.hidden_size, bias=True)

    def forward(self, x: Tensor, paged_kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        b, s, _ = x.shape
        qkv = op.reshape(self.qkv_proj(x), (b, s, 3 * self.heads, self.head_dim))
        out = paged_kv_cache.attention_with_fused_qkv(layer_id, qkv, self.heads, sm_scale=self.head_dim**-0.5)
        return self.o_proj(op.reshape(out, (b, s, self.heads * self.head_dim)))


class GPT2MLP(nn.Module):
    def __init__(self, c: GPT2Config):
        self.fc = nn.Linear(c.hidden_size, c.intermediate_size, bias=True)
        self.proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=True)
        self.approximate = ACTIVATIONS[c.activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(op.gelu(self.fc(x), approximate=self.approximate))


class GPT2Block(nn.Module):
    def __init__(self, c: GPT2Config):
        self.ln_1 = Norm(c.hidden_size, c.rms_norm_eps, "layer", bias=True)
        self.self_attn = GPT2Attention(c)
        self.ln_2 = Norm(c.hidden_size, c.rms_norm_eps, "layer", bias=True)
        self.mlp = GPT2MLP(c)

    def forward(self, hidden: Tensor, paged_kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        hidden = hidden + self.self_attn(self.ln_1(hidden), paged_kv_cache, layer_id)
        return hidden + self.mlp(self.ln_2(hidden))


class PositionTable(nn.Module):
    """Learned absolute position embeddings (kept in float: not a token embedding the scheme quantizes)."""

    def __init__(self, positions: int, dim: int):
        self.weight = nn.Parameter((positions, dim))


class GPT2Model(nn.Module):
    def __init__(self, c: GPT2Config):
        self.embed_tokens = Embedding(c.vocab_size, c.hidden_size)
        self.wpe = PositionTable(c.max_position_embeddings, c.hidden_size)
        self.layers = nn.ModuleList([GPT2Block(c) for _ in range(c.num_hidden_layers)])
        self.norm = Norm(c.hidden_size, c.rms_norm_eps, "layer", bias=True)

    def forward(self, hidden: Tensor, paged_kv_cache: PagedKVCache) -> Tensor:
        b, s, d = hidden.shape
        positions = paged_kv_cache.get_query_positions(b * s)  # learned absolute positions, per sequence
        hidden = hidden + op.reshape(gather_rows(self.wpe.weight, positions, name="position_embed"), (b, s, d))
        for layer_id, layer in enumerate(self.layers):
            hidden = layer(hidden, paged_kv_cache, layer_id)
        return self.norm(hidden)


class GPT2LMHeadModel(CausalLMBase):
    rope_in_model = True  # no RoPE at all: the KV cache must not apply one

    def rope_owner(self) -> str:
        return "none"

    def __init__(self, config: GPT2Config, sizes: BuildSizes = BuildSizes()):
        self.config, self.sizes = config, sizes
        self.model = GPT2Model(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.dtype = "float32"


def _transpose(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.T)


def weight_sources(c: GPT2Config) -> dict[str, WeightSource]:
    """HF ``transformer.*`` names; Conv1D weights transposed to [out, in]."""
    h, inner = c.hidden_size, c.intermediate_size
    sources = {
        "model.embed_tokens.weight": WeightSource(["transformer.wte.weight"], [(c.vocab_size, h)]),
        "model.wpe.weight": WeightSource(["transformer.wpe.weight"], [(c.max_position_embeddings, h)]),
        "model.norm.weight": WeightSource(["transformer.ln_f.weight"], [(h,)]),
        "model.norm.bias": WeightSource(["transformer.ln_f.bias"], [(h,)]),
    }
    if not c.tie_word_embeddings:
        sources["lm_head.weight"] = WeightSource(["lm_head.weight"], [(c.vocab_size, h)])
    for i in range(c.num_hidden_layers):
        ours, theirs = f"model.layers.{i}", f"transformer.h.{i}"
        for norm in ("ln_1", "ln_2"):
            for part in ("weight", "bias"):
                sources[f"{ours}.{norm}.{part}"] = WeightSource([f"{theirs}.{norm}.{part}"], [(h,)])
        for module, hf_module, rows, cols in (
            ("self_attn.qkv_proj", "attn.c_attn", 3 * h, h),
            ("self_attn.o_proj", "attn.c_proj", h, h),
            ("mlp.fc", "mlp.c_fc", inner, h),
            ("mlp.proj", "mlp.c_proj", h, inner),
        ):
            if c.conv1d:
                sources[f"{ours}.{module}.weight"] = WeightSource(
                    [f"{theirs}.{hf_module}.weight"], [(cols, rows)], _transpose
                )
            else:
                sources[f"{ours}.{module}.weight"] = WeightSource([f"{theirs}.{hf_module}.weight"], [(rows, cols)])
            sources[f"{ours}.{module}.bias"] = WeightSource([f"{theirs}.{hf_module}.bias"], [(rows,)])
    return sources


# ---------------------------------------------------------------------- GGUF
# llama.cpp's ``gpt2``: HF GPT-2's tensors with the Conv1D weights transposed to [out, in] by its converter
# (kept so: ``conv1d_weights`` false), learned positions as ``position_embd``
GGUF = GGUFSpec(
    ("gpt2",),
    "gpt2",
    block_names={
        "attn_norm": "ln_1",
        "ffn_norm": "ln_2",
        "attn_qkv": "attn.c_attn",
        "attn_output": "attn.c_proj",
        "ffn_up": "mlp.c_fc",
        "ffn_down": "mlp.c_proj",
    },
    global_names={
        "token_embd": "transformer.wte",
        "position_embd": "transformer.wpe",
        "output_norm": "transformer.ln_f",
    },
    layer_prefix="transformer.h",
    config=lambda meta: {
        "n_embd": meta("embedding_length"),
        "n_layer": meta("block_count"),
        "n_head": meta("attention.head_count"),
        "n_inner": meta.columns("blk.0.ffn_down.weight"),
        "n_positions": meta("context_length"),
        "layer_norm_epsilon": meta("attention.layer_norm_epsilon", 1e-5),
        "activation_function": "gelu_new",
        "conv1d_weights": False,
    },
)
