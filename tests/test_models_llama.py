"""llmc logits vs transformers (CPU torch) for tiny random Llama-family checkpoints.

Every check of one model uses one compiled library: prefill at several lengths (one crossing a KV
page, one longer than the prefill chunk), teacher-forced decode, and batch_prefill + batch_decode.
"""

from __future__ import annotations

import numpy as np
import pytest
from support.checkpoints import TINY_MODELS, TINY_PREFILL_CHUNK, hf_logits

from llmc.runtime.engine import PAGE_SIZE, Engine

# fp32: 1e-4 of the logit range; fp16 weights + compute: 2e-2 of it
TOLERANCE = {"q0f32": 1e-4, "q0f16": 2e-2}
PROMPT_LENGTHS = [5, PAGE_SIZE + 3, TINY_PREFILL_CHUNK * 2 + 7]  # short, crosses a page, > 2 prefill chunks
DECODE_STEPS = 6


def random_ids(vocab: int, length: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(3, vocab, length).tolist()


def assert_close(actual: np.ndarray, expected: np.ndarray, quant: str, what: str) -> None:
    scale = float(np.abs(expected).max())
    error = float(np.abs(actual - expected).max())
    assert error <= TOLERANCE[quant] * scale, f"{what}: max|err| {error:.3g} > {TOLERANCE[quant]} x {scale:.3g}"


# fp16 on the CPU by default for the GQA model; for the others under `--run slow` (their q0f32 builds check
# the biases and the tied head, and fp16 changes no layer)
CASES = [
    (m, q) if q == "q0f32" or m == "llama_gqa" else pytest.param((m, q), marks=pytest.mark.slow)
    for q in TOLERANCE
    for m in TINY_MODELS
]


@pytest.fixture(scope="module", params=CASES, ids=lambda p: "-".join(p))
def case(request, compiled, hf_models):
    name, quant = request.param
    engine = Engine(compiled(name, quant))
    yield name, quant, engine, hf_models[name]


@pytest.fixture(autouse=True)
def clean_cache(request):
    """Each test starts from an empty KV cache, even after an earlier failure."""
    if "case" in request.fixturenames:
        request.getfixturevalue("case")[2].reset()


def test_prefill_then_decode(case):
    name, quant, engine, hf = case
    assert engine.prefill_chunk == TINY_PREFILL_CHUNK
    for seq_id, length in enumerate(PROMPT_LENGTHS):
        ids = random_ids(engine.vocab_size, length + DECODE_STEPS, seed=seq_id)
        reference = hf_logits(hf, ids)
        engine.add_sequence(seq_id)
        logits = engine.prefill(seq_id, ids[:length])
        assert_close(logits, reference[length - 1], quant, f"{name} prefill len {length}")
        for step in range(DECODE_STEPS):
            position = length + step
            logits = engine.decode(seq_id, ids[position])
            assert_close(logits, reference[position], quant, f"{name} decode step {step} after len {length}")
        assert engine.sequence_length(seq_id) == length + DECODE_STEPS
        engine.remove_sequence(seq_id)


def test_batch_prefill_and_batch_decode(case):
    name, quant, engine, hf = case
    lengths = [3, 11, 9]  # different lengths in one ragged batch (23 tokens <= prefill chunk)
    seq_ids = [10, 11, 12]
    prompts = [random_ids(engine.vocab_size, n + DECODE_STEPS, seed=100 + i) for i, n in enumerate(lengths)]
    references = [hf_logits(hf, p) for p in prompts]
    for seq_id in seq_ids:
        engine.add_sequence(seq_id)
    logits = engine.batch_prefill(seq_ids, [p[:n] for p, n in zip(prompts, lengths)])
    for i, n in enumerate(lengths):
        assert_close(logits[i], references[i][n - 1], quant, f"{name} batch_prefill seq {i}")
    for step in range(DECODE_STEPS):
        tokens = [p[n + step] for p, n in zip(prompts, lengths)]
        logits = engine.batch_decode(seq_ids, tokens)
        assert logits.shape == (3, engine.vocab_size)
        for i, n in enumerate(lengths):
            assert_close(logits[i], references[i][n + step], quant, f"{name} batch_decode step {step} seq {i}")
    for seq_id in seq_ids:
        engine.remove_sequence(seq_id)


def test_greedy_tokens_match_transformers(case):
    """Free-running greedy generation: the same 8 tokens as transformers' generate()."""
    import torch

    name, quant, engine, hf = case
    prompt = random_ids(engine.vocab_size, 9, seed=7)
    engine.add_sequence(0)
    tokens = [int(np.argmax(engine.prefill(0, prompt)))]
    for _ in range(7):
        tokens.append(int(np.argmax(engine.decode(0, tokens[-1]))))
    engine.remove_sequence(0)
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert tokens == out[0, len(prompt) :].tolist()
