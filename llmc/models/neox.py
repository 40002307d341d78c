"""GPT-NeoX-shaped decoders: LayerNorm (with or without bias), RoPE on all or the first ``rotary_dim`` of each
head, and a parallel or sequential residual. One module serves Phi-2, GPT-NeoX (Pythia), StableLM,
StarCoder2 and Cohere (Command-R); each family's file reads its config.json into a ``NeoXConfig`` and maps its
checkpoint's tensor names (``weight_sources``).

A block is one of (``NeoXConfig.residual``):
- ``sequential``: ``h = x + attn(norm1(x)); h + mlp(norm2(h))`` (StarCoder2, StableLM, GPT-NeoX without
  ``use_parallel_residual``);
- ``parallel``: ``x + attn(norm(x)) + mlp(norm(x))``, one norm (Phi-2, Cohere, StableLM's parallel option);
- ``parallel_two_norms``: ``x + attn(norm1(x)) + mlp(norm2(x))`` (GPT-NeoX).

q/k/v are one fused ``qkv_proj`` (all q heads, then k, then v). RoPE (rotate-half) is applied by the KV cache's
kernels for ``default``/``llama3`` scaling, by the module for the other types; Cohere's interleaved rotary is
turned into rotate-half by permuting its q/k rows at conversion (``deinterleave_rows``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache

from llmc.errors import ConfigError
from llmc.models.base import BuildSizes, CausalLMBase, ModelConfig, WeightSource, required_ints, rope_settings
from llmc.models.gpt2 import ACTIVATIONS
from llmc.models.layers import IN_CACHE_ROPE_TYPES, Embedding, Norm, apply_rope, rope_inv_freq, rope_type, swiglu
from llmc.models.llama import ROPE_KEYS, check_rope, unpermute_qk

RESIDUALS = ("sequential", "parallel", "parallel_two_norms")


@dataclass
class NeoXConfig(ModelConfig):
    """``rms_norm_eps`` holds the LayerNorm epsilon."""

    residual: str = "sequential"  # one of RESIDUALS
    norm_bias: bool = True  # LayerNorms with a bias (all but Cohere)
    mlp: str = "gelu"  # "gelu": fc -> GELU -> proj; "swiglu": silu(gate) * up -> down
    gelu_tanh: bool = True  # the GELU's tanh approximation (gelu_new, gelu_pytorch_tanh), else exact erf
    qk_norm: str = (
        ""  # "shared": one LayerNorm with bias for all heads (Phi); "head": a weight per head (StableLM, Cohere)
    )
    lm_head_bias: bool = False  # Phi
    logit_scale: float = 1.0  # Cohere: logits * logit_scale


REQUIRED_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def shape_fields(hf: dict, source: str, eps_key: str = "layer_norm_eps") -> dict:
    """The sizes every LayerNorm family reads alike from config.json (checked to be integers first)."""
    required_ints(hf, source, REQUIRED_FIELDS)
    heads = hf["num_attention_heads"]
    return {
        "vocab_size": hf["vocab_size"],
        "hidden_size": hf["hidden_size"],
        "intermediate_size": hf["intermediate_size"],
        "num_hidden_layers": hf["num_hidden_layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": hf.get("num_key_value_heads") or heads,
        "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads,
        "rms_norm_eps": float(hf.get(eps_key, 1e-5)),
    }


def rope_fields(hf: dict, source: str, default_partial: float = 1.0, theta: float = 10000.0) -> dict:
    """``rope_theta``, ``rope_scaling`` (empty for plain RoPE) and ``rotary_dim`` (0: the whole head) of a
    config.json in the transformers 4 or 5 layout; ``default_partial``: the family's rotary fraction when
    config.json names none."""
    if "rope_theta" not in hf and "rope_theta" not in (hf.get("rope_parameters") or {}):
        hf = {**hf, "rope_theta": theta}
    rope_theta, rope = rope_settings(hf)
    kind = check_rope(rope, source)
    partial = rope.pop("partial_rotary_factor", hf.get("partial_rotary_factor", default_partial))
    if kind == "default":
        scaling = {}
    elif kind == "llama3":
        scaling = {"rope_type": kind, **{k: float(rope[k]) for k in ROPE_KEYS["llama3"]}}
    else:
        scaling = {**rope, "rope_type": kind}
        if kind == "longrope":
            scaling.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings", 2048))
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    rotary = int(head_dim * float(partial if partial is not None else 1.0))
    if rotary <= 0 or rotary % 2 or rotary > head_dim:
        raise ConfigError(
            f"{source}: partial_rotary_factor {partial!r} of head_dim {head_dim} gives {rotary} rotary dims; "
            "it must be a positive even number no larger than head_dim."
        )
    return {"rope_theta": rope_theta, "rope_scaling": scaling, "rotary_dim": 0 if rotary == head_dim else rotary}


def gelu_kind(hf: dict, source: str, default: str) -> bool:
    """True for a tanh-approximated GELU, False for the exact one; other activations are refused."""
    act = hf.get("hidden_act") or hf.get("activation_function") or default
    if act not in ACTIVATIONS:
        raise ConfigError(f"{source}: hidden_act {act!r} is not supported ({', '.join(ACTIVATIONS)}).")
    return ACTIVATIONS[act] == "tanh"


def require_silu(hf: dict, source: str) -> None:
    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ConfigError(f"{source}: hidden_act {act!r} is not supported with a gated MLP (silu only).")


# ---------------------------------------------------------------------- the module
class HeadNorm(nn.Module):
    """LayerNorm over each head's dims, without bias, with a weight per head: ``[heads, head_dim]``."""

    def __init__(self, heads: int, dim: int, eps: float):
        self.eps = eps
        self.weight = nn.Parameter((heads, dim))

    def forward(self, x: Tensor) -> Tensor:
        dim = self.weight.shape[1]
        ones, zeros = op.ones((dim,), self.weight.dtype), op.zeros((dim,), self.weight.dtype)
        return op.layer_norm(x, [dim], ones, zeros, eps=self.eps) * self.weight


class NeoXAttention(nn.Module):
    def __init__(self, c: NeoXConfig):
        self.head_dim, self.q_heads, self.kv_heads = c.head_dim, c.num_attention_heads, c.num_key_value_heads
        qkv_out = (self.q_heads + 2 * self.kv_heads) * self.head_dim
        self.qkv_proj = nn.Linear(c.hidden_size, qkv_out, bias=c.attention_bias)
        self.o_proj = nn.Linear(self.q_heads * self.head_dim, c.hidden_size, bias=c.o_proj_bias)
        self.qk_norm = c.qk_norm
        if c.qk_norm == "shared":
            self.q_norm = Norm(c.head_dim, c.rms_norm_eps, "layer", bias=True)
            self.k_norm = Norm(c.head_dim, c.rms_norm_eps, "layer", bias=True)
        elif c.qk_norm == "head":
            self.q_norm = HeadNorm(self.q_heads, c.head_dim, c.rms_norm_eps)
            self.k_norm = HeadNorm(self.kv_heads, c.head_dim, c.rms_norm_eps)
        self.rotary_dim = c.rotary_dim or c.head_dim
        self.rope = None  # (inv_freq, scale) when the module applies RoPE (set by NeoXForCausalLM)

    def forward(self, x: Tensor, paged_kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        b, s, _ = x.shape
        qkv = op.reshape(self.qkv_proj(x), (b, s, self.q_heads + 2 * self.kv_heads, self.head_dim))
        if self.qk_norm:
            q, k, v = op.split(qkv, [self.q_heads, self.q_heads + self.kv_heads], axis=2)
            qkv = op.concat([self.q_norm(q), self.k_norm(k), v], dim=2)
        if self.rope is not None:
            positions = paged_kv_cache.get_query_positions(b * s)
            qkv = apply_rope(qkv, positions, *self.rope, self.q_heads + self.kv_heads, self.rotary_dim)
        out = paged_kv_cache.attention_with_fused_qkv(layer_id, qkv, self.q_heads, sm_scale=self.head_dim**-0.5)
        return self.o_proj(op.reshape(out, (b, s, self.q_heads * self.head_dim)))


class GeluMLP(nn.Module):
    def __init__(self, c: NeoXConfig):
        self.fc = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)
        self.approximate = "tanh" if c.gelu_tanh else None

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(op.gelu(self.fc(x), approximate=self.approximate))


class GatedMLP(nn.Module):
    def __init__(self, c: NeoXConfig):
        self.gate_up_proj = nn.Linear(c.hidden_size, 2 * c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(swiglu(self.gate_up_proj(x)))


def layer_norm(c: NeoXConfig) -> Norm:
    return Norm(c.hidden_size, c.rms_norm_eps, "layer", bias=c.norm_bias)


class NeoXBlock(nn.Module):
    def __init__(self, c: NeoXConfig):
        self.residual = c.residual
        self.input_layernorm = layer_norm(c)
        if c.residual != "parallel":
            self.post_attention_layernorm = layer_norm(c)
        self.self_attn = NeoXAttention(c)
        self.mlp = GatedMLP(c) if c.mlp == "swiglu" else GeluMLP(c)

    def forward(self, hidden: Tensor, paged_kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        normed = self.input_layernorm(hidden)
        attn = self.self_attn(normed, paged_kv_cache, layer_id)
        if self.residual == "parallel":
            return hidden + attn + self.mlp(normed)
        if self.residual == "parallel_two_norms":
            return hidden + attn + self.mlp(self.post_attention_layernorm(hidden))
        hidden = hidden + attn
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class NeoXModel(nn.Module):
    def __init__(self, c: NeoXConfig):
        self.embed_tokens = Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList([NeoXBlock(c) for _ in range(c.num_hidden_layers)])
        self.norm = layer_norm(c)

    def forward(self, hidden: Tensor, paged_kv_cache: PagedKVCache) -> Tensor:
        for layer_id, layer in enumerate(self.layers):
            hidden = layer(hidden, paged_kv_cache, layer_id)
        return self.norm(hidden)


class NeoXForCausalLM(CausalLMBase):
    def __init__(self, config: NeoXConfig, sizes: BuildSizes = BuildSizes()):
        if config.residual not in RESIDUALS:
            raise ValueError(f"residual {config.residual!r}: one of {RESIDUALS}")
        self.config, self.sizes = config, sizes
        self.model = NeoXModel(config)
        if rope_type(config.rope_scaling) not in IN_CACHE_ROPE_TYPES:
            self.rope_in_model = True
            rope = rope_inv_freq(
                config.rope_scaling,
                config.rope_theta,
                config.rotary_dim or config.head_dim,
                config.max_position_embeddings,
                sizes.context_window,
            )
            for layer in self.model.layers:
                layer.self_attn.rope = rope
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=config.lm_head_bias)
        self.dtype = "float32"

    def get_logits(self, hidden: Tensor) -> Tensor:
        logits = super().get_logits(hidden)
        scale = self.config.logit_scale
        return logits * scale if scale != 1.0 else logits


# ---------------------------------------------------------------------- weight map
@dataclass(frozen=True)
class HFNames:
    """Where a family's checkpoint keeps each tensor (module paths without ``.weight``; ``{i}``: the layer)."""

    embed: str
    final_norm: str
    layer: str = "model.layers.{i}"
    lm_head: str = "lm_head"
    input_norm: str = "input_layernorm"
    post_norm: str = "post_attention_layernorm"
    q: str = "self_attn.q_proj"
    k: str = "self_attn.k_proj"
    v: str = "self_attn.v_proj"
    o: str = "self_attn.o_proj"
    q_norm: str = "self_attn.q_norm"
    k_norm: str = "self_attn.k_norm"
    mlp: tuple[str, ...] = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")  # gelu: (fc, proj)


def weight_map(c: NeoXConfig, hf: HFNames) -> dict[str, WeightSource]:
    """Every module parameter's HF tensors: q/k/v and gate/up concatenated, the rest renamed."""
    d, hq, hkv, hidden, inter = (
        c.head_dim,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.hidden_size,
        c.intermediate_size,
    )
    sources: dict[str, WeightSource] = {}

    def add(ours: str, theirs: list[str], shapes: list[tuple[int, ...]], bias: bool = False, transform=None) -> None:
        sources[f"{ours}.weight"] = WeightSource([f"{t}.weight" for t in theirs], shapes, transform)
        if bias:
            sources[f"{ours}.bias"] = WeightSource([f"{t}.bias" for t in theirs], [s[:1] for s in shapes], transform)

    add("model.embed_tokens", [hf.embed], [(c.vocab_size, hidden)])
    add("model.norm", [hf.final_norm], [(hidden,)], c.norm_bias)
    if not c.tie_word_embeddings:
        add("lm_head", [hf.lm_head], [(c.vocab_size, hidden)], c.lm_head_bias)
    for i in range(c.num_hidden_layers):
        ours, theirs = f"model.layers.{i}", hf.layer.format(i=i)
        add(f"{ours}.input_layernorm", [f"{theirs}.{hf.input_norm}"], [(hidden,)], c.norm_bias)
        if c.residual != "parallel":
            add(f"{ours}.post_attention_layernorm", [f"{theirs}.{hf.post_norm}"], [(hidden,)], c.norm_bias)
        qkv = [f"{theirs}.{name}" for name in (hf.q, hf.k, hf.v)]
        add(f"{ours}.self_attn.qkv_proj", qkv, [(r, hidden) for r in (hq * d, hkv * d, hkv * d)], c.attention_bias)
        add(f"{ours}.self_attn.o_proj", [f"{theirs}.{hf.o}"], [(hidden, hq * d)], c.o_proj_bias)
        if c.qk_norm == "shared":
            add(f"{ours}.self_attn.q_norm", [f"{theirs}.{hf.q_norm}"], [(d,)], True)
            add(f"{ours}.self_attn.k_norm", [f"{theirs}.{hf.k_norm}"], [(d,)], True)
        elif c.qk_norm == "head":
            add(f"{ours}.self_attn.q_norm", [f"{theirs}.{hf.q_norm}"], [(hq, d)])
            add(f"{ours}.self_attn.k_norm", [f"{theirs}.{hf.k_norm}"], [(hkv, d)])
        mlp = [f"{theirs}.{name}" for name in hf.mlp]
        if c.mlp == "swiglu":
            add(f"{ours}.mlp.gate_up_proj", mlp[:2], [(inter, hidden)] * 2)
            add(f"{ours}.mlp.down_proj", mlp[2:], [(hidden, inter)])
        else:
            add(f"{ours}.mlp.fc", mlp[:1], [(inter, hidden)], c.mlp_bias)
            add(f"{ours}.mlp.proj", mlp[1:], [(hidden, inter)], c.mlp_bias)
    return sources


def deinterleave_rows(c: NeoXConfig):
    """A fused q/k/v transform for interleaved RoPE (pairs ``(2i, 2i+1)``, Cohere): q and k rows of each head
    reordered to rotate-half's ``(i, i + d/2)``. Scores are unchanged (q and k move alike), v is untouched."""
    q_rows, k_rows = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim

    def transform(array: np.ndarray) -> np.ndarray:
        q, k, v = np.split(array, [q_rows, q_rows + k_rows])
        return np.concatenate([unpermute_qk(q, c.num_attention_heads), unpermute_qk(k, c.num_key_value_heads), v])

    return transform
