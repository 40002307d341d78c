"""The peer benchmark's arithmetic (bench/roofline.py, bench/peers.py): rooflines, weight bytes, perplexity."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"llmc_bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def roofline():
    return load("roofline")


def test_rooflines(roofline):
    # 10 GB/s over 100 MB per token: 100 tok/s
    assert roofline.decode_roofline(10.0, 100_000_000) == pytest.approx(100.0)
    peak, why = roofline.int8_peak({"avx2", "fma"}, 2, 2.0)
    assert peak == pytest.approx(2 * 2e9 * 32 * 2) and "AVX2" in why
    assert roofline.int8_peak({"avx512f", "avx512vnni", "avx2"}, 1, 1.0)[0] == pytest.approx(1e9 * 128 * 2)
    # 1e9 params: 2e9 ops per token; 256e9 ops/s -> 128 tok/s
    assert roofline.prefill_roofline(256e9, 1_000_000_000) == pytest.approx(128.0)


def test_weight_stats_untied_and_tied(roofline, tmp_path):
    gguf = pytest.importorskip("gguf")

    def write(path: Path, tied: bool) -> Path:
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_tensor("token_embd.weight", np.zeros((100, 8), np.float32))
        writer.add_tensor("blk.0.attn_q.weight", np.zeros((8, 8), np.float32))
        writer.add_tensor("blk.0.attn_norm.weight", np.zeros(8, np.float32))
        if not tied:
            writer.add_tensor("output.weight", np.zeros((100, 8), np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path

    untied = roofline.weight_stats(write(tmp_path / "untied.gguf", tied=False))
    assert untied["embedding_bytes"] == 3200 and not untied["tied_output"]
    assert untied["bytes_per_token"] == untied["tensor_bytes"] - 3200 == 64 * 4 + 8 * 4 + 3200
    assert untied["matmul_params"] == 64 + 800
    tied = roofline.weight_stats(write(tmp_path / "tied.gguf", tied=True))
    assert tied["tied_output"] and tied["bytes_per_token"] == tied["tensor_bytes"]
    assert tied["matmul_params"] == 64 + 800


def test_chunked_perplexity_scores_like_llama_perplexity():
    peers = load("peers")
    vocab, ctx = 10, 8
    seen: list[list[int]] = []

    def uniform(ids: list[int]) -> np.ndarray:
        seen.append(ids)
        return np.zeros((len(ids), vocab))

    result = peers.chunked_perplexity(uniform, [1 + i % 9 for i in range(19)], ctx, bos=0)
    # 19 tokens: 2 whole chunks of 8, BOS first in each, positions 4..6 scored (3 per chunk)
    assert [chunk[0] for chunk in seen] == [0, 0] and len(seen) == 2
    assert result["scored_tokens"] == 6
    assert result["perplexity"] == pytest.approx(vocab)

    def sure(ids: list[int]) -> np.ndarray:  # certain of every next token: perplexity 1
        logits = np.full((len(ids), vocab), -1e4)
        logits[np.arange(len(ids) - 1), ids[1:]] = 0.0
        return logits

    assert peers.chunked_perplexity(sure, list(range(1, 9)) * 2, ctx, bos=None)["perplexity"] == pytest.approx(
        1.0, abs=math.ulp(1.0) * 8
    )
