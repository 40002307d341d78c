"""Tensor-parallel roofline: memory per shard and a decode tok/s bound, from the module llmc would build.

For each shard count and scheme, the plan builds the one-shard module (``llmc.compiler.shard``; no library is
compiled) and sums its parameters' bytes: that is what each GPU holds. Decode reads every weight once per token
except the embedding table (a row gather), so one step moves ``weight bytes - embedding bytes`` plus the KV cache
of the context per shard; the shards read in parallel, so the bound is ``bandwidth / bytes per shard``. The two
allreduces per layer and the logits gather are latency, not bandwidth: their cost is printed apart
(``--allreduce-us`` per collective, NCCL's small-message latency within one NVLink node).

    python bench/gpu/tp_roofline.py [--model llama3-70b] [--shards 1 2 4 8] [--quant q0f16 q4f16_1]
"""

from __future__ import annotations

import argparse
import math

from llmc.compiler.targets import get_target
from llmc.memory import kv_cache_bytes
from llmc.plan import CompileOptions, plan_from_config
from llmc.source import resolve

H100_BANDWIDTH = 3.35e12  # bytes/s, H100 SXM HBM3 (data sheet)
H100_MEMORY = 80e9


def shard_figures(model: str, shards: int, quant: str, context: int) -> dict:
    source = resolve(model)  # an architecture-only preset: no weights are read
    options = CompileOptions(quant=quant, tensor_parallel_shards=shards, context_window=context)
    plan = plan_from_config(source.preset["config"], source, options)
    module = plan.module(get_target("cuda:sm_90a").tvm_target())
    sizes = {name: math.prod(int(d) for d in p.shape) * _bytes(p.dtype) for name, p in module.named_parameters()}
    weights = sum(sizes.values())
    embedding = sum(b for name, b in sizes.items() if name.startswith("model.embed_tokens."))
    config = plan.config
    shard_model = {"num_hidden_layers": config.num_hidden_layers, "head_dim": config.head_dim}
    shard_model["num_key_value_heads"] = config.num_key_value_heads // shards
    kv = kv_cache_bytes(shard_model, plan.dtype, context)
    read = weights - (0 if config.tie_word_embeddings else embedding) + kv
    collectives = 2 * config.num_hidden_layers + 1 if shards > 1 else 0
    return {"weights": weights, "kv": kv, "read": read, "collectives": collectives}


def _bytes(dtype: str) -> float:
    return {"float32": 4, "float16": 2, "bfloat16": 2, "uint32": 4, "uint8": 1, "int8": 1}[dtype]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama3-70b")
    parser.add_argument("--shards", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--quant", nargs="+", default=["q0f16", "q4f16_1"])
    parser.add_argument("--context", type=int, default=4096, help="tokens of KV cache per sequence read per step")
    parser.add_argument("--bandwidth", type=float, default=H100_BANDWIDTH)
    parser.add_argument("--allreduce-us", type=float, default=8.0)
    args = parser.parse_args()
    print(f"{args.model}, batch 1 decode at {args.context} tokens of context, {args.bandwidth / 1e12:.2f} TB/s per GPU")
    print(
        "| quant | shards | weights/shard GB | KV/shard GB | fits 80 GB | bytes/token/shard GB | bound tok/s |"
        " collectives/token | + latency tok/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for quant in args.quant:
        for shards in args.shards:
            f = shard_figures(args.model, shards, quant, args.context)
            seconds = f["read"] / args.bandwidth
            latency = f["collectives"] * args.allreduce_us * 1e-6
            fits = "yes" if f["weights"] + f["kv"] < 0.9 * H100_MEMORY else "no"
            print(
                f"| {quant} | {shards} | {f['weights'] / 1e9:.2f} | {f['kv'] / 1e9:.2f} | {fits} | "
                f"{f['read'] / 1e9:.2f} | {1 / seconds:.0f} | {f['collectives']} | {1 / (seconds + latency):.0f} |"
            )


if __name__ == "__main__":
    main()
