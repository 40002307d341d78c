"""Tensor parallelism: a tiny Llama and a tiny Qwen3-MoE compiled with 2 shards run on 2 real disco worker
processes (worker 0 in this process), joined by real Gloo collectives (``llmc.runtime.cpu_ccl``), and give the
logits of the 1-shard build and of transformers; shard counts the model cannot be split by are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from support.checkpoints import TINY_CONTEXT_WINDOW, TINY_PREFILL_CHUNK, hf_logits

from llmc.cli import main
from llmc.compile import CompileOptions, compile_model
from llmc.errors import ConfigError
from llmc.runtime.disco_engine import DiscoEngine, open_engine

TOLERANCE = 1e-4  # of the logit range: float32 shards sum partial products in another order
SHARDS = 2


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    scale = float(np.abs(expected).max())
    error = float(np.abs(actual - expected).max())
    assert error <= TOLERANCE * scale, f"{what}: max|err| {error:.3g} > {TOLERANCE} x {scale:.3g}"


def ids(vocab: int, length: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(3, vocab, length).tolist()


def compile_sharded(source, out, shards: int = SHARDS, **extra):
    options = CompileOptions(
        quant="q0f32",
        output=out,
        quiet=True,
        context_window=TINY_CONTEXT_WINDOW,
        prefill_chunk=TINY_PREFILL_CHUNK,
        max_batch_size=4,
        tensor_parallel_shards=shards,
        **extra,
    )
    return compile_model(str(source), options)


@pytest.fixture(scope="module")
def llama_tp(checkpoints, tmp_path_factory):
    return compile_sharded(checkpoints["llama_gqa"], tmp_path_factory.mktemp("tp") / "llama-tp2")


@pytest.fixture(scope="module")
def llama_engine(llama_tp):
    with DiscoEngine(llama_tp) as engine:
        yield engine


def test_sharded_artifact_layout(llama_tp):
    """One library; each shard's weights under TVM's pre-sharded names, holding half the heads and columns."""
    config = json.loads((llama_tp / "llmc-config.json").read_text())
    assert config["tensor_parallel"]["shards"] == SHARDS and config["tensor_parallel"]["lm_head"] == "gathered"
    names = config["tensor_parallel"]["param_names"]
    assert len(config["params"]) == SHARDS * len(names)
    records = {
        rec["name"]: rec["shape"]
        for shard in json.loads((llama_tp / "tensor-cache.json").read_text())["records"]
        for rec in shard["records"]
    }
    model = config["model"]  # the whole model's config: 4 q heads, 2 kv heads, head_dim 16, intermediate 96
    d, hidden = model["head_dim"], model["hidden_size"]
    expected = {
        "model.layers.0.self_attn.qkv_proj.weight": [(4 + 2 * 2) * d // SHARDS, hidden],
        "model.layers.0.self_attn.o_proj.weight": [hidden, 4 * d // SHARDS],
        "model.layers.0.mlp.gate_up_proj.weight": [2 * 96 // SHARDS, hidden],
        "model.layers.0.mlp.down_proj.weight": [hidden, 96 // SHARDS],
        "lm_head.weight": [model["vocab_size"] // SHARDS, hidden],
        "model.embed_tokens.weight": [model["vocab_size"], hidden],
    }
    for name, shape in expected.items():
        for shard in range(SHARDS):
            assert records[f"param_{names.index(name)}_shard-{shard + 1}-of-{SHARDS}"] == shape, name


def test_inspect_shows_memory_per_shard(llama_tp):
    runner = CliRunner()
    data = json.loads(runner.invoke(main, ["inspect", str(llama_tp), "--json"]).stdout)
    shard = data["tensor_parallel"]
    assert shard["shards"] == SHARDS and shard["lm_head"] == "gathered"
    assert shard["weights_bytes"] * SHARDS == data["memory"]["weights_bytes"]  # every shard the same shapes
    assert shard["kv_cache_bytes"] * SHARDS == data["memory"]["kv_cache_bytes"]  # half the KV heads each
    text = runner.invoke(main, ["inspect", str(llama_tp)]).stdout
    assert "per shard: weights" in text and f"on each of {SHARDS} devices" in text, text


def test_two_shards_match_one_shard_and_transformers(llama_engine, compiled, hf_models):
    """prefill (across a page and the prefill chunk), decode, batch prefill + batch decode, forward_all."""
    single = open_engine(compiled("llama_gqa", "q0f32"))
    hf = hf_models["llama_gqa"]
    tp = llama_engine
    tp.reset()
    tokens = ids(tp.vocab_size, TINY_PREFILL_CHUNK + 9 + 4, seed=1)
    reference = hf_logits(hf, tokens)
    for engine in (tp, single):
        engine.add_sequence(0)
    prompt = TINY_PREFILL_CHUNK + 9
    got, want = tp.prefill(0, tokens[:prompt]), single.prefill(0, tokens[:prompt])
    assert_close(got, want, "prefill vs 1 shard")
    assert_close(got, reference[prompt - 1], "prefill vs transformers")
    for position in range(prompt, len(tokens)):
        got, want = tp.decode(0, tokens[position]), single.decode(0, tokens[position])
        assert_close(got, want, f"decode {position} vs 1 shard")
        assert_close(got, reference[position], f"decode {position} vs transformers")
    assert tp.sequence_length(0) == len(tokens)

    prompts = [ids(tp.vocab_size, n, seed=10 + n) for n in (5, 11)]
    for engine in (tp, single):
        engine.reset()
        for seq in (1, 2):
            engine.add_sequence(seq)
    assert_close(tp.batch_prefill([1, 2], prompts), single.batch_prefill([1, 2], prompts), "batch_prefill")
    nxt = [7, 9]
    got = tp.batch_decode([1, 2], nxt)
    assert_close(got, single.batch_decode([1, 2], nxt), "batch_decode vs 1 shard")
    for row, (prompt_ids, token) in enumerate(zip(prompts, nxt, strict=True)):
        assert_close(got[row], hf_logits(hf, [*prompt_ids, token])[-1], f"batch_decode row {row} vs transformers")

    tp.add_sequence(3)
    all_logits = tp.forward_all(3, tokens[:20])
    assert_close(all_logits, reference[:20], "forward_all vs transformers")


def test_run_cli_greedy_text_equals_one_shard(llama_tp, compiled):
    """`llmc run` drives the sharded artifact through the same session code as any other."""
    runner = CliRunner()
    args = ["--prompt", "Numbers and symbols", "--temperature", "0", "--max-tokens", "8", "--json"]
    sharded = runner.invoke(main, ["run", str(llama_tp), *args])
    single = runner.invoke(main, ["run", str(compiled("llama_gqa", "q0f32")), *args])
    assert sharded.exit_code == 0 and single.exit_code == 0, sharded.output + single.output
    texts = [json.loads(result.stdout.strip().splitlines()[-1])["output_ids"] for result in (sharded, single)]
    assert texts[0] == texts[1] and texts[0]


@pytest.mark.slow  # ~40 s on 2 cores: its own checkpoint, build and worker processes
def test_moe_two_shards_match_transformers(family_checkpoints, tmp_path):
    """Qwen3-MoE (experts split by intermediate columns, router whole, a dense layer, QK-norm per head)."""
    artifact = compile_sharded(family_checkpoints["qwen3_moe"], tmp_path / "moe-tp2")
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(family_checkpoints["qwen3_moe"], dtype=torch.float32).eval()
    tokens = ids(300, 14, seed=3)
    reference = hf_logits(hf, tokens)
    with DiscoEngine(artifact) as engine:
        engine.add_sequence(0)
        assert_close(engine.prefill(0, tokens[:10]), reference[9], "moe prefill")
        for position in range(10, len(tokens)):
            assert_close(engine.decode(0, tokens[position]), reference[position], f"moe decode {position}")


@pytest.mark.parametrize(
    ("model", "shards", "needle"),
    [
        ("llama_gqa", 3, "does not divide num_attention_heads (4); shard counts that divide them all: 2"),
        ("llama_gqa", 4, "does not divide num_key_value_heads (2)"),
        ("llama_gqa", 0, "must be a positive integer"),
    ],
)
def test_bad_shard_counts_are_refused(checkpoints, tmp_path, model, shards, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        compile_sharded(checkpoints[model], tmp_path / "out", shards=shards)
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(
        main,
        ["compile", str(checkpoints[model]), "-o", str(tmp_path / "cli"), "--quiet"]
        + ["--tensor-parallel-shards", str(shards)],
    )
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmc: error:") and needle in lines[0], result.stderr


def test_unshardable_family_is_refused(family_checkpoints, tmp_path):
    with pytest.raises(ConfigError, match="supports the Llama-shaped families"):
        compile_sharded(family_checkpoints["gpt2"], tmp_path / "out")
    with pytest.raises(ConfigError, match="over all heads"):
        compile_sharded(family_checkpoints["olmo2"], tmp_path / "out")


def test_random_weights_are_drawn_on_each_worker(checkpoints, tmp_path):
    """``--random-weights`` (the 70B GPU benchmark's path): no weights stored, each worker draws its shard's."""
    artifact = compile_sharded(checkpoints["llama_gqa"], tmp_path / "random-tp2", random_weights=True)
    config = json.loads((artifact / "llmc-config.json").read_text())
    assert config["random_weights"] and not (artifact / "tensor-cache.json").exists()
    with DiscoEngine(artifact, seed=1) as engine:
        engine.add_sequence(0)
        logits = engine.prefill(0, [5, 6, 7])
        assert logits.shape == (engine.vocab_size,) and np.isfinite(logits).all() and np.abs(logits).max() > 0
        assert np.isfinite(engine.decode(0, 8)).all()
