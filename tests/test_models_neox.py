"""The LayerNorm families' config readers (``llmc/models/neox.py`` and its family files): hub config.json layouts
of transformers 4, refusals that name the field, and Cohere's q/k row reordering. No build: the numerics against
transformers are tests/test_models_families.py's."""

from __future__ import annotations

import numpy as np
import pytest

from llmc.errors import ConfigError
from llmc.models import MODELS
from llmc.models.neox import deinterleave_rows

SIZES = dict(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)


def parse(model_type: str, **fields):
    return MODELS[model_type].parse_config(dict(SIZES, model_type=model_type, **fields), "config.json")


def test_transformers_4_layouts():
    """Pythia's ``rotary_pct`` / ``rotary_emb_base`` and Phi-2's top-level ``partial_rotary_factor``."""
    pythia = parse("gpt_neox", rotary_pct=0.5, rotary_emb_base=20000, use_parallel_residual=False, hidden_act="gelu")
    assert (pythia.rotary_dim, pythia.rope_theta, pythia.residual, pythia.gelu_tanh) == (
        8,
        20000.0,
        "sequential",
        False,
    )
    assert parse("gpt_neox").residual == "parallel_two_norms" and parse("gpt_neox").rotary_dim == 4  # 25% default
    phi2 = parse("phi", partial_rotary_factor=0.5, rope_theta=10000.0, hidden_act="gelu_new", rope_scaling=None)
    assert (phi2.rotary_dim, phi2.gelu_tanh, phi2.lm_head_bias, phi2.residual) == (8, True, True, "parallel")
    assert parse("stablelm").rotary_dim == 4  # StableLM's 25% default
    command_r = parse("cohere")
    assert (command_r.logit_scale, command_r.tie_word_embeddings, command_r.norm_bias) == (0.0625, True, False)


@pytest.mark.parametrize(
    "model_type, fields, message",
    [
        ("phi", dict(tie_word_embeddings=True), "tie_word_embeddings"),
        ("gpt_neox", dict(hidden_act="relu"), "hidden_act 'relu'"),
        ("stablelm", dict(hidden_act="gelu"), "hidden_act 'gelu'.*silu"),
        ("stablelm", dict(partial_rotary_factor=0.3125), "partial_rotary_factor 0.3125.*even"),
        ("cohere", dict(partial_rotary_factor=0.5), "partial_rotary_factor"),
        ("starcoder2", dict(rope_scaling={"rope_type": "su-perfast"}), "rope scaling type"),
        ("cohere", dict(num_hidden_layers=None), "num_hidden_layers"),
    ],
)
def test_refusals_name_the_field(model_type, fields, message):
    with pytest.raises(ConfigError, match=message):
        parse(model_type, **fields)


def test_cohere_rows_turn_interleaved_rope_into_rotate_half():
    """Scores of interleaved RoPE (pairs 2i, 2i+1) on HF's rows equal rotate-half RoPE's on the reordered rows."""
    config = parse("cohere", num_key_value_heads=2)
    heads, kv_heads, d = 4, 2, config.head_dim
    rng = np.random.default_rng(0)
    weight = rng.standard_normal(((heads + 2 * kv_heads) * d, 64))
    x = rng.standard_normal(64)
    inv_freq = 1.0 / 10000 ** (np.arange(0, d, 2) / d)
    angles_q, angles_k = 7 * inv_freq, 3 * inv_freq  # positions 7 and 3

    def interleaved(v, angle):  # HF Cohere: pairs (2i, 2i+1) rotate by angle i
        out = v.copy()
        out[0::2] = v[0::2] * np.cos(angle) - v[1::2] * np.sin(angle)
        out[1::2] = v[1::2] * np.cos(angle) + v[0::2] * np.sin(angle)
        return out

    def rotate_half(v, angle):  # the KV cache's: pairs (i, i + d/2)
        a, b = v[: d // 2], v[d // 2 :]
        return np.concatenate([a * np.cos(angle) - b * np.sin(angle), b * np.cos(angle) + a * np.sin(angle)])

    def scores(w, rope):
        qkv = (w @ x).reshape(-1, d)
        q, k = qkv[:heads], qkv[heads : heads + kv_heads]
        return np.array([rope(q[h], angles_q) @ rope(k[h // 2], angles_k) for h in range(heads)])

    reordered = deinterleave_rows(config)(weight)
    np.testing.assert_allclose(scores(reordered, rotate_half), scores(weight, interleaved), rtol=1e-10)
    np.testing.assert_array_equal(reordered[(heads + kv_heads) * d :], weight[(heads + kv_heads) * d :])  # v kept
