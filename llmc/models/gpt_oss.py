"""GPT-OSS (``gpt_oss``): attention sinks, alternating sliding/full layers, q/k/v/o biases, YaRN RoPE, and a mixture
of experts in every layer with biased experts and a clamped SwiGLU.

**Attention sinks.** Each head ``h`` has a learned logit ``sinks[h]`` that joins every query's softmax
denominator and is then dropped: ``out = sum_j e^{s_j} v_j / (sum_j e^{s_j} + e^{sink_h})``, a key of logit
``sink_h`` and value zero. TVM 0.27's paged KV cache has no such term and returns only the attention output, so
the module hands the sinks to the cache's kernels through the query: after each KV group's query heads it puts
one *control head* whose first elements are the group's sink logits and whose next element says whether the layer
slides (``AttentionSpec.sinks``). llmc's CPU attention kernels read it (``llmc.kernels.cpu_attention``): the sink
joins the denominator in the kernel call that sees the query's own key (exactly once, whichever of TVM's partial
attentions and merges run), and a sliding layer's window is masked by key position. The module drops the control
heads from the output. On GPU targets TVM's kernels are patched to do the same (``llmc.kernels.gpu_sinks``).

**RoPE** (rotate-half, YaRN with ``truncate``) is applied by the module.

**Experts.** The router is a biased linear layer; each token takes the ``num_experts_per_tok`` largest logits and
a softmax over them (= the softmax over all experts renormalised over the chosen ones). The checkpoint stacks the
experts ``[E, in, out]`` with gate and up columns interleaved (``gate_up_proj[..., ::2]``, ``[..., 1::2]``); they
become ``SparseMoE``'s ``[E * rows, cols]`` matrices (each expert's gate rows, then its up rows) at conversion.
The activation: ``gate = min(gate, limit)``, ``up = clamp(up, -limit, limit)``,
``out = (up + 1) * gate * sigmoid(alpha * gate)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache

from llmc.errors import ConfigError
from llmc.models.attention import AttentionSpec
from llmc.models.base import (
    BuildSizes,
    CausalLMBase,
    ModelConfig,
    WeightSource,
    positive_int,
    required_ints,
    rope_settings,
)
from llmc.models.control_heads import with_control_heads, without_control_heads
from llmc.models.layers import DecoderStack, apply_rope, pre_norm_residual, rope_type, set_module_rope
from llmc.models.moe import Router, SparseMoE

REQUIRED_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
LAYER_TYPES = ("sliding_attention", "full_attention")
ROPE_TYPES = ("default", "yarn")
DEFAULT_THETA = 150000.0  # transformers' GptOssConfig.default_theta
FEATURES = (
    "attention sinks (llmc's CPU kernels, patched GPU kernels), alternating sliding/full layers, q/k/v/o bias, "
    "YaRN rope, MoE every layer (biased router, softmax over the top-k logits, biased experts, clamped SwiGLU)"
)


@dataclass
class GptOssConfig(ModelConfig):
    moe_experts: int = 0
    moe_top_k: int = 0
    swiglu_alpha: float = 1.702
    swiglu_limit: float = 7.0
    # weight layout, not architecture: GGUF files hold the experts as llama.cpp split them (separate gate and up
    # stacks [E, inter, hidden] with their biases, down [E, hidden, inter]) and the sinks as ``sinks.weight``
    gguf_layout: bool = False

    def max_prefill_chunk(self) -> int | None:
        """No bound: the sink-aware kernels mask a sliding layer's window by key position, in the chunk too."""
        return None


def _layer_types(hf: dict, layers: int, source: str) -> list[str]:
    """HF ``layer_types`` (transformers' default: even layers sliding, odd layers full)."""
    types = hf.get("layer_types") or ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(layers)]
    if not isinstance(types, list) or len(types) != layers:
        raise ConfigError(f"{source}: layer_types must list one entry for each of the {layers} layers.")
    unknown = sorted({str(t) for t in types} - set(LAYER_TYPES))
    if unknown:
        raise ConfigError(f"{source}: layer_types has {', '.join(unknown)}; supported: {', '.join(LAYER_TYPES)}.")
    return list(types)


def parse_config(hf: dict, source: str) -> GptOssConfig:
    """A ``GptOssConfig`` from a gpt_oss config.json (transformers 4 and 5 layouts, the released ones' aliases)."""
    required_ints(hf, source, REQUIRED_FIELDS)
    layers, heads = hf["num_hidden_layers"], hf["num_attention_heads"]
    defaults = {"num_key_value_heads": heads, "head_dim": hf["hidden_size"] // heads}  # (also when null)
    hf = {**hf, **{key: value for key, value in defaults.items() if hf.get(key) is None}}
    kv_heads = positive_int(hf, "num_key_value_heads", source)
    head_dim = positive_int(hf, "head_dim", source)
    if heads % kv_heads:
        raise ConfigError(f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}.")
    group = heads // kv_heads
    if head_dim < group + 1:
        raise ConfigError(
            f"{source}: head_dim {head_dim} is too narrow for llmc's attention sinks: the control head of each KV "
            f"group carries its {group} sink logits and a flag in one head of head_dim elements."
        )
    if head_dim % 2:
        raise ConfigError(f"{source}: head_dim {head_dim} is odd; rotary embeddings need an even width.")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{source}: hidden_act {hf.get('hidden_act')!r} is not supported (gpt_oss: silu).")
    if "rope_theta" not in hf and "rope_theta" not in (hf.get("rope_parameters") or hf.get("rope_scaling") or {}):
        hf = {**hf, "rope_theta": DEFAULT_THETA}
    rope_theta, rope = rope_settings(hf)
    kind = rope_type(rope)
    if kind not in ROPE_TYPES:
        raise ConfigError(f"{source}: rope type {kind!r} is not supported for gpt_oss (supported: yarn, default).")
    rope_scaling = (
        {} if kind == "default" else {"rope_type": kind, **{k: v for k, v in rope.items() if k != "rope_type"}}
    )
    if kind == "yarn" and not isinstance(rope_scaling.get("original_max_position_embeddings"), int):
        raise ConfigError(f"{source}: yarn rope scaling needs an integer original_max_position_embeddings.")
    types = _layer_types(hf, layers, source)
    window = hf.get("sliding_window")
    if "sliding_attention" in types and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ConfigError(f"{source}: sliding_window is {window!r}; sliding_attention layers need a positive integer.")
    experts = positive_int(hf, "num_local_experts", source, hf.get("num_experts"))
    top_k = positive_int(hf, "num_experts_per_tok", source, hf.get("experts_per_token"))
    if top_k > experts:
        raise ConfigError(f"{source}: num_experts_per_tok {top_k} is more than num_local_experts {experts}.")
    limit = hf.get("swiglu_limit", 7.0)
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0:
        raise ConfigError(f"{source}: swiglu_limit is {limit!r}; expected a positive number.")
    return GptOssConfig(
        model_type="gpt_oss",
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=bool(hf.get("attention_bias", True)),
        o_proj_bias=bool(hf.get("attention_bias", True)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 131072)),
        layer_types=types,
        sliding_window=int(window) if "sliding_attention" in types else 0,
        moe_experts=experts,
        moe_top_k=top_k,
        swiglu_alpha=float(hf.get("swiglu_alpha", 1.702)),
        swiglu_limit=float(limit),
        gguf_layout=bool(hf.get("gguf_layout", False)),
    )


# ---------------------------------------------------------------------- attention with sinks
class GptOssAttention(nn.Module):
    def __init__(self, c: GptOssConfig, sliding: bool):
        self.heads, self.kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.sliding = sliding
        qkv_out = (self.heads + 2 * self.kv_heads) * self.head_dim
        self.qkv_proj = nn.Linear(c.hidden_size, qkv_out, bias=c.attention_bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, c.hidden_size, bias=c.o_proj_bias)
        self.sinks = nn.Parameter((self.heads,))
        self.rope = None  # (inv_freq, cos/sin scale): set by GptOssForCausalLM

    def forward(self, x: Tensor, paged_kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        b, s, _ = x.shape
        heads, kv_heads, d = self.heads, self.kv_heads, self.head_dim
        qkv = op.reshape(self.qkv_proj(x), (b, s, heads + 2 * kv_heads, d))
        positions = paged_kv_cache.get_query_positions(b * s)
        qkv = apply_rope(qkv, positions, *self.rope, heads + kv_heads, d)
        qkv = with_control_heads(qkv, self.sinks, heads, kv_heads, self.sliding)
        q_heads = kv_heads * (heads // kv_heads + 1)
        out = paged_kv_cache.attention_with_fused_qkv(layer_id, qkv, q_heads, sm_scale=d**-0.5)
        return self.o_proj(without_control_heads(out, heads, kv_heads))


# ---------------------------------------------------------------------- experts
def clamped_swiglu(alpha: float, limit: float):
    """GPT-OSS's activation of a ``[..., 2 * inter]`` gate/up projection (gate columns first), in float32."""

    def activation(gate_up: Tensor) -> Tensor:
        def compute(x: te.Tensor):
            width = int(x.shape[-1]) // 2

            def element(*index):
                *rest, i = index
                gate = tirx.min(x[(*rest, i)].astype("float32"), tirx.const(limit, "float32"))
                up = x[(*rest, i + width)].astype("float32")
                up = tirx.max(tirx.min(up, tirx.const(limit, "float32")), tirx.const(-limit, "float32"))
                glu = gate * tirx.sigmoid(gate * tirx.const(alpha, "float32"))
                return ((up + tirx.const(1.0, "float32")) * glu).astype(x.dtype)

            return te.compute((*x.shape[:-1], width), element, name="clamped_swiglu")

        return op.tensor_expr_op(compute, name_hint="clamped_swiglu", args=[gate_up])

    return activation


class GptOssRouter(Router):
    """The float router with its bias: logits ``x W^T + b``."""

    def __init__(self, hidden: int, experts: int):
        super().__init__(hidden, experts)
        self.bias = nn.Parameter((experts,))

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + self.bias.astype("float32")


class GptOssMoE(SparseMoE):
    """Softmax over the top-k logits (= ``SparseMoE``'s renormalised top-k of the softmax), biased experts."""

    def __init__(self, c: GptOssConfig):
        activation = clamped_swiglu(c.swiglu_alpha, c.swiglu_limit)
        super().__init__(
            c.hidden_size, c.moe_experts, c.intermediate_size, c.moe_top_k, True, activation, expert_bias=True
        )
        self.gate = GptOssRouter(c.hidden_size, c.moe_experts)


# ---------------------------------------------------------------------- the model
class GptOssDecoderLayer(nn.Module):
    def __init__(self, c: GptOssConfig, layer_id: int):
        self.self_attn = GptOssAttention(c, sliding=c.layer_types[layer_id] == "sliding_attention")
        self.mlp = GptOssMoE(c)
        self.input_layernorm = nn.RMSNorm(c.hidden_size, -1, c.rms_norm_eps, bias=False)
        self.post_attention_layernorm = nn.RMSNorm(c.hidden_size, -1, c.rms_norm_eps, bias=False)

    def forward(self, hidden: Tensor, paged_kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        return pre_norm_residual(self, hidden, paged_kv_cache, layer_id, self.mlp)


class GptOssForCausalLM(CausalLMBase):
    rope_in_model = True  # YaRN: the module rotates q and k (the cache's kernels apply default/llama3 only)

    def __init__(self, config: GptOssConfig, sizes: BuildSizes = BuildSizes()):
        self.config, self.sizes = config, sizes
        self.model = DecoderStack(config, GptOssDecoderLayer)
        set_module_rope(self.model, config, sizes, config.head_dim)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.dtype = "float32"

    def attention_specs(self) -> list[AttentionSpec]:
        """Every layer's attention carries the control heads (sinks, sliding flag)."""
        return [dataclasses.replace(spec, sinks=True) for spec in super().attention_specs()]


# ---------------------------------------------------------------------- weights
def _gate_up_order(inter: int) -> np.ndarray:
    """Interleaved gate/up columns (gate 2i, up 2i + 1) -> the gate rows, then the up rows."""
    return np.concatenate([np.arange(0, 2 * inter, 2), np.arange(1, 2 * inter, 2)])


def _gate_up_weight(c: GptOssConfig):
    """``gate_up_proj`` ``[E, hidden, 2 inter]`` -> ``[E * 2 inter, hidden]``, each expert's gate rows then up rows.

    A 2-D input is the stack's rows as an MXFP4 checkpoint stores them (``[E * 2 inter, ...]``, output-major: what
    ``--quant keep`` reads, ``Mxfp4Checkpoint.get_raw``): those rows only move, as ``keep.move_rows`` requires."""
    order = _gate_up_order(c.intermediate_size)

    def transform(stack: np.ndarray) -> np.ndarray:
        if stack.ndim == 2:
            return np.ascontiguousarray(stack.reshape(-1, len(order), stack.shape[1])[:, order].reshape(stack.shape))
        rows = stack.transpose(0, 2, 1)[:, order]
        return np.ascontiguousarray(rows.reshape(-1, stack.shape[1]))

    return transform


def _gate_up_bias(c: GptOssConfig):
    order = _gate_up_order(c.intermediate_size)
    return lambda bias: np.ascontiguousarray(bias[:, order])


def _down_weight(stack: np.ndarray) -> np.ndarray:
    """``down_proj`` ``[E, inter, hidden]`` -> ``[E * hidden, inter]``; MXFP4's stored rows (2-D) are that already."""
    if stack.ndim == 2:
        return stack
    return np.ascontiguousarray(stack.transpose(0, 2, 1).reshape(-1, stack.shape[1]))


def _gate_then_up(biases: np.ndarray) -> np.ndarray:
    """Gate and up bias stacks ``[2E, inter]`` (concatenated) -> ``[E, 2 inter]``: each expert's gate, then up."""
    gate, up = np.split(biases, 2)
    return np.ascontiguousarray(np.concatenate([gate, up], axis=1))


def _gguf_sources(c: GptOssConfig, attn: str, mlp: str) -> dict[str, WeightSource]:
    """A GGUF file's layer (``gguf_layout``): the same parameters from llama.cpp's split expert stacks, offered by
    the reader one expert at a time, so the rows are already in place (``--quant keep`` moves no block)."""
    experts, inter, hidden = range(c.moe_experts), c.intermediate_size, c.hidden_size
    return {
        f"{attn}.sinks": WeightSource([f"{attn}.sinks.weight"], [(c.num_attention_heads,)]),
        f"{mlp}.gate.weight": WeightSource([f"{mlp}.router.weight"], [(c.moe_experts, hidden)]),
        f"{mlp}.gate.bias": WeightSource([f"{mlp}.router.bias"], [(c.moe_experts,)]),
        f"{mlp}.experts.gate_up_proj.weight": WeightSource(
            [f"{mlp}.experts.{e}.{p}_proj.weight" for e in experts for p in ("gate", "up")],
            [(inter, hidden)] * (2 * c.moe_experts),
        ),
        f"{mlp}.experts.gate_up_proj_bias": WeightSource(
            [f"{mlp}.experts.{p}_proj.bias" for p in ("gate", "up")], [(c.moe_experts, inter)] * 2, _gate_then_up
        ),
        f"{mlp}.experts.down_proj.weight": WeightSource(
            [f"{mlp}.experts.{e}.down_proj.weight" for e in experts], [(hidden, inter)] * c.moe_experts
        ),
        f"{mlp}.experts.down_proj_bias": WeightSource([f"{mlp}.experts.down_proj.bias"], [(c.moe_experts, hidden)]),
    }


def weight_sources(c: GptOssConfig) -> dict[str, WeightSource]:
    """Module parameters that are not a same-named HF tensor: fused q/k/v, the router, the experts' stacks."""
    d, heads, kv, hidden = c.head_dim, c.num_attention_heads, c.num_key_value_heads, c.hidden_size
    experts, inter = c.moe_experts, c.intermediate_size
    qkv_rows = [heads * d, kv * d, kv * d]
    sources = {}
    for i in range(c.num_hidden_layers):
        attn, mlp = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        sources[f"{attn}.qkv_proj.weight"] = WeightSource(
            [f"{attn}.{p}_proj.weight" for p in "qkv"], [(r, hidden) for r in qkv_rows]
        )
        if c.attention_bias:
            sources[f"{attn}.qkv_proj.bias"] = WeightSource(
                [f"{attn}.{p}_proj.bias" for p in "qkv"], [(r,) for r in qkv_rows]
            )
        if c.gguf_layout:
            sources.update(_gguf_sources(c, attn, mlp))
            continue
        sources[f"{mlp}.gate.weight"] = WeightSource([f"{mlp}.router.weight"], [(experts, hidden)])
        sources[f"{mlp}.gate.bias"] = WeightSource([f"{mlp}.router.bias"], [(experts,)])
        sources[f"{mlp}.experts.gate_up_proj.weight"] = WeightSource(
            [f"{mlp}.experts.gate_up_proj"], [(experts, hidden, 2 * inter)], _gate_up_weight(c)
        )
        sources[f"{mlp}.experts.gate_up_proj_bias"] = WeightSource(
            [f"{mlp}.experts.gate_up_proj_bias"], [(experts, 2 * inter)], _gate_up_bias(c)
        )
        sources[f"{mlp}.experts.down_proj.weight"] = WeightSource(
            [f"{mlp}.experts.down_proj"], [(experts, inter, hidden)], _down_weight
        )
    return sources
