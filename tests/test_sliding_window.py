"""A sliding window that evicts: a tiny Mistral (every layer a 16-token window) runs prompts and generations
several windows long through a KV cache that holds only the window, against transformers' Mistral.

The artifact's context window (32) and a one-sequence cache (6 pages of 16 tokens) are far shorter than
the sequences: without eviction they could not run at all. The same library with a cache created without
sliding (what the C++ and web runtimes create) masks only, and is checked too. Memory estimates say
per layer what the cache keeps: a window when it evicts, the whole context for Gemma 3's global layers.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
from click.testing import CliRunner
from support.checkpoints import FAMILY_MODELS, make_tokenizer, randomize

import llmc.runtime.engine as engine_module
from llmc.cli import main
from llmc.compile import CompileOptions, compile_model, plan_model
from llmc.memory import PAGE_SIZE, estimate, kv_layer_bytes
from llmc.runtime.engine import Engine
from llmc.runtime.generate import SamplingParams, generate

WINDOW = 16
CONTEXT = 32  # the artifact's context window: every sequence below runs past it
TOLERANCE = 1e-4  # of max|logit|


def random_ids(vocab: int, length: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(3, vocab, length).tolist()


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    """(artifact, transformers model) of a tiny Mistral whose every layer is a 16-token window."""
    import torch
    import transformers

    folder = tmp_path_factory.mktemp("mistral-window")
    checkpoint = folder / "checkpoint"
    checkpoint.mkdir()
    config = transformers.MistralConfig(
        vocab_size=make_tokenizer(checkpoint),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=WINDOW,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        bos_token_id=None,
        eos_token_id=2,
    )
    torch.manual_seed(5)
    model = transformers.MistralForCausalLM(config).eval()
    randomize(model, 5)
    model.save_pretrained(checkpoint)
    artifact = compile_model(
        str(checkpoint),
        CompileOptions(output=folder / "artifact", quiet=True, context_window=CONTEXT, max_batch_size=4),
    )
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    return artifact, hf, checkpoint


def reference(hf, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].numpy()


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    scale = float(np.abs(expected).max())
    error = float(np.abs(actual - expected).max())
    assert error <= TOLERANCE * scale, f"{what}: max|err| {error:.3g} > {TOLERANCE} x {scale:.3g}"


def test_the_cache_evicts_and_prompts_past_the_window_match_transformers(mistral):
    artifact, hf, _ = mistral
    engine = Engine(artifact, max_batch_size=1)  # a cache for one sequence's window
    assert engine.sliding_window == WINDOW and engine.prefill_chunk == WINDOW - 1
    pages = int(engine_module._builtin("vm.builtin.attention_kv_cache_get_num_available_pages")(engine.kv_cache))
    prompt_length, steps = 5 * WINDOW + 3, 8 * WINDOW  # chunked prefill of 6 chunks, then 128 decode steps
    ids = random_ids(engine.vocab_size, prompt_length + steps, seed=1)
    assert len(ids) > CONTEXT and len(ids) > pages * PAGE_SIZE, "the sequence must not fit without eviction"
    expected = reference(hf, ids)
    engine.add_sequence(0)
    logits = engine.forward_all(0, ids[:prompt_length])  # every prompt position, chunk by chunk
    for position in range(prompt_length):
        assert_close(logits[position], expected[position], f"prompt position {position}")
    for position in range(prompt_length, len(ids)):
        assert_close(engine.decode(0, ids[position]), expected[position], f"decode position {position}")
    assert engine.sequence_length(0) == len(ids)
    cached = int(engine_module._builtin("vm.builtin.attention_kv_cache_get_sequence_length")(engine.kv_cache, 0))
    assert cached == WINDOW - 1, "the cache keeps the window (less the current token), not the sequence"


def test_the_window_matters_at_these_lengths(mistral):
    """Full attention would give other logits past the window: the comparisons above can fail."""
    import torch
    import transformers

    _, hf, checkpoint = mistral
    full = transformers.AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=torch.float32, attn_implementation="eager", sliding_window=None
    ).eval()
    ids = random_ids(hf.config.vocab_size, 3 * WINDOW, seed=2)
    windowed, unwindowed = reference(hf, ids), reference(full, ids)
    assert np.allclose(windowed[: WINDOW - 1], unwindowed[: WINDOW - 1], atol=1e-5)
    assert np.abs(windowed[-1] - unwindowed[-1]).max() > 0.1 * np.abs(windowed).max()


def test_greedy_generation_runs_past_the_context_window(mistral):
    import torch

    artifact, hf, _ = mistral
    engine = Engine(artifact)
    prompt = random_ids(engine.vocab_size, 2 * WINDOW + 5, seed=3)
    new_tokens = 3 * WINDOW
    result = generate(engine, prompt, new_tokens, SamplingParams(temperature=0.0), stop_ids=set())
    assert result.finish_reason == "length" and len(prompt) + new_tokens > CONTEXT
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    assert result.output_ids == out[0, len(prompt) :].tolist()


def test_batch_prefill_and_batch_decode_past_the_window(mistral):
    artifact, hf, _ = mistral
    engine = Engine(artifact)
    lengths, seq_ids, steps = [3, 11, 1], [4, 5, 6], 3 * WINDOW
    prompts = [random_ids(engine.vocab_size, n + steps, seed=20 + i) for i, n in enumerate(lengths)]
    expected = [reference(hf, p) for p in prompts]
    for seq_id in seq_ids:
        engine.add_sequence(seq_id)
    logits = engine.batch_prefill(seq_ids, [p[:n] for p, n in zip(prompts, lengths)])
    for i, n in enumerate(lengths):
        assert_close(logits[i], expected[i][n - 1], f"batch_prefill sequence {i}")
    for step in range(steps):
        logits = engine.batch_decode(seq_ids, [p[n + step] for p, n in zip(prompts, lengths)])
        for i, n in enumerate(lengths):
            assert_close(logits[i], expected[i][n + step], f"batch_decode step {step} sequence {i}")


def test_a_cache_created_without_sliding_masks(mistral, monkeypatch):
    """The C++ and web runtimes create the cache without sliding and never enable it: the same library
    then masks each layer to the window (RoPE applied when keys are stored), up to the cache's length."""
    artifact, hf, _ = mistral
    monkeypatch.setattr(engine_module, "evicting_window", lambda config: 0)
    engine = Engine(artifact)
    assert engine.sliding_window == 0
    ids = random_ids(engine.vocab_size, CONTEXT, seed=4)
    expected = reference(hf, ids)
    engine.add_sequence(0)
    logits = engine.forward_all(0, ids[: CONTEXT // 2])
    for position in range(CONTEXT // 2):
        assert_close(logits[position], expected[position], f"prompt position {position}")
    for position in range(CONTEXT // 2, CONTEXT):
        assert_close(engine.decode(0, ids[position]), expected[position], f"decode position {position}")


def test_memory_estimate_per_layer(mistral, tmp_path_factory):
    """An evicting cache costs a window per sequence, whatever the context; Gemma 3 (a sliding and a global
    layer sharing TVM's page pool) keeps the whole context in every layer, and says its sliding layer only
    masks; an all-sliding model built where it cannot evict adds TVM's unused full layer."""
    from support.checkpoints import make_checkpoint

    from llmc.artifact import read_config

    artifact, _, checkpoint = mistral
    config = read_config(artifact)
    assert config["sliding_eviction"] is True and "sliding_eviction" not in config["model"]
    model, dtype = config["model"], config["dtype"]
    for context in (CONTEXT, 4096):
        memory = estimate(config, context_window=context, sequences=3)
        window_tokens = WINDOW - 1 + config["prefill_chunk"] + PAGE_SIZE
        assert [(layer.kind, layer.tokens) for layer in memory.kv_layers] == [("sliding, evicts", window_tokens)] * 2
        assert memory.kv_cache_bytes == 2 * kv_layer_bytes(model, dtype, 3 * (window_tokens + 2 * PAGE_SIZE))
        assert "evicting" in memory.describe()
    text = CliRunner().invoke(main, ["inspect", str(artifact)]).stdout
    assert "sliding windows (evicting)" in text

    def planned(source: str) -> dict:  # a llmc-config.json as compile writes it, without building
        plan = plan_model(source, CompileOptions(context_window=4096, prefill_chunk=512))
        return {"model": asdict(plan.config), "dtype": "float32", "context_window": 4096, "prefill_chunk": 512}

    gemma = planned(str(make_checkpoint(tmp_path_factory.mktemp("gemma3") / "gemma3", "gemma3")))
    assert FAMILY_MODELS["gemma3"]["layer_types"] == ["sliding_attention", "full_attention"]
    memory = estimate(gemma)
    assert [(layer.kind, layer.tokens) for layer in memory.kv_layers] == [
        ("sliding, masks only", 4096),
        ("full", 4096),
    ]
    assert memory.kv_cache_bytes == 2 * kv_layer_bytes(gemma["model"], "float32", 4096)
    assert "1 sliding layers mask only" in memory.describe()

    unbuilt = planned(str(checkpoint))  # sliding_eviction is decided when the cache is built
    assert [layer.kind for layer in estimate(unbuilt).kv_layers] == ["sliding, masks only"] * 2 + ["full (unused)"]


def test_serving_engine_batches_evicting_sequences(mistral):
    """``llmc serve``'s engine: pages budgeted by the window, no prefix forks (TVM cannot fork a sliding
    sequence), greedy outputs equal a lone sequence's."""
    from llmc.runtime.sampling import Sampler
    from llmc.runtime.scheduler import Request, ServingEngine

    artifact, _, _ = mistral
    engine = Engine(artifact)
    shared = random_ids(engine.vocab_size, WINDOW + 2, seed=6)
    prompts = [shared + random_ids(engine.vocab_size, 3, seed=7 + i) for i in range(4)]
    room = CONTEXT - len(prompts[0]) - 1
    expected = [generate(engine, p, room, SamplingParams(temperature=0.0), stop_ids=set()).output_ids for p in prompts]
    serving = ServingEngine(artifact)
    try:
        outputs = []
        for wave in (prompts[:2], prompts[2:]):  # the second wave shares a prefix with finished requests
            requests = [serving.submit(Request(p, room, Sampler(0.0, 1.0, None))) for p in wave]
            for request in requests:
                list(request)
            outputs += [r.output_ids for r in requests]
        assert outputs == expected
        assert serving.stats.prefix_hit_tokens == 0 and serving.stats.decode_batch_sizes[2] > 0
    finally:
        serving.stop()


def test_a_window_that_cannot_hold_a_chunk_is_refused(mistral, tmp_path):
    import json
    import shutil

    from llmc.errors import ArtifactError

    artifact, _, _ = mistral
    copy = tmp_path / "artifact"
    shutil.copytree(artifact, copy)
    config = json.loads((copy / "llmc-config.json").read_text())
    config["model"]["sliding_window"] = 4  # a hand-edited config: the cache would slide by less than a chunk
    (copy / "llmc-config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="sliding_window is 4"):
        Engine(copy)


def test_llmc_bench_runs_past_the_context_window(mistral):
    import json

    artifact, _, _ = mistral
    args = ["bench", str(artifact), "--prompt-len", str(2 * CONTEXT), "--gen-len", str(CONTEXT), "--repeats", "1"]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["decode_tok_s"] > 0
