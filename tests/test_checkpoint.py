"""Checkpoint readers: safetensors (bf16, sharding), GGUF name mapping and Q/K un-permutation."""

from __future__ import annotations

import numpy as np
import pytest

from llmc.checkpoint.gguf_reader import GGUFCheckpoint, hf_name, unpermute_qk
from llmc.checkpoint.safetensors_reader import SafetensorsCheckpoint
from llmc.errors import CheckpointError
from llmc.source import resolve


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's converter does to Q/K rows (from its documented reshape/swapaxes)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def test_unpermute_inverts_llama_cpp_permute():
    weight = np.arange(24 * 5, dtype=np.float32).reshape(24, 5)
    for heads in (1, 2, 3):
        assert np.array_equal(unpermute_qk(llama_cpp_permute(weight, heads), heads), weight)
    assert not np.array_equal(llama_cpp_permute(weight, 2), weight)


def test_gguf_names_map_to_hf():
    assert hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_name("blk.12.attn_q.weight") == "model.layers.12.self_attn.q_proj.weight"
    assert hf_name("blk.0.ffn_down.weight") == "model.layers.0.mlp.down_proj.weight"
    assert hf_name("blk.3.attn_k.bias") == "model.layers.3.self_attn.k_proj.bias"
    assert hf_name("rope_freqs.weight") is None


def test_bf16_and_sharded_safetensors(tmp_path, checkpoints):
    import torch
    from safetensors.torch import save_file

    values = torch.randn(8, 4).to(torch.bfloat16)
    (tmp_path / "config.json").write_text("{}")
    save_file({"a": values, "b": torch.arange(6, dtype=torch.int64)}, tmp_path / "model.safetensors")
    reader = SafetensorsCheckpoint(tmp_path)
    assert np.array_equal(reader.get("a").astype(np.float32), values.float().numpy())
    assert reader.get("b").tolist() == list(range(6))
    with pytest.raises(CheckpointError, match="missing"):
        reader.get("c")
    sharded = SafetensorsCheckpoint(checkpoints["qwen2_bias"])
    assert "model.layers.1.self_attn.q_proj.bias" in sharded.names()


def test_gguf_reader_streams_hf_named_tensors():
    reader = GGUFCheckpoint(resolve("smollm2-135m").path)
    config = reader.config
    assert (config["model_type"], config["num_hidden_layers"], config["num_key_value_heads"]) == ("llama", 30, 3)
    assert config["tie_word_embeddings"] and "lm_head.weight" not in reader.names()
    q = reader.get("model.layers.0.self_attn.q_proj.weight")
    assert q.shape == (576, 576) and q.dtype == np.float32
    assert reader.get("model.embed_tokens.weight").shape == (49152, 576)


def test_lean_gguf_parser_agrees_with_gguf_py():
    import gguf

    from llmc.checkpoint.gguf_file import read_gguf

    path = resolve("smollm2-135m").path
    metadata, tensors = read_gguf(path)
    reference = gguf.GGUFReader(str(path))
    for key in (
        "general.architecture",
        "llama.block_count",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
        "tokenizer.chat_template",
        "llama.rope.freq_base",
    ):
        assert metadata[key] == reference.fields[key].contents(), key
    assert [t.name for t in tensors] == [t.name for t in reference.tensors]
    for ours, theirs in zip(tensors[:12], reference.tensors[:12]):
        assert ours.tensor_type == theirs.tensor_type and tuple(ours.shape) == tuple(int(d) for d in theirs.shape)
        assert np.array_equal(np.asarray(ours.data), np.asarray(theirs.data))


# Meta's Llama 3.1 (head 128) and 3.2 (head 64, factor 32) rope scaling, and a band no frequency falls in
def llama3(factor: float, low: float, high: float, context: int) -> dict:
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    return dict(zip(keys, (factor, low, high, context)))


LLAMA3_SCALINGS = [
    (500000.0, 128, llama3(8.0, 1.0, 4.0, 8192)),
    (500000.0, 64, llama3(32.0, 1.0, 4.0, 8192)),
    (500000.0, 16, llama3(8.0, 1.0, 4.0, 32)),
    (10000.0, 64, llama3(4.0, 2.0, 8.0, 4096)),
]


@pytest.mark.parametrize("theta, rotary_dim, scaling", LLAMA3_SCALINGS)
def test_gguf_rope_freqs_give_back_a_llama3_scaling_with_the_same_divisors(theta, rotary_dim, scaling, tmp_path):
    """llama.cpp's converter stores Llama 3 rope scaling as per-frequency divisors (float32): the reader's
    ``rope_scaling`` reproduces each divisor (the band's own parameters are not all recoverable)."""
    from llmc.checkpoint.gguf_rope import llama3_divisors, rope_scaling_from_freqs

    stored = llama3_divisors(theta, rotary_dim, scaling).astype(np.float32)
    recovered = rope_scaling_from_freqs(stored, theta, rotary_dim, tmp_path / "m.gguf")
    assert recovered["rope_type"] == "llama3" and recovered["factor"] == scaling["factor"]
    assert np.allclose(llama3_divisors(theta, rotary_dim, recovered), stored, rtol=1e-5)


def test_gguf_rope_freqs_of_another_shape_are_refused(tmp_path):
    from llmc.checkpoint.gguf_rope import rope_scaling_from_freqs
    from llmc.errors import ConfigError

    assert rope_scaling_from_freqs(np.ones(8, np.float32), 10000.0, 16, tmp_path / "m.gguf") is None
    with pytest.raises(ConfigError, match="m.gguf: GGUF tensor rope_freqs.weight does not follow"):
        rope_scaling_from_freqs(np.linspace(1, 3, 8), 10000.0, 16, tmp_path / "m.gguf")
    with pytest.raises(ConfigError, match="holds 4 divisors; expected 8"):
        rope_scaling_from_freqs(np.ones(4), 10000.0, 16, tmp_path / "m.gguf")
