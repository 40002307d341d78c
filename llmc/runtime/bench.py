"""``llmc bench``: prefill and decode throughput, time to first token, peak memory; medians over repeats."""

from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path

import numpy as np

from llmc.artifact import read_config
from llmc.errors import GenerationError


def bench_engine(artifact: Path, device: str | None, batch: int, prompt_len: int, gen_len: int, seed: int = 0):
    """The artifact's engine on ``device`` (default: the artifact's), its KV cache sized for the run:
    every sequence's prompt and generated tokens, plus 64 tokens of slack per sequence."""
    from llmc.runtime.disco_engine import open_engine

    config = read_config(artifact)
    return open_engine(
        artifact,
        device or config.get("device", "cpu"),
        max_batch_size=max(batch, 1),
        seed=seed,
        kv_tokens=batch * (prompt_len + gen_len) + 64 * batch,
    )


def run_bench(engine, batch: int, prompt_len: int, gen_len: int, repeats: int, seed: int = 0) -> dict:
    """Greedy generation on random prompts: ``batch`` sequences of ``prompt_len`` tokens, ``gen_len`` steps."""
    if engine.max_sequence_length is not None and prompt_len + gen_len > engine.context_window:  # evicting: no bound
        raise GenerationError(
            f"--prompt-len + --gen-len ({prompt_len + gen_len}) exceeds the context window {engine.context_window}."
        )
    if batch > engine.max_batch_size:
        raise GenerationError(
            f"--batch {batch} exceeds the library's max batch size {engine.max_batch_size} "
            "(recompile with --max-batch-size)."
        )
    rng = np.random.default_rng(seed)
    seq_ids = list(range(batch))
    prefill_s, ttft_s, decode_s = [], [], []
    for _ in range(repeats):
        engine.reset()
        prompts = [rng.integers(0, engine.vocab_size, prompt_len).tolist() for _ in seq_ids]
        started = time.perf_counter()
        tokens = []
        for seq_id, prompt in zip(seq_ids, prompts):
            engine.add_sequence(seq_id)
            tokens.append(int(np.argmax(engine.prefill(seq_id, prompt))))
            if seq_id == 0:
                ttft_s.append(time.perf_counter() - started)
        prefill_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(gen_len):
            if batch == 1:
                tokens = [int(np.argmax(engine.decode(0, tokens[0])))]
            else:
                tokens = np.argmax(engine.batch_decode(seq_ids, tokens), axis=-1).tolist()
        decode_s.append(time.perf_counter() - started)
    engine.reset()
    prefill, decode = statistics.median(prefill_s), statistics.median(decode_s)
    return {
        "batch": batch,
        "prompt_len": prompt_len,
        "gen_len": gen_len,
        "repeats": repeats,
        "prefill_tok_s": round(batch * prompt_len / prefill, 3),
        "decode_tok_s": round(batch * gen_len / decode, 3),
        "ttft_ms": round(statistics.median(ttft_s) * 1000, 3),
        "prefill_seconds": [round(x, 4) for x in prefill_s],
        "decode_seconds": [round(x, 4) for x in decode_s],
        "peak_host_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
