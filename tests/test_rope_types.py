"""Rope types whose frequencies transformers changes with the sequence length, against transformers.

- ``dynamic`` (NTK, tiny Llama): transformers keeps the default frequencies up to max_position_embeddings and
  raises the base past it, per forward call. llmc's table is static: exact up to max_position_embeddings (the
  test runs up to there), and a longer context window is refused at compile time.
- ``longrope`` (tiny Phi-3, partial rotary, attention factor): compiled with a context window past
  original_max_position_embeddings, the table holds the long factors; transformers picks them for any
  sequence longer than that, which the test runs (prompt, then decode steps).
"""

from __future__ import annotations

import numpy as np
import pytest
from support.checkpoints import make_tokenizer, randomize

from llmc.compile import CompileOptions, compile_model
from llmc.errors import ConfigError
from llmc.runtime.engine import Engine

TOLERANCE = 1e-4  # of max|logit|
DYNAMIC_MAX_POSITIONS = 64
LONGROPE_ORIGINAL = 32


def make(folder, arch: str, **spec):
    """A tiny random transformers checkpoint (2 layers, hidden 64, GQA) saved in ``folder``."""
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    config = getattr(transformers, arch.replace("ForCausalLM", "Config"))(
        vocab_size=make_tokenizer(folder),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
        **spec,
    )
    torch.manual_seed(9)
    model = getattr(transformers, arch)(config).eval()
    randomize(model, 9)
    model.save_pretrained(folder)
    return folder


def load(folder, **overrides):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **overrides).eval()


def logits_of(hf, ids: list[int]) -> np.ndarray:
    """One forward over all of ``ids`` (transformers picks its frequencies from this length)."""
    import torch

    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].numpy()


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    scale = float(np.abs(expected).max())
    error = float(np.abs(actual - expected).max())
    assert error <= TOLERANCE * scale, f"{what}: max|err| {error:.3g} > {TOLERANCE} x {scale:.3g}"


def check_against(engine: Engine, hf, ids: list[int], prompt: int) -> None:
    """Every prompt position (chunked prefill) and teacher-forced decode steps after it."""
    expected = logits_of(hf, ids)
    engine.add_sequence(0)
    logits = engine.forward_all(0, ids[:prompt])
    for position in range(prompt):
        assert_close(logits[position], expected[position], f"prompt position {position}")
    for position in range(prompt, len(ids)):
        assert_close(engine.decode(0, ids[position]), expected[position], f"decode position {position}")
    engine.remove_sequence(0)


@pytest.fixture(scope="module")
def dynamic_checkpoint(tmp_path_factory):
    rope = {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0}
    return make(
        tmp_path_factory.mktemp("rope") / "dynamic",
        "LlamaForCausalLM",
        max_position_embeddings=DYNAMIC_MAX_POSITIONS,
        rope_parameters=rope,
    )


def test_dynamic_rope_equals_transformers_up_to_max_positions(dynamic_checkpoint, tmp_path):
    artifact = compile_model(
        str(dynamic_checkpoint),
        CompileOptions(output=tmp_path / "out", quiet=True, context_window=DYNAMIC_MAX_POSITIONS, prefill_chunk=24),
    )
    engine = Engine(artifact)
    ids = np.random.default_rng(1).integers(3, engine.vocab_size, DYNAMIC_MAX_POSITIONS).tolist()
    check_against(engine, load(dynamic_checkpoint), ids, prompt=DYNAMIC_MAX_POSITIONS - 8)


def test_dynamic_rope_past_max_positions_is_refused(dynamic_checkpoint, tmp_path):
    """transformers' dynamic frequencies change past max_position_embeddings (the reason for the refusal)."""
    hf, default = (
        load(dynamic_checkpoint),
        load(dynamic_checkpoint, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    )
    ids = np.random.default_rng(2).integers(3, hf.config.vocab_size, DYNAMIC_MAX_POSITIONS + 16).tolist()
    assert np.allclose(logits_of(hf, ids[:DYNAMIC_MAX_POSITIONS]), logits_of(default, ids[:DYNAMIC_MAX_POSITIONS]))
    assert not np.allclose(logits_of(hf, ids), logits_of(default, ids), atol=1e-3)
    with pytest.raises(ConfigError, match=f"--context-window {DYNAMIC_MAX_POSITIONS} or less"):
        compile_model(
            str(dynamic_checkpoint),
            CompileOptions(output=tmp_path / "out", quiet=True, context_window=2 * DYNAMIC_MAX_POSITIONS),
        )
    assert not (tmp_path / "out").exists(), "nothing half-written"


def test_longrope_long_factors_equal_transformers_past_the_original_context(tmp_path):
    rope = {
        "rope_type": "longrope",
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.5,
        "short_factor": [1.0, 1.3, 1.7, 2.5],
        "long_factor": [2.0, 3.0, 5.0, 9.0],
        "original_max_position_embeddings": LONGROPE_ORIGINAL,
    }
    checkpoint = make(
        tmp_path / "phi3",
        "Phi3ForCausalLM",
        max_position_embeddings=128,
        original_max_position_embeddings=LONGROPE_ORIGINAL,  # Phi3Config's own field wins over rope_parameters'
        rope_parameters=rope,
    )
    assert load(checkpoint).config.rope_parameters["original_max_position_embeddings"] == LONGROPE_ORIGINAL
    artifact = compile_model(
        str(checkpoint), CompileOptions(output=tmp_path / "out", quiet=True, context_window=128, prefill_chunk=24)
    )
    engine = Engine(artifact)
    hf = load(checkpoint)
    ids = np.random.default_rng(3).integers(3, engine.vocab_size, 3 * LONGROPE_ORIGINAL).tolist()
    # transformers uses the short factors for a sequence within the original context: the factors matter here
    short = logits_of(hf, ids[:LONGROPE_ORIGINAL])
    assert not np.allclose(short, logits_of(hf, ids)[:LONGROPE_ORIGINAL], atol=1e-3)
    check_against(engine, hf, ids, prompt=2 * LONGROPE_ORIGINAL + 5)
