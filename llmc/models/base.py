"""What every decoder family shares: the exported functions, their specs and the weight-source map.

A family provides a config (``ModelConfig`` fields), a body module ``self.model`` with
``forward(hidden, paged_kv_cache) -> hidden`` and ``embed_tokens``, and ``lm_head`` (or tied
embeddings). The functions below are written once for all families.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache

from llmc.models.attention import AttentionSpec, KVCacheRequest
from llmc.models.layers import gather_rows


@dataclass(frozen=True)
class BuildSizes:
    """What one build is sized for, apart from the architecture: the longest sequence (RoPE tables, KV
    cache), the most tokens one forward takes, the most sequences one batch holds. Every compiled function
    stays symbolic below these bounds; they bound static memory planning."""

    context_window: int = 2048
    prefill_chunk: int = 512
    max_batch_size: int = 8

    def record(self) -> dict[str, int]:
        """The ``llmc-config.json`` fields."""
        return {
            "context_window": self.context_window,
            "prefill_chunk": self.prefill_chunk,
            "max_batch_size": self.max_batch_size,
        }


@dataclass
class ModelConfig:
    """Architecture fields shared by the decoder families (build sizes are ``BuildSizes``)."""

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
    # per-layer attention: HF ``layer_types`` entries ("full_attention" / "sliding_attention")
    layer_types: list[str] = field(default_factory=list)
    sliding_window: int = 0  # tokens a "sliding_attention" layer sees (itself included)
    rotary_dim: int = 0  # RoPE on the first rotary_dim of each head (0: all of head_dim)

    @classmethod
    def from_record(cls, model: dict):
        """The config a ``llmc-config.json`` ``model`` section records (fields older llmc wrote there, such as
        build sizes, are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in model.items() if key in names})

    def attention_kinds(self) -> list[str]:
        """The KV cache's per-layer attention kinds: ``mha`` or ``mha_sliding``."""
        types = self.layer_types or ["full_attention"] * self.num_hidden_layers
        return ["mha_sliding" if t == "sliding_attention" else "mha" for t in types]

    def max_prefill_chunk(self) -> int | None:
        """The largest prefill chunk the attention is exact for: TVM's ragged (in-chunk) attention has no
        window, so a chunk must be shorter than the sliding window; and TVM's sliding kernels return NaN
        for a query row that sees no cached key (a chunk as long as the window), so one shorter still.
        An evicting cache needs the same bound: it keeps ``window - 1`` tokens and writes a chunk into
        them before sliding (TVM computes the chunk's slots after the slide)."""
        return self.sliding_window - 1 if "mha_sliding" in self.attention_kinds() else None


def sliding_layer_types(config: dict, num_layers: int) -> list[str]:
    """HF ``layer_types`` of a config.json, or every layer sliding when only ``sliding_window`` is set."""
    if config.get("layer_types"):
        return list(config["layer_types"])
    window = config.get("sliding_window")
    if window and config.get("use_sliding_window", True):
        return ["sliding_attention"] * num_layers
    return []


@dataclass
class WeightSource:
    """How one module parameter is made from checkpoint tensors: concatenated along axis 0, then
    ``transform`` (transpose, norm offset, permutation, ...) applied to the result."""

    names: list[str]
    shapes: list[tuple[int, ...]]
    transform: Callable[[np.ndarray], np.ndarray] | None = None
    # room for tensor-parallel sharding annotations (axis to split over workers); not used yet
    shard_axis: int | None = None

    def make(self, arrays: list[np.ndarray]) -> np.ndarray:
        array = concat_sources(arrays)
        return self.transform(array) if self.transform is not None else array


@dataclass(frozen=True)
class GGUFSpec:
    """How a family reads a GGUF file: its ``general.architecture`` names, tensor names that differ from
    llama.cpp's Llama naming, extra config fields from metadata and tensor fix-ups to HF conventions.

    A GGUF tensor ``blk.N.KIND.weight`` (or ``.bias``) becomes ``{layer_prefix}.N.{HF suffix}.weight``
    (``block_names`` over llama.cpp's Llama names); a global one (``token_embd``, ``output_norm``,
    ``output``, ...) becomes ``global_names``' HF module path, over Llama's. Biases come with their weights."""

    architectures: tuple[str, ...]
    model_type: str
    block_names: dict[str, str] = field(default_factory=dict)  # GGUF block tensor -> HF suffix
    # meta(key, default) -> extra config.json fields; ``meta.has(gguf_tensor_name)`` says whether the file has it
    config: Callable[[Callable], dict] | None = None
    fix_tensor: Callable[[str, np.ndarray, dict], np.ndarray] | None = None  # (HF name, array, config)
    # MoE: (model_type, layer, "gate"/"up"/"down", expert) -> the HF name of one expert's slice of a
    # ``ffn_{gate,up,down}_exps`` tensor (llama.cpp stores each kind's experts as one 3-D tensor)
    expert_name: Callable[[str, int, str, int], str] | None = None
    global_names: dict[str, str] = field(default_factory=dict)  # GGUF global tensor -> HF module path
    layer_prefix: str = "model.layers"  # the HF name of the layer list
    # GGUF block tensors stacked by llama.cpp's converter from one HF tensor per row (StableLM's per-head
    # QK-norms): KIND -> HF suffix with ``{j}`` for the row; each row is offered under its own HF name
    row_names: dict[str, str] = field(default_factory=dict)


def required_ints(hf: dict, source: str, keys: tuple[str, ...]) -> None:
    from llmc.errors import ConfigError

    missing = [key for key in keys if not isinstance(hf.get(key), int)]
    if missing:
        raise ConfigError(f"{source}: config.json lacks integer field(s) {', '.join(missing)}.")


def positive_int(hf: dict, key: str, source: str, default=None) -> int:
    """config.json's ``key`` (or ``default``), refused unless a positive integer."""
    from llmc.errors import ConfigError

    value = hf.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{source}: config field {key} is {value!r}; expected a positive integer.")
    return value


def rope_settings(hf: dict) -> tuple[float, dict]:
    """``(rope_theta, rope parameters without theta)`` from the transformers 4 or 5 layout."""
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    if "full_attention" in rope and isinstance(rope["full_attention"], dict):  # per-layer-type (Gemma 3, tf 5)
        rope = dict(rope["full_attention"])
    theta = float(rope.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    if "type" in rope and "rope_type" not in rope:
        rope["rope_type"] = rope.pop("type")
    if rope.get("rope_type") == "su":  # Phi-3's old name for longrope
        rope["rope_type"] = "longrope"
    return theta, rope


class CausalLMBase(nn.Module):
    """Exported entry points shared by all families (``self.model``, ``lm_head`` set by subclasses).

    Target-free: the paged KV cache is exported as a request (``kv_cache_request``) and the compiler
    (``llmc.kernels.dispatch``) chooses its kernels, and any other kernel, by target."""

    config: ModelConfig
    sizes: BuildSizes = BuildSizes()  # set by each family's __init__ (RoPE tables, symbolic upper bounds)
    dtype: str = "float32"
    rope_in_model: bool = False  # True: the module applies RoPE itself (per-layer bases); the cache does not
    # a build option for the compiler's kernel dispatch, never read by the model: llmc's CPU attention/RoPE/SiLU
    # kernels on CPU targets (True), or TVM's own (reference builds, ``--cpu-kernels float``)
    cpu_kernels: bool = True
    # a build option: also export ``batch_hidden`` (the final hidden state at given positions: embeddings)
    export_hidden: bool = False
    # a build output (``llmc.compiler.build``): the target's cache can evict (every layer one sliding window;
    # ``KVCacheRequest.evictable_window``) and the runtime slides each sequence's window
    sliding_eviction: bool = False
    # a build output: TVM's cache has sliding-window layers ("mha_sliding"; not when llmc's kernels mask windows)
    sliding_cache: bool = False

    def use_tvm_cpu_kernels(self) -> None:
        """Reference builds (``--cpu-kernels float``): TVM's own kernels for attention, RoPE and SiLU."""
        self.cpu_kernels = False

    def to(self, dtype: str | None = None) -> None:
        super().to(dtype=dtype)
        if dtype is not None:
            self.dtype = dtype

    # ------------------------------------------------------------------ attention spec
    def attention_softcap(self) -> float:
        """Attention logit soft-capping of every layer (0: none); families that cap override it."""
        return 0.0

    def rope_owner(self) -> str:
        """Who rotates q/k: ``cache`` (its attention kernels), ``model`` (this module) or ``none``."""
        return "model" if self.rope_in_model else "cache"

    def attention_specs(self) -> list[AttentionSpec]:
        """The per-layer attention the KV cache is built for."""
        c = self.config
        softcap, rope = self.attention_softcap(), self.rope_owner()
        return [
            AttentionSpec(
                num_q_heads=c.num_attention_heads,
                num_kv_heads=c.num_key_value_heads,
                head_dim=c.head_dim,
                window=c.sliding_window if kind == "mha_sliding" else 0,
                softcap=softcap,
                rope=rope,
            )
            for kind in c.attention_kinds()
        ]

    def kv_cache_request(self) -> KVCacheRequest:
        c = self.config
        return KVCacheRequest(
            layers=tuple(self.attention_specs()),
            dtype=self.dtype,
            rope_theta=c.rope_theta,
            rope_scaling={} if self.rope_in_model else dict(c.rope_scaling),
            rotary_dim=c.rotary_dim or c.head_dim,
        )

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

    def batch_hidden(self, input_embeds: Tensor, hidden_positions: Tensor, paged_kv_cache: PagedKVCache):
        """``batch_prefill`` without the head: the final (normed) hidden state at each position, float32."""
        hidden = self.model(input_embeds, paged_kv_cache)
        hidden = gather_rows(op.reshape(hidden, (hidden.shape[1], hidden.shape[2])), hidden_positions)
        return (hidden.astype("float32") if hidden.dtype != "float32" else hidden), paged_kv_cache

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
        """The cache request (``llmc.models.attention``); the compiler turns it into the target's cache."""
        sizes = (max_batch_size, max_total_seq_len, prefill_chunk_size, page_size, support_sliding_window)
        return self.kv_cache_request().emit(*sizes)

    def get_default_spec(self) -> dict:
        hidden, dtype = self.config.hidden_size, self.dtype
        packed = {"param_mode": "packed", "effect_mode": "none"}
        kv = nn.spec.Object(object_type=PagedKVCache)
        spec = {
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
        if self.export_hidden:  # last: the other functions' kernel names stay as they are
            spec["batch_hidden"] = {
                "input_embeds": nn.spec.Tensor([1, "seq_len", hidden], dtype),
                "hidden_positions": nn.spec.Tensor(["batch_size"], "int32"),
                "paged_kv_cache": kv,
                "$": packed,
            }
        return spec

    def symbolic_upper_bounds(self) -> dict[str, int]:
        """Upper bounds of the symbolic dims, so memory can be planned statically."""
        return {"seq_len": self.sizes.prefill_chunk, "batch_size": self.sizes.max_batch_size}


def concat_sources(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
