"""Llama 4 (``llama4_text``, and the text part of the multimodal ``llama4`` config: its vision parts are ignored).

What differs from Llama:

- **NoPE layers**: ``no_rope_layers`` flags (1: RoPE) or every ``no_rope_layer_interval``-th layer without RoPE, so
  the module rotates q/k itself (TVM's cache rotates every layer or none), with any HF rope type (llama3 in the
  released models). Llama 4 rotates interleaved pairs (complex multiplication): q/k rows are reordered to
  rotate-half at conversion, which leaves ``q . k`` unchanged.
- **QK-norm** (``use_qk_norm``): a weightless RMS norm of each q and k head, on the RoPE layers only (HF norms after
  the rotation; a rotation keeps a head's norm, so the order does not matter).
- **Attention temperature tuning** (``attn_temperature_tuning``) on the NoPE layers: the query at position ``p`` is
  scaled by ``log(floor((p + 1) / floor_scale) + 1) * attn_scale + 1``, positions read from the KV cache.
- **Chunked attention** (``attention_chunk_size``, the RoPE layers' ``chunked_attention``): a query at ``p`` sees the
  keys in ``[p - p mod C, p]``. Within a context window of at most ``C`` that is causal attention, and the module is
  Llama's. A larger window (``BuildSizes``) masks the chunks in the attention kernels by key position: every layer's
  queries carry control heads (``llmc.models.control_heads``), flagged on the chunked layers, and the chunked
  layers' ``AttentionSpec.chunk`` is ``C`` (one extra query head per KV group of attention work, only then).
- **MoE** on ``moe_layers`` (every ``interleave_moe_layer_step``-th layer), the dense SwiGLU MLP
  (``intermediate_size_mlp``) elsewhere: a top-k (``num_experts_per_tok``) router over the logits whose sigmoid
  score multiplies the chosen expert's *input* (``SparseMoE.scale_inputs``), plus a shared expert. The experts are
  stored stacked, ``gate_up_proj [E, hidden, 2 * inter]`` and ``down_proj [E, inter, hidden]`` (input-major), and
  transposed at conversion into ``SparseMoE``'s expert-major rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache

from llmc.errors import ConfigError
from llmc.models.attention import AttentionSpec
from llmc.models.base import BuildSizes, CausalLMBase, GGUFSpec, ModelConfig, WeightSource, required_ints, rope_settings
from llmc.models.control_heads import with_control_heads, without_control_heads
from llmc.models.layers import (
    IN_CACHE_ROPE_TYPES,
    DecoderStack,
    apply_rope,
    pre_norm_residual,
    rope_type,
    set_module_rope,
    swiglu,
)
from llmc.models.llama import ROPE_KEYS, check_rope, interleaved_to_half
from llmc.models.moe import SparseMoE, routing_weights, top_k_experts

REQUIRED_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
LAYER_TYPES = ("full_attention", "chunked_attention")
FEATURES = (
    "NoPE layers with attention temperature tuning, weightless QK-norm on RoPE layers, interleaved rope, "
    "MoE (sigmoid top-k scaling the expert input, shared expert) interleaved with dense layers, chunked attention "
    "(masked by the attention kernels beyond one chunk); the multimodal config's vision parts are ignored"
)  # the registry appends the rope types
LOGIT_FLOOR = -3.0e38  # below every router logit: an expert already chosen


@dataclass
class Llama4Config(ModelConfig):
    """``intermediate_size`` is the experts' and the shared expert's width, ``intermediate_size_mlp`` the dense
    layers'."""

    intermediate_size_mlp: int = 0
    moe_experts: int = 0
    moe_top_k: int = 0
    moe_intermediate_size: int = 0
    moe_layers: list[int] = field(default_factory=list)
    nope_layers: list[int] = field(default_factory=list)  # layers without RoPE
    qk_norm: bool = True  # weightless RMS norm of each q/k head on the RoPE layers
    attn_temperature_tuning: bool = True  # on the NoPE layers
    floor_scale: float = 8192.0
    attn_scale: float = 0.1
    attention_chunk_size: int = 0  # 0: no chunked layers
    chunked_layers: list[int] = field(default_factory=list)
    weight_prefix: str = "model."  # where the text model's tensors live ("language_model.model." multimodal)
    head_name: str = "lm_head.weight"
    # weight layout, not architecture: a GGUF file's experts come one expert at a time (llama.cpp's split stacks)
    gguf_layout: bool = False

    def masks_chunks(self, sizes: BuildSizes) -> bool:
        """Whether a build for ``sizes`` masks chunks (its context is longer than one chunk)."""
        return bool(self.chunked_layers) and sizes.context_window > self.attention_chunk_size


def _flag_list(hf: dict, key: str, layers: int, source: str) -> list | None:
    value = hf.get(key)
    if value is None or value == []:
        return None
    if not isinstance(value, list) or len(value) < layers:
        raise ConfigError(f"{source}: {key} must list one entry for each of the {layers} layers; got {value!r}.")
    return value


def _positive(hf: dict, key: str, default, source: str, kind=float):
    value = hf.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0 or (kind is int and value % 1):
        raise ConfigError(
            f"{source}: {key} is {value!r}; expected a positive {'integer' if kind is int else 'number'}."
        )
    return kind(value)


def _rope_layers(hf: dict, layers: int, source: str) -> list[bool]:
    flags = _flag_list(hf, "no_rope_layers", layers, source)
    if flags is None:
        interval = _positive(hf, "no_rope_layer_interval", 4, source, int)
        return [(i + 1) % interval != 0 for i in range(layers)]
    return [bool(flag) for flag in flags[:layers]]


def _chunking(hf: dict, rope_layers: list[bool], source: str) -> tuple[int, list[int]]:
    """``(attention_chunk_size, chunked layers)``: HF's ``layer_types``, else every RoPE layer when chunked."""
    layers = len(rope_layers)
    chunk = hf.get("attention_chunk_size", 8192)
    if chunk is not None:
        chunk = _positive(hf, "attention_chunk_size", 8192, source, int)
    kinds = _flag_list(hf, "layer_types", layers, source)
    if kinds is None:
        kinds = ["chunked_attention" if rope and chunk else "full_attention" for rope in rope_layers]
    unknown = sorted({k for k in kinds[:layers] if k not in LAYER_TYPES}, key=str)
    if unknown:
        raise ConfigError(f"{source}: layer_types {unknown!r} are not supported (supported: {', '.join(LAYER_TYPES)}).")
    chunked = [i for i in range(layers) if kinds[i] == "chunked_attention"]
    if chunked and not chunk:
        raise ConfigError(f"{source}: layer_types has chunked_attention layers but attention_chunk_size is null.")
    return (chunk or 0), chunked


def _moe_fields(hf: dict, layers: int, source: str) -> dict:
    experts, top_k = hf.get("num_local_experts", 16), hf.get("num_experts_per_tok", 1)
    if not isinstance(experts, int) or not isinstance(top_k, int) or not 0 < top_k <= experts:
        raise ConfigError(
            f"{source}: llama4 needs num_local_experts and num_experts_per_tok with 0 < num_experts_per_tok <= "
            f"num_local_experts; got {experts!r} and {top_k!r}."
        )
    moe_layers = hf.get("moe_layers")
    if moe_layers is None:
        step = _positive(hf, "interleave_moe_layer_step", 1, source, int)
        moe_layers = list(range(step - 1, layers, step))
    if not isinstance(moe_layers, list) or not all(isinstance(i, int) and 0 <= i < layers for i in moe_layers):
        raise ConfigError(f"{source}: moe_layers must list layer indices below {layers}; got {moe_layers!r}.")
    return dict(
        moe_experts=experts,
        moe_top_k=top_k,
        moe_intermediate_size=hf["intermediate_size"],
        moe_layers=sorted(set(moe_layers)),
    )


def parse_config(hf: dict, source: str) -> Llama4Config:
    """A ``Llama4Config`` from a ``llama4_text`` config.json or the ``text_config`` of a ``llama4`` one."""
    prefix, head = "model.", "lm_head.weight"
    if hf.get("model_type") == "llama4":
        if not isinstance(hf.get("text_config"), dict):
            raise ConfigError(f"{source}: a llama4 config.json needs its text_config (the language model's fields).")
        hf = {"tie_word_embeddings": hf.get("tie_word_embeddings", False), **hf["text_config"]}
        prefix, head = "language_model.model.", "language_model.lm_head.weight"
    required_ints(hf, source, REQUIRED_FIELDS)
    if (hf.get("hidden_act") or "silu") != "silu":
        raise ConfigError(
            f"{source}: hidden_act {hf.get('hidden_act')!r} is not supported for llama4 (supported: silu)."
        )
    rope_theta, rope = rope_settings({"rope_theta": 500000.0, **hf})
    kind = check_rope(rope, source)
    rope_scaling = (
        {} if kind == "default" else {"rope_type": kind, **{k: v for k, v in rope.items() if k != "rope_type"}}
    )
    if kind == "llama3":
        rope_scaling = {"rope_type": "llama3", **{k: float(rope[k]) for k in ROPE_KEYS["llama3"]}}
    layers, heads = hf["num_hidden_layers"], hf["num_attention_heads"]
    rope_layers = _rope_layers(hf, layers, source)
    chunk, chunked = _chunking(hf, rope_layers, source)
    bias = bool(hf.get("attention_bias", False))
    return Llama4Config(
        model_type="llama4_text",
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=bias,
        o_proj_bias=bias,
        max_position_embeddings=int(hf.get("max_position_embeddings", 4096 * 32)),
        intermediate_size_mlp=_positive(hf, "intermediate_size_mlp", 16384, source, int),
        **_moe_fields(hf, layers, source),
        nope_layers=[i for i, rope_layer in enumerate(rope_layers) if not rope_layer],
        qk_norm=bool(hf.get("use_qk_norm", True)),
        attn_temperature_tuning=bool(hf.get("attn_temperature_tuning", True)),
        floor_scale=_positive(hf, "floor_scale", 8192, source),
        attn_scale=float(hf.get("attn_scale", 0.1)),
        attention_chunk_size=chunk,
        chunked_layers=chunked,
        weight_prefix=prefix,
        head_name=head,
        gguf_layout=bool(hf.get("gguf_layout", False)),
    )


# ---------------------------------------------------------------------- attention
def head_rms_norm(qkv: Tensor, heads: int, eps: float) -> Tensor:
    """A weightless RMS norm (in float32) over each of the first ``heads`` heads of ``qkv`` ``[b, s, h, d]``."""

    def compute(x: te.Tensor):
        b, s, h, d = x.shape
        k = te.reduce_axis((0, d), name="k")
        square = te.compute(
            (b, s, h), lambda i, t, j: te.sum(x[i, t, j, k].astype("float32") * x[i, t, j, k].astype("float32"), axis=k)
        )

        def element(i, t, j, c):
            inv = tirx.rsqrt(square[i, t, j] / tirx.const(int(d), "float32") + tirx.const(eps, "float32"))
            normed = (x[i, t, j, c].astype("float32") * inv).astype(x.dtype)
            return tirx.if_then_else(j < heads, normed, x[i, t, j, c])

        return te.compute(x.shape, element, name="head_rms_norm")

    return op.tensor_expr_op(compute, name_hint="head_rms_norm", args=[qkv])


def temperature_scale(qkv: Tensor, positions: Tensor, heads: int, floor_scale: float, attn_scale: float) -> Tensor:
    """The first ``heads`` (query) heads times ``log(floor((p + 1) / floor_scale) + 1) * attn_scale + 1`` at each
    token's sequence position ``p`` (``positions`` ``[b * s]``)."""

    def compute(x: te.Tensor, pos: te.Tensor):
        _, s, _, _ = x.shape

        def element(i, t, j, c):
            p = pos[i * s + t].astype("float32")
            steps = tirx.floor((p + tirx.const(1.0, "float32")) / tirx.const(floor_scale, "float32"))
            scale = tirx.log(steps + tirx.const(1.0, "float32")) * tirx.const(attn_scale, "float32") + 1.0
            scaled = (x[i, t, j, c].astype("float32") * scale).astype(x.dtype)
            return tirx.if_then_else(j < heads, scaled, x[i, t, j, c])

        return te.compute(x.shape, element, name="attn_temperature")

    return op.tensor_expr_op(compute, name_hint="attn_temperature", args=[qkv, positions])


class Llama4Attention(nn.Module):
    def __init__(self, c: Llama4Config, layer_id: int):
        self.head_dim, self.q_heads, self.kv_heads = c.head_dim, c.num_attention_heads, c.num_key_value_heads
        qkv_out = (self.q_heads + 2 * self.kv_heads) * self.head_dim
        self.qkv_proj = nn.Linear(c.hidden_size, qkv_out, bias=c.attention_bias)
        self.o_proj = nn.Linear(self.q_heads * self.head_dim, c.hidden_size, bias=c.o_proj_bias)
        rope_layer = layer_id not in c.nope_layers
        self.qk_norm = c.qk_norm and rope_layer
        self.eps = c.rms_norm_eps
        self.temperature = (c.floor_scale, c.attn_scale) if c.attn_temperature_tuning and not rope_layer else None
        self.rope = None  # (inv_freq, scale) when the module rotates this layer (set by Llama4ForCausalLM)
        self.control = False  # control heads in the queries (set by Llama4ForCausalLM when chunks are masked)
        self.chunked = layer_id in c.chunked_layers

    def forward(self, x: Tensor, paged_kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        b, s, _ = x.shape
        qkv = op.reshape(self.qkv_proj(x), (b, s, self.q_heads + 2 * self.kv_heads, self.head_dim))
        if self.qk_norm:
            qkv = head_rms_norm(qkv, self.q_heads + self.kv_heads, self.eps)
        if self.rope is not None or self.temperature is not None:
            positions = paged_kv_cache.get_query_positions(b * s)
            if self.rope is not None:
                qkv = apply_rope(qkv, positions, *self.rope, self.q_heads + self.kv_heads, self.head_dim)
            if self.temperature is not None:
                qkv = temperature_scale(qkv, positions, self.q_heads, *self.temperature)
        if self.control:
            qkv = with_control_heads(qkv, None, self.q_heads, self.kv_heads, masked=self.chunked)
            heads = self.q_heads + self.kv_heads
            out = paged_kv_cache.attention_with_fused_qkv(layer_id, qkv, heads, sm_scale=self.head_dim**-0.5)
            return self.o_proj(without_control_heads(out, self.q_heads, self.kv_heads))
        out = paged_kv_cache.attention_with_fused_qkv(layer_id, qkv, self.q_heads, sm_scale=self.head_dim**-0.5)
        return self.o_proj(op.reshape(out, (b, s, self.q_heads * self.head_dim)))


# ---------------------------------------------------------------------- MLP and MoE
class Llama4MLP(nn.Module):
    """SwiGLU with fused gate/up rows (the dense layers' MLP and the shared expert)."""

    def __init__(self, hidden: int, inter: int):
        self.gate_up_proj = nn.Linear(hidden, 2 * inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(swiglu(self.gate_up_proj(x)))


class Llama4MoE(SparseMoE):
    """Top-k over the router logits, sigmoid scores scaling the chosen experts' inputs, plus the shared expert."""

    scale_inputs = True

    def __init__(self, c: Llama4Config):
        super().__init__(c.hidden_size, c.moe_experts, c.moe_intermediate_size, c.moe_top_k, renormalize=False)
        self.shared_expert = Llama4MLP(c.hidden_size, c.intermediate_size)

    def route(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.gate(flat)
        expert_ids = top_k_experts(logits, self.top_k, floor=LOGIT_FLOOR)
        return expert_ids, routing_weights(op.sigmoid(logits), expert_ids, renormalize=False)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + self.shared_expert(x)


# ---------------------------------------------------------------------- the model
class Llama4DecoderLayer(nn.Module):
    def __init__(self, c: Llama4Config, layer_id: int):
        self.self_attn = Llama4Attention(c, layer_id)
        if layer_id in c.moe_layers:
            self.feed_forward = Llama4MoE(c)
        else:
            self.feed_forward = Llama4MLP(c.hidden_size, c.intermediate_size_mlp)
        self.input_layernorm = nn.RMSNorm(c.hidden_size, -1, c.rms_norm_eps, bias=False)
        self.post_attention_layernorm = nn.RMSNorm(c.hidden_size, -1, c.rms_norm_eps, bias=False)

    def forward(self, hidden: Tensor, paged_kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        return pre_norm_residual(self, hidden, paged_kv_cache, layer_id, self.feed_forward)


class Llama4ForCausalLM(CausalLMBase):
    def __init__(self, config: Llama4Config, sizes: BuildSizes = BuildSizes()):
        self.config, self.sizes = config, sizes
        self.model = DecoderStack(config, Llama4DecoderLayer)
        if rope_type(config.rope_scaling) not in IN_CACHE_ROPE_TYPES or config.nope_layers:
            # the module rotates q/k: NoPE layers (TVM's cache rotates every layer or none), or a rope type the
            # cache's kernels lack
            self.rope_in_model = True
            set_module_rope(self.model, config, sizes, config.head_dim, config.nope_layers)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.dtype = "float32"
        if config.masks_chunks(sizes):
            group = config.num_attention_heads // config.num_key_value_heads
            if config.head_dim <= group:  # the control head holds its flag at index ``group``
                raise ConfigError(
                    f"llama4: head_dim {config.head_dim} is too narrow for llmc's chunk masks beyond one "
                    f"{config.attention_chunk_size}-token chunk; use --context-window {config.attention_chunk_size}."
                )
            for layer in self.model.layers:
                layer.self_attn.control = True

    def attention_specs(self) -> list[AttentionSpec]:
        c = self.config
        nope, chunked = set(c.nope_layers), set(c.chunked_layers) if c.masks_chunks(self.sizes) else set()
        specs = [replace(s, rope="none") if i in nope else s for i, s in enumerate(super().attention_specs())]
        return [replace(s, chunk=c.attention_chunk_size) if i in chunked else s for i, s in enumerate(specs)]


# ---------------------------------------------------------------------- weights
def _qkv_rows(c: Llama4Config):
    """The fused q/k/v rows (weight or bias): q and k heads' interleaved pairs reordered to rotate-half."""
    d, hq, hkv = c.head_dim, c.num_attention_heads, c.num_key_value_heads

    def transform(qkv: np.ndarray) -> np.ndarray:
        q, k, v = np.split(qkv, [hq * d, (hq + hkv) * d])
        return np.concatenate([interleaved_to_half(q, hq, d, d), interleaved_to_half(k, hkv, d, d), v])

    return transform


def _expert_major(experts: int, cols: int, rows: int):
    """HF's input-major expert stack ``[E, cols, rows]`` -> ``SparseMoE``'s ``[E * rows, cols]``."""

    def transform(stack: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(stack.transpose(0, 2, 1)).reshape(experts * rows, cols)

    return transform


def _gate_up(ours: str, theirs: str, hidden: int, inter: int) -> dict[str, WeightSource]:
    return {
        f"{ours}.gate_up_proj.weight": WeightSource(
            [f"{theirs}.gate_proj.weight", f"{theirs}.up_proj.weight"], [(inter, hidden)] * 2
        ),
        f"{ours}.down_proj.weight": WeightSource([f"{theirs}.down_proj.weight"], [(hidden, inter)]),
    }


def weight_sources(c: Llama4Config) -> dict[str, WeightSource]:
    """Every parameter, under the text model's prefix: fused q/k/v (rope rows reordered) and gate/up, the router,
    the experts transposed to expert-major rows."""
    d, hq, hkv, hidden = c.head_dim, c.num_attention_heads, c.num_key_value_heads, c.hidden_size
    p, experts, inter = c.weight_prefix, c.moe_experts, c.moe_intermediate_size
    sources = {
        "model.embed_tokens.weight": WeightSource([f"{p}embed_tokens.weight"], [(c.vocab_size, hidden)]),
        "model.norm.weight": WeightSource([f"{p}norm.weight"], [(hidden,)]),
    }
    if not c.tie_word_embeddings:
        sources["lm_head.weight"] = WeightSource([c.head_name], [(c.vocab_size, hidden)])
    qkv_rows = [hq * d, hkv * d, hkv * d]
    for i in range(c.num_hidden_layers):
        ours, theirs = f"model.layers.{i}", f"{p}layers.{i}"
        attn, theirs_attn = f"{ours}.self_attn", f"{theirs}.self_attn"
        sources[f"{attn}.qkv_proj.weight"] = WeightSource(
            [f"{theirs_attn}.{x}_proj.weight" for x in "qkv"], [(r, hidden) for r in qkv_rows], _qkv_rows(c)
        )
        sources[f"{attn}.o_proj.weight"] = WeightSource([f"{theirs_attn}.o_proj.weight"], [(hidden, hq * d)])
        if c.attention_bias:
            sources[f"{attn}.qkv_proj.bias"] = WeightSource(
                [f"{theirs_attn}.{x}_proj.bias" for x in "qkv"], [(r,) for r in qkv_rows], _qkv_rows(c)
            )
            sources[f"{attn}.o_proj.bias"] = WeightSource([f"{theirs_attn}.o_proj.bias"], [(hidden,)])
        for norm in ("input_layernorm", "post_attention_layernorm"):
            sources[f"{ours}.{norm}.weight"] = WeightSource([f"{theirs}.{norm}.weight"], [(hidden,)])
        ff, theirs_ff = f"{ours}.feed_forward", f"{theirs}.feed_forward"
        if i not in c.moe_layers:
            sources.update(_gate_up(ff, theirs_ff, hidden, c.intermediate_size_mlp))
            continue
        sources[f"{ff}.gate.weight"] = WeightSource([f"{theirs_ff}.router.weight"], [(experts, hidden)])
        sources.update(_gate_up(f"{ff}.shared_expert", f"{theirs_ff}.shared_expert", hidden, c.intermediate_size))
        if c.gguf_layout:  # expert e's gate rows, its up rows, then the next expert's: already expert-major
            each = f"{theirs_ff}.experts"
            sources[f"{ff}.experts.gate_up_proj.weight"] = WeightSource(
                [f"{each}.{e}.{x}_proj.weight" for e in range(experts) for x in ("gate", "up")],
                [(inter, hidden)] * (2 * experts),
            )
            sources[f"{ff}.experts.down_proj.weight"] = WeightSource(
                [f"{each}.{e}.down_proj.weight" for e in range(experts)], [(hidden, inter)] * experts
            )
            continue
        sources[f"{ff}.experts.gate_up_proj.weight"] = WeightSource(
            [f"{theirs_ff}.experts.gate_up_proj"],
            [(experts, hidden, 2 * inter)],
            _expert_major(experts, hidden, 2 * inter),
        )
        sources[f"{ff}.experts.down_proj.weight"] = WeightSource(
            [f"{theirs_ff}.experts.down_proj"], [(experts, inter, hidden)], _expert_major(experts, inter, hidden)
        )
    return sources


# ---------------------------------------------------------------------- GGUF
def _gguf_config(meta) -> dict:
    """llama.cpp's llama4 metadata, and what llama.cpp fixes for the architecture: every 4th layer NoPE, QK-norm,
    8192-token chunks, attention temperature (floor 8192, scale 0.1); llama3 rope scaling comes from rope_freqs."""
    return {
        "model_type": "llama4_text",
        "intermediate_size": meta("expert_feed_forward_length"),
        "intermediate_size_mlp": meta("feed_forward_length"),
        "num_local_experts": meta("expert_count"),
        "num_experts_per_tok": meta("expert_used_count"),
        "interleave_moe_layer_step": meta("interleave_moe_layer_step", 1),
        "no_rope_layer_interval": 4,
        "use_qk_norm": True,
        "attention_chunk_size": 8192,
        "attn_temperature_tuning": True,
        "floor_scale": 8192,
        "attn_scale": 0.1,
        "gguf_layout": True,
    }


GGUF = GGUFSpec(
    ("llama4",),
    "llama4_text",
    block_names={
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "feed_forward.gate_proj",
        "ffn_up": "feed_forward.up_proj",
        "ffn_down": "feed_forward.down_proj",
        "ffn_gate_inp": "feed_forward.router",
        "ffn_gate_shexp": "feed_forward.shared_expert.gate_proj",
        "ffn_up_shexp": "feed_forward.shared_expert.up_proj",
        "ffn_down_shexp": "feed_forward.shared_expert.down_proj",
    },
    config=_gguf_config,
    expert_name=lambda model_type, layer, kind, expert: (
        f"model.layers.{layer}.feed_forward.experts.{expert}.{kind}_proj.weight"
    ),
)
