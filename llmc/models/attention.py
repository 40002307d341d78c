"""The target-free paged-KV-cache request a model exports: per-layer attention specs, no kernels.

``create_paged_kv_cache`` exports one ``call_pure_packed(REQUEST_FUNC, sizes, spec_json)``; the compiler
(``llmc.kernels.dispatch``) replaces it with TVM's ``TIRPagedKVCache`` whose kernels suit the target.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import tvm
from tvm import relax
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache

REQUEST_FUNC = "llmc.paged_kv_cache_request"  # the placeholder's packed-function name (never run)


@dataclass(frozen=True)
class AttentionSpec:
    """One layer's attention as the KV cache sees it."""

    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    window: int = 0  # tokens a sliding layer sees (itself included); 0: full attention
    softcap: float = 0.0  # scores -> cap * tanh(scores / cap) before the softmax (Gemma 2); 0: none
    rope: str = "cache"  # who rotates q/k: "cache" (the attention kernels) or "model" ("none": no RoPE)
    # attention sinks (GPT-OSS): each head's softmax denominator gets one more term, e^sink, with no value. The model
    # puts after each KV group's query heads a control head (``llmc.models.control_heads``): [the group's sink
    # logits, 1 if this layer is masked (``window`` or ``chunk``) else 0, zeros]; ``num_q_heads`` counts the other
    # heads. A cache where any layer has sinks or a chunk has control heads in every layer
    sinks: bool = False
    # chunked attention (Llama 4): a query at p sees the keys in [p - p mod chunk, p]; 0: none. Masked by the
    # kernels by key position, the layer flagged in its control heads
    chunk: int = 0

    @property
    def controlled(self) -> bool:
        """Whether this layer needs control heads in the cache's queries."""
        return self.sinks or bool(self.chunk)

    @property
    def kind(self) -> str:
        """TVM's attention kind: ``mha`` or ``mha_sliding``."""
        return "mha_sliding" if self.window else "mha"


@dataclass(frozen=True)
class KVCacheRequest:
    """Everything a paged KV cache needs from the model: per-layer specs, the cache's RoPE and the dtype."""

    layers: tuple[AttentionSpec, ...]
    dtype: str = "float32"
    rope_theta: float = 10000.0
    rope_scaling: dict = field(default_factory=dict)  # the cache's rope variant ({} when the model rotates)
    rotary_dim: int = 0  # RoPE on the first rotary_dim of each head

    def evictable_window(self) -> int:
        """The window of a cache that may evict (free pages as a sequence slides), or 0.

        TVM 0.27 slides a sequence only in its whole-cache sliding mode: every layer one window, RoPE applied
        by the cache inline at positions within the window (relative positions are kept) over the full head.
        Whether a target's kernels can run such a cache is the dispatcher's call."""
        first = self.layers[0]
        every_layer_sliding = all(spec.window and spec.window == first.window for spec in self.layers)
        cache_rope = all(spec.rope == "cache" for spec in self.layers)
        full_rotary = self.rotary_dim == first.head_dim
        return first.window if every_layer_sliding and cache_rope and full_rotary else 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> KVCacheRequest:
        fields = json.loads(text)
        return cls(**{**fields, "layers": tuple(AttentionSpec(**layer) for layer in fields["layers"])})

    def emit(self, *sizes) -> PagedKVCache:
        """The placeholder call for ``create_paged_kv_cache(max_batch_size, max_total_seq_len,
        prefill_chunk_size, page_size, support_sliding_window)`` (symbolic sizes)."""
        call = relax.call_pure_packed(
            REQUEST_FUNC,
            relax.ShapeExpr(list(sizes)),
            tvm.ir.StringImm(self.to_json()),
            ty_args=relax.AnyType(),
        )
        return PagedKVCache(_expr=call, _name="paged_kv_cache")
