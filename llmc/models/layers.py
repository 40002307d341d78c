"""Layers shared by the families: an embedding that can also act as the (tied) LM head, and a row gather."""

from __future__ import annotations

import math

import numpy as np
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op


def gather_rows(table: Tensor, indices: Tensor, name: str = "take") -> Tensor:
    """``table[indices]`` for a 1-D index tensor, as one TE kernel (no out-of-bounds fast path)."""

    def compute(t: te.Tensor, idx: te.Tensor):
        return te.compute((idx.shape[0], t.shape[1]), lambda i, j: t[idx[i], j], name=name)

    return op.tensor_expr_op(compute, name_hint=name, args=[table, indices])


class Embedding(nn.Module):
    """Token embedding; ``lm_head_forward`` reuses the table as the output projection (tied weights)."""

    def __init__(self, num: int, dim: int):
        self.num, self.dim = num, dim
        self.weight = nn.Parameter((num, dim))

    def forward(self, input_ids: Tensor) -> Tensor:
        return gather_rows(self.weight, input_ids)

    def lm_head_forward(self, hidden: Tensor) -> Tensor:
        return op.matmul(hidden, op.permute_dims(self.weight))


def swiglu(gate_up: Tensor) -> Tensor:
    """``silu(gate) * up`` of a fused ``[..., 2 * width]`` gate/up projection (CPU builds swap in one fused
    kernel: ``llmc.kernels.dispatch``)."""
    gate, up = op.split(gate_up, 2, axis=-1)
    return op.silu(gate) * up


# ---------------------------------------------------------------------- rotary embeddings
IN_CACHE_ROPE_TYPES = ("default", "llama3")  # rope variants the KV cache's own kernels apply


def rope_type(rope: dict) -> str:
    return rope.get("rope_type", rope.get("type", "default")) or "default"


def rope_inv_freq(rope: dict, theta: float, rotary_dim: int, max_position: int, context: int) -> tuple[list, float]:
    """Inverse frequencies (``rotary_dim // 2``) and the cos/sin scale for a HF rope config.

    Types: default, linear, dynamic, yarn, longrope, llama3. The table is static; transformers changes two
    types with the sequence length (the largest position + 1 of a forward call):
    - ``dynamic`` (NTK) keeps the default frequencies up to ``max_position_embeddings`` and raises the base
      for longer sequences (recomputed per call, cached keys keep theirs). Static frequencies are exact only
      up to there, so a ``context`` past ``max_position_embeddings`` is refused (``ConfigError``).
    - ``longrope`` uses its short factors up to ``original_max_position_embeddings`` and its long factors for
      longer sequences. The table holds the long factors when ``context`` exceeds that length (then exact
      for sequences longer than it, as a long-context model is used), the short ones otherwise.
    """
    kind = rope_type(rope)
    exponents = np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim
    base_freq = 1.0 / theta**exponents
    original = rope.get("original_max_position_embeddings") or max_position
    if kind == "dynamic" and context > max_position:
        from llmc.errors import ConfigError

        raise ConfigError(
            f"rope type 'dynamic' rescales its frequencies for sequences longer than max_position_embeddings "
            f"({max_position}) in transformers, per sequence length; llmc's frequencies are static, so a context "
            f"window of {context} would differ past that length. Compile with --context-window {max_position} "
            "or less."
        )
    if kind in ("default", "dynamic"):
        return base_freq.tolist(), 1.0
    if kind == "linear":
        return (base_freq / rope["factor"]).tolist(), 1.0
    if kind == "llama3":
        low_wavelen = original / rope["low_freq_factor"]
        high_wavelen = original / rope["high_freq_factor"]
        wavelen = 2 * math.pi / base_freq
        scaled = np.where(wavelen > low_wavelen, base_freq / rope["factor"], base_freq)
        smooth = (original / wavelen - rope["low_freq_factor"]) / (rope["high_freq_factor"] - rope["low_freq_factor"])
        smoothed = (1 - smooth) * scaled / rope["factor"] + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, smoothed, scaled).tolist(), 1.0
    if kind == "yarn":
        return _yarn(rope, theta, rotary_dim, max_position, original, base_freq)
    if kind == "longrope":
        factor = rope.get("factor") or max_position / original
        scale = rope.get("attention_factor")
        if scale is None:
            scale = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
        ext = np.asarray(rope["long_factor"] if context > original else rope["short_factor"], dtype=np.float64)
        return (base_freq / ext).tolist(), float(scale)
    raise ValueError(f"rope type {kind!r}")


def _yarn(rope: dict, theta: float, dim: int, max_position: int, original: int, base_freq) -> tuple[list, float]:
    factor = rope.get("factor") or max_position / original

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    scale = rope.get("attention_factor")
    if scale is None:
        m, m_all = rope.get("mscale"), rope.get("mscale_all_dim")
        scale = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(rope.get("beta_fast") or 32), correction_dim(rope.get("beta_slow") or 1)
    if rope.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    inv = (base_freq / factor) * (1 - extrapolation) + base_freq * extrapolation
    return inv.tolist(), float(scale)


def apply_rope(
    qkv: Tensor, positions: Tensor, inv_freq: list, scale: float, rope_heads: int, rotary_dim: int, name: str = "rope"
) -> Tensor:
    """RoPE (HF rotate-half) on the first ``rope_heads`` heads of ``qkv`` [b, s, heads, d] at the
    sequence ``positions`` [b * s]; the frequencies are a compile-time constant table."""
    half = rotary_dim // 2
    table = Tensor.from_const(np.asarray(inv_freq, dtype="float32"))

    def compute(x: te.Tensor, pos: te.Tensor, freq: te.Tensor):
        _, s, _, _ = x.shape

        def element(b, t, h, j):
            value = x[b, t, h, j]
            angle = pos[b * s + t].astype("float32") * freq[tirx.if_then_else(j < half, j, j - half)]
            cos = tirx.cos(angle) * tirx.const(scale, "float32")
            sin = tirx.sin(angle) * tirx.const(scale, "float32")
            partner = tirx.if_then_else(
                j < half, -x[b, t, h, tirx.min(j + half, rotary_dim - 1)], x[b, t, h, tirx.max(j - half, 0)]
            )
            rotated = (value.astype("float32") * cos + partner.astype("float32") * sin).astype(x.dtype)
            return tirx.if_then_else(tirx.all(h < rope_heads, j < rotary_dim), rotated, value)

        return te.compute(x.shape, element, name=name)

    return op.tensor_expr_op(compute, name_hint=name, args=[qkv, positions, table])


def gelu_tanh_multiply(gate_up: Tensor, width: int) -> Tensor:
    """``gelu_tanh(gate) * up`` of a fused ``[..., 2 * width]`` projection (Gemma's MLP)."""
    gate, up = op.split(gate_up, 2, axis=-1)
    return op.gelu(gate, approximate="tanh") * up


class Norm(nn.Module):
    """RMSNorm or LayerNorm over the last axis (a Gemma ``(1 + w)`` weight is offset at conversion)."""

    def __init__(self, dim: int, eps: float, kind: str = "rms", bias: bool = False):
        self.kind, self.eps = kind, eps
        self.weight = nn.Parameter((dim,))
        if bias:
            self.bias = nn.Parameter((dim,))
        else:
            self.bias = None

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "rms":
            return op.rms_norm(x, self.weight, axes=[-1], epsilon=self.eps)
        bias = self.bias if self.bias is not None else op.zeros((self.weight.shape[0],), self.weight.dtype)
        return op.layer_norm(x, [self.weight.shape[0]], self.weight, bias, eps=self.eps)


def pre_norm_residual(layer: nn.Module, hidden: Tensor, paged_kv_cache, layer_id: int, ffn: nn.Module) -> Tensor:
    """A pre-norm decoder layer's forward: ``h + attn(input_norm(h))``, then ``h + ffn(post_attention_norm(h))``
    (``layer`` has ``self_attn``, ``input_layernorm`` and ``post_attention_layernorm``; ``ffn``: its MLP or MoE)."""
    hidden = hidden + layer.self_attn(layer.input_layernorm(hidden), paged_kv_cache, layer_id)
    return hidden + ffn(layer.post_attention_layernorm(hidden))


class DecoderStack(nn.Module):
    """The token embedding, ``make_layer(config, i)`` for every layer, and the final RMSNorm (the HF names
    ``embed_tokens``, ``layers.N``, ``norm``)."""

    def __init__(self, c, make_layer):
        self.embed_tokens = Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList([make_layer(c, i) for i in range(c.num_hidden_layers)])
        self.norm = nn.RMSNorm(c.hidden_size, -1, c.rms_norm_eps, bias=False)

    def forward(self, hidden: Tensor, paged_kv_cache) -> Tensor:
        for layer_id, layer in enumerate(self.layers):
            hidden = layer(hidden, paged_kv_cache, layer_id)
        return self.norm(hidden)


def set_module_rope(stack: DecoderStack, config, sizes, rotary_dim: int, nope_layers=()) -> None:
    """For models that rotate q/k themselves: one RoPE table (``rope_inv_freq``) on every layer's attention
    (``self_attn.rope``), None on ``nope_layers``."""
    rope = rope_inv_freq(
        config.rope_scaling, config.rope_theta, rotary_dim, config.max_position_embeddings, sizes.context_window
    )
    for layer_id, layer in enumerate(stack.layers):
        layer.self_attn.rope = None if layer_id in nope_layers else rope
