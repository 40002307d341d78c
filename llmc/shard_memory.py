"""The memory of one shard (one device) of a tensor-parallel artifact, for ``llmc inspect``."""

from __future__ import annotations

from llmc.memory import MemoryEstimate


def per_shard_memory(config: dict, memory: MemoryEstimate) -> dict | None:
    """What one shard (one GPU) of a tensor-parallel artifact holds, from ``llmc.memory.estimate``'s figures
    (None for an ordinary artifact): every shard stores parameters of the same shapes, a ``1 / shards`` share of
    the KV heads, and the library's activations (planned for one shard)."""
    shards = int((config.get("tensor_parallel") or {}).get("shards", 1))
    if shards == 1:
        return None
    # stored weights are every shard's; a random-weights artifact describes one shard's (param_specs)
    weights = memory.weights_bytes if config.get("random_weights") else memory.weights_bytes // shards
    kv = memory.kv_cache_bytes // shards
    return {
        "shards": shards,
        "weights_bytes": weights,
        "kv_cache_bytes": kv,
        "activation_bytes": memory.activation_bytes,
        "total_bytes": weights + kv + memory.activation_bytes,
        "lm_head": config["tensor_parallel"].get("lm_head"),
    }
