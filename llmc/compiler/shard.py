"""Tensor parallelism at build time: one module (and one library) that every shard runs on its slice.

``--tensor-parallel-shards N`` builds the Llama family as Megatron-style shards: the fused q/k/v and
gate/up projections are split by output rows (column-parallel: each shard owns ``heads / N`` query heads,
``kv_heads / N`` KV heads and ``intermediate / N`` MLP columns, MoE experts split the same way), ``o_proj``
and ``down_proj`` by input columns (row-parallel), and the partial outputs of attention and of the MLP are
summed by one ``ccl.allreduce`` each. An untied LM head is split by vocabulary rows and its logits gathered
(``ccl.allgather``); a tied head stays whole on every shard, as do embeddings, norms and routers. The
module is the family's own, built from a per-shard config (heads, KV heads and widths divided), so the KV
cache each shard creates holds only its heads. ``shard_arrays`` cuts a full checkpoint tensor into the N
per-shard arrays the module loads.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from llmc.errors import ConfigError
from llmc.models.base import ModelConfig

# row-parallel biases are added once: shard 0 holds them, the other shards zeros
ROW_PARALLEL = ("self_attn.o_proj", "mlp.down_proj")


def check_shards(family, config: ModelConfig, shards: int, source: str) -> None:
    """Refuse a shard count the architecture cannot be split by, naming the field and the counts that work."""
    if shards == 1:
        return
    if shards < 1:
        raise ConfigError(f"--tensor-parallel-shards {shards} must be a positive integer.")
    from llmc.models.llama import LlamaForCausalLM

    if not issubclass(family.module_class, LlamaForCausalLM):
        raise ConfigError(
            f"{source}: --tensor-parallel-shards supports the Llama-shaped families (llama, qwen2, qwen3, mistral, "
            f"phi3, mixtral, qwen3_moe), not {config.model_type}; drop the option."
        )
    if getattr(config, "qk_norm", "") == "all":
        raise ConfigError(
            f"{source}: {config.model_type} normalises q and k over all heads at once, which shards cannot split; "
            "drop --tensor-parallel-shards."
        )
    fields = {
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "intermediate_size": config.intermediate_size,
    }
    if getattr(config, "moe_experts", 0):
        fields["moe_intermediate_size"] = config.moe_intermediate_size
    for name, value in fields.items():
        if value % shards:
            counts = [n for n in range(2, 9) if all(v % n == 0 for v in fields.values())]
            hint = f"shard counts that divide them all: {', '.join(map(str, counts))}" if counts else "use 1"
            raise ConfigError(f"{source}: --tensor-parallel-shards {shards} does not divide {name} ({value}); {hint}.")


def shard_config(config: ModelConfig, shards: int) -> ModelConfig:
    """The config one shard's module is built from: heads, KV heads and MLP widths divided by ``shards``."""
    changes = {
        "num_attention_heads": config.num_attention_heads // shards,
        "num_key_value_heads": config.num_key_value_heads // shards,
        "intermediate_size": config.intermediate_size // shards,
    }
    if getattr(config, "moe_experts", 0):
        changes["moe_intermediate_size"] = config.moe_intermediate_size // shards
    return dataclasses.replace(config, **changes)


def gathers_lm_head(config: ModelConfig, shards: int) -> bool:
    """Whether the LM head is split by vocabulary rows (an untied head whose vocabulary the shards divide)."""
    return shards > 1 and not config.tie_word_embeddings and config.vocab_size % shards == 0


_REDUCED: dict[type, type] = {}


def _all_reduced(module: nn.Module) -> None:
    """Make ``module``'s output the sum over shards (its class swapped for a subclass, so parameter names and
    later module rewrites, such as quantization swapping its Linear children, are unaffected)."""
    base = type(module)
    if base not in _REDUCED:

        def forward(self, *args, **kwargs):
            return op.ccl_allreduce(base.forward(self, *args, **kwargs), "sum")

        _REDUCED[base] = type(f"AllReduced{base.__name__}", (base,), {"forward": forward})
    module.__class__ = _REDUCED[base]


def _gather_vocab(logits: Tensor, shards: int) -> Tensor:
    """``[b, s, vocab / N]`` per shard -> ``[b, s, vocab]`` on every shard (allgather concatenates axis 0)."""
    rows = op.permute_dims(logits, [2, 0, 1])
    return op.permute_dims(op.ccl_allgather(rows, shards), [1, 2, 0])


_GATHERED: dict[type, type] = {}


def shard_module(module: nn.Module, shards: int) -> None:
    """Turn a module built from ``shard_config`` into one shard of the whole: an allreduce after every
    attention and MLP block, and a vocabulary-split LM head whose logits are gathered."""
    config = module.config
    for layer in module.model.layers:
        _all_reduced(layer.self_attn)
        _all_reduced(layer.mlp)
    if gathers_lm_head(config, shards):
        module.lm_head = nn.Linear(config.hidden_size, config.vocab_size // shards, bias=False)
        base = type(module)
        if base not in _GATHERED:

            def get_logits(self, hidden):
                return _gather_vocab(base.get_logits(self, hidden), shards)

            _GATHERED[base] = type(f"VocabGathered{base.__name__}", (base,), {"get_logits": get_logits})
        module.__class__ = _GATHERED[base]


# ---------------------------------------------------------------------- weights
def shard_arrays(name: str, array: np.ndarray, config: ModelConfig, shards: int) -> list[np.ndarray]:
    """The ``shards`` slices of one full module parameter (float, before quantization), in shard order."""
    parts = name.split(".")
    kind = ".".join(parts[-3:-1])  # e.g. "self_attn.qkv_proj", "mlp.down_proj", "experts.gate_up_proj"
    is_bias = parts[-1] == "bias"
    d = config.head_dim
    if kind == "self_attn.qkv_proj":
        q, k, v = np.split(
            array, [config.num_attention_heads * d, (config.num_attention_heads + config.num_key_value_heads) * d]
        )
        return [
            np.concatenate([qs, ks, vs]) for qs, ks, vs in zip(*(np.split(x, shards) for x in (q, k, v)), strict=True)
        ]
    if kind == "mlp.gate_up_proj":
        gate, up = np.split(array, 2)
        return [np.concatenate([g, u]) for g, u in zip(np.split(gate, shards), np.split(up, shards), strict=True)]
    if kind in ROW_PARALLEL:
        if is_bias:
            return [array] + [np.zeros_like(array)] * (shards - 1)
        return [np.ascontiguousarray(x) for x in np.split(array, shards, axis=1)]
    if kind == "experts.gate_up_proj":  # [E * 2 * inter, hidden]: expert e's gate rows, then its up rows
        experts = config.moe_experts
        stacked = array.reshape(experts, 2, config.moe_intermediate_size, -1)
        return [x.reshape(-1, array.shape[1]) for x in np.split(stacked, shards, axis=2)]
    if kind == "experts.down_proj":  # [E * hidden, inter]
        return [np.ascontiguousarray(x) for x in np.split(array, shards, axis=1)]
    if name == "lm_head.weight" and gathers_lm_head(config, shards):
        return np.split(array, shards)
    return [array] * shards


def preshard_name(index: int, shard: int, shards: int) -> str:
    """TVM's pre-sharded tensor-cache name (``runtime.disco.ShardLoaderLoadAllPresharded`` reads these)."""
    return f"param_{index}_shard-{shard + 1}-of-{shards}"
