"""What every decoder family shares: the exported functions, their specs and the weight-source map.

A family provides a config (``ModelConfig`` fields), a body module ``self.model`` with
``forward(hidden, paged_kv_cache) -> hidden`` and ``embed_tokens``, and ``lm_head`` (or tied
embeddings). The functions below are written once for all families.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
from tvm import relax, te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode, TIRPagedKVCache

from llmc.models.cpu_attention import llmc_cpu_attention
from llmc.models.layers import gather_rows


@dataclass
class ModelConfig:
    """Architecture fields shared by the decoder families, plus compile-time sizes."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict = field(default_factory=dict)
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    o_proj_bias: bool = False
    mlp_bias: bool = False
    max_position_embeddings: int = 2048
    context_window: int = 2048
    prefill_chunk: int = 512
    max_batch_size: int = 8


@dataclass
class WeightSource:
    """How one module parameter is made from checkpoint tensors (concatenated along axis 0)."""

    names: list[str]
    shapes: list[tuple[int, ...]]


class CausalLMBase(nn.Module):
    """Exported entry points shared by all families (``self.model``, ``lm_head`` set by subclasses)."""

    config: ModelConfig
    dtype: str = "float32"
    cpu_kernels: bool = True  # llmc's CPU attention/RoPE/SiLU kernels on llvm targets; False: TVM's own

    def use_tvm_cpu_kernels(self) -> None:
        """Reference builds (``--cpu-matmul float``): TVM's own kernels for attention, RoPE and SiLU."""
        self.cpu_kernels = False
        for layer in self.model.layers:
            if hasattr(layer.mlp, "fast_silu"):
                layer.mlp.fast_silu = False

    def to(self, dtype: str | None = None) -> None:
        super().to(dtype=dtype)
        if dtype is not None:
            self.dtype = dtype

    # ------------------------------------------------------------------ pieces
    def get_logits(self, hidden: Tensor) -> Tensor:
        if self.config.tie_word_embeddings:
            logits = self.model.embed_tokens.lm_head_forward(hidden)
        else:
            logits = self.lm_head(hidden)
        return logits.astype("float32") if logits.dtype != "float32" else logits

    @staticmethod
    def _last_token(hidden: Tensor) -> Tensor:
        def index(x: te.Tensor):
            b, s, d = x.shape
            return te.compute((b, 1, d), lambda i, _, k: x[i, s - 1, k], name="index")

        return op.tensor_expr_op(index, name_hint="index", args=[hidden])

    # ------------------------------------------------------------------ exported functions
    def embed(self, input_ids: Tensor):
        return self.model.embed_tokens(input_ids)

    def prefill(self, input_embed: Tensor, paged_kv_cache: PagedKVCache):
        hidden = self.model(input_embed, paged_kv_cache)
        return self.get_logits(self._last_token(hidden)), paged_kv_cache

    def decode(self, input_embed: Tensor, paged_kv_cache: PagedKVCache):
        return self.get_logits(self.model(input_embed, paged_kv_cache)), paged_kv_cache

    def batch_prefill(self, input_embeds: Tensor, logit_positions: Tensor, paged_kv_cache: PagedKVCache):
        hidden = self.model(input_embeds, paged_kv_cache)
        hidden = gather_rows(op.reshape(hidden, (hidden.shape[1], hidden.shape[2])), logit_positions)
        return self.get_logits(op.reshape(hidden, (1, hidden.shape[0], hidden.shape[1]))), paged_kv_cache

    def batch_decode(self, input_embeds: Tensor, paged_kv_cache: PagedKVCache):
        return self.get_logits(self.model(input_embeds, paged_kv_cache)), paged_kv_cache

    def batch_verify(self, input_embeds: Tensor, paged_kv_cache: PagedKVCache):
        return self.get_logits(self.model(input_embeds, paged_kv_cache)), paged_kv_cache

    def create_paged_kv_cache(
        self,
        max_batch_size: tirx.Var,
        max_total_seq_len: tirx.Var,
        prefill_chunk_size: tirx.Var,
        page_size: tirx.Var,
        support_sliding_window: tirx.Var,
    ) -> PagedKVCache:
        cpu = self.target.kind.name == "llvm" and self.cpu_kernels
        with llmc_cpu_attention() if cpu else contextlib.nullcontext():
            return self._paged_kv_cache(
                max_batch_size, max_total_seq_len, prefill_chunk_size, page_size, support_sliding_window
            )

    def _paged_kv_cache(self, max_batch_size, max_total_seq_len, prefill_chunk_size, page_size, support_sliding_window):
        c = self.config
        return TIRPagedKVCache(
            attn_kind="mha",
            max_batch_size=max_batch_size,
            max_total_seq_len=max_total_seq_len,
            prefill_chunk_size=prefill_chunk_size,
            page_size=page_size,
            support_sliding_window=support_sliding_window,
            layer_partition=relax.ShapeExpr([0, c.num_hidden_layers]),
            num_hidden_layers=c.num_hidden_layers,
            num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads,
            qk_head_dim=c.head_dim,
            v_head_dim=c.head_dim,
            mla_original_qk_head_dim=0,
            mla_original_v_head_dim=0,
            rope_mode=RopeMode.NORMAL,
            rope_scale=1,
            rope_theta=c.rope_theta,
            rope_scaling=c.rope_scaling,
            rope_ext_factors=relax.prim_value(0),
            rotary_dim=c.head_dim,
            enable_disaggregation=False,
            dtype=self.dtype,
            target=self.target,
        )

    def get_default_spec(self) -> dict:
        hidden, dtype = self.config.hidden_size, self.dtype
        packed = {"param_mode": "packed", "effect_mode": "none"}
        kv = nn.spec.Object(object_type=PagedKVCache)
        return {
            "embed": {"input_ids": nn.spec.Tensor(["seq_len"], "int32"), "$": packed},
            "prefill": {
                "input_embed": nn.spec.Tensor([1, "seq_len", hidden], dtype),
                "paged_kv_cache": kv,
                "$": packed,
            },
            "decode": {"input_embed": nn.spec.Tensor([1, 1, hidden], dtype), "paged_kv_cache": kv, "$": packed},
            "batch_prefill": {
                "input_embeds": nn.spec.Tensor([1, "seq_len", hidden], dtype),
                "logit_positions": nn.spec.Tensor(["batch_size"], "int32"),
                "paged_kv_cache": kv,
                "$": packed,
            },
            "batch_decode": {
                "input_embeds": nn.spec.Tensor(["batch_size", 1, hidden], dtype),
                "paged_kv_cache": kv,
                "$": packed,
            },
            "batch_verify": {
                "input_embeds": nn.spec.Tensor([1, "seq_len", hidden], dtype),
                "paged_kv_cache": kv,
                "$": packed,
            },
            "create_paged_kv_cache": {
                "max_batch_size": int,
                "max_total_seq_len": int,
                "prefill_chunk_size": int,
                "page_size": int,
                "support_sliding_window": int,
                "$": {"param_mode": "none", "effect_mode": "none"},
            },
        }

    def symbolic_upper_bounds(self) -> dict[str, int]:
        """Upper bounds of the symbolic dims, so memory can be planned statically."""
        c = self.config
        return {"seq_len": c.prefill_chunk, "batch_size": c.max_batch_size}


def concat_sources(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
