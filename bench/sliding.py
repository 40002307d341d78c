"""Sliding-window benchmark: one all-sliding (Mistral-style) model, its KV cache evicting or masking only.

A random Mistral-shaped checkpoint (hidden 512, 4 layers, 8 query / 2 KV heads of 64, window --window) is
compiled once for llvm (q0f32). The same library runs two ways on a sequence of --length tokens (prompt of
--length - --decode tokens prefilled in chunks, then --decode single-token steps):
- evicting: the Engine enables TVM's sliding window per sequence: the cache keeps window - 1 tokens, RoPE
  inline in llmc's attention kernels (a cos/sin table per kernel call);
- masking only: a cache created without sliding (what the C++ and web runtimes create): every token stays
  cached, RoPE applied when keys are stored, each row masked to its window.
Reports prefill and decode tok/s, the KV pages in use at the end and the logits' largest difference between
the two (they compute the same model); medians of --rounds runs, the two caches alternated. Writes
bench/results/sliding-<date>.json and .md.

usage: python bench/sliding.py [--window 512] [--length 2048] [--decode 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from report import write_report

# bench/ holds a profile.py that would shadow the standard library's (torch imports it): tests/ instead
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def make_checkpoint(folder: Path, window: int) -> Path:
    import torch
    import transformers
    from support.checkpoints import make_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    config = transformers.MistralConfig(
        vocab_size=make_tokenizer(folder),
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
        sliding_window=window,
        max_position_embeddings=32768,
        bos_token_id=None,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    transformers.MistralForCausalLM(config).eval().save_pretrained(folder)
    return folder


def run(engine, ids: list[int], decode: int) -> dict:
    import tvm

    prompt = ids[: len(ids) - decode]
    engine.add_sequence(0)
    started = time.perf_counter()
    engine.prefill(0, prompt)
    prefill_s = time.perf_counter() - started
    logits = []
    started = time.perf_counter()
    for token in ids[len(prompt) :]:
        logits.append(engine.decode(0, token))
    decode_s = time.perf_counter() - started
    free = int(tvm.get_global_func("vm.builtin.attention_kv_cache_get_num_available_pages")(engine.kv_cache))
    cached = int(tvm.get_global_func("vm.builtin.attention_kv_cache_get_sequence_length")(engine.kv_cache, 0))
    engine.remove_sequence(0)
    total = int(tvm.get_global_func("vm.builtin.attention_kv_cache_get_num_available_pages")(engine.kv_cache))
    return {
        "prefill_tok_s": round(len(prompt) / prefill_s, 1),
        "decode_tok_s": round(decode / decode_s, 1),
        "pages_in_use": total - free,
        "cached_tokens": cached,
        "logits": np.stack(logits),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--decode", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import llmc.runtime.engine as engine_module
    from llmc.compile import CompileOptions, compile_model

    with tempfile.TemporaryDirectory(prefix="llmc-sliding-") as tmp:
        checkpoint = make_checkpoint(Path(tmp) / "checkpoint", args.window)
        started = time.perf_counter()
        artifact = compile_model(
            str(checkpoint),
            CompileOptions(output=Path(tmp) / "artifact", quiet=True, context_window=args.length, max_batch_size=1),
        )
        compile_s = time.perf_counter() - started
        vocab = engine_module.read_config(artifact)["model"]["vocab_size"]
        ids = np.random.default_rng(0).integers(3, vocab, args.length).tolist()
        evicting_engine = engine_module.Engine(artifact, max_batch_size=1)
        original = engine_module.evicting_window
        engine_module.evicting_window = lambda config: 0
        try:
            masking_engine = engine_module.Engine(artifact, kv_tokens=args.length, max_batch_size=1)
        finally:
            engine_module.evicting_window = original
        runs = {"evicting": [], "masking only": []}
        for _ in range(args.rounds):  # alternated: a shared machine's load falls on both alike
            runs["evicting"].append(run(evicting_engine, ids, args.decode))
            runs["masking only"].append(run(masking_engine, ids, args.decode))
    difference = float(np.abs(runs["evicting"][0]["logits"] - runs["masking only"][0]["logits"]).max())
    results = {
        name: {
            "prefill_tok_s": statistics.median(r["prefill_tok_s"] for r in done),
            "decode_tok_s": statistics.median(r["decode_tok_s"] for r in done),
            "pages_in_use": done[0]["pages_in_use"],
            "cached_tokens": done[0]["cached_tokens"],
            "rounds": [{k: v for k, v in r.items() if k != "logits"} for r in done],
        }
        for name, done in runs.items()
    }
    meta = {
        "model": "random Mistral shape: hidden 512, 4 layers, 8/2 heads of 64, q0f32, llvm",
        "window": args.window,
        "sequence": f"{args.length} tokens ({args.length - args.decode} prefilled, {args.decode} decoded)",
        "rounds": f"{args.rounds} (medians; the two caches alternated)",
        "compile_seconds": round(compile_s, 1),
        "max_logit_difference": difference,
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),  # this machine is shared: other work shows here
    }
    table = [
        "| cache | prefill tok/s | decode tok/s | KV pages in use | tokens cached |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {r['prefill_tok_s']} | {r['decode_tok_s']} | {r['pages_in_use']} | {r['cached_tokens']} |"
            for name, r in results.items()
        ),
    ]
    write_report("sliding", "bench-sliding", meta, {"results": results}, table)


if __name__ == "__main__":
    main()
