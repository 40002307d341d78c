"""llmc bench: JSON shape, batching, random weights, and clear limits."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from llmc.cli import main
from llmc.source import resolve


def bench(*args: str):
    return CliRunner().invoke(main, ["bench", *args])


def test_bench_compiled_artifact(compiled):
    result = bench(
        str(compiled("llama_tied", "q0f32")), "--prompt-len", "40", "--gen-len", "6", "--repeats", "2", "--json"
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["compile_seconds"] is None and not out["random_weights"]
    assert out["prefill_tok_s"] > 0 and out["decode_tok_s"] > 0 and out["ttft_ms"] > 0
    assert len(out["prefill_seconds"]) == 2 and out["peak_host_rss_mib"] > 0


@pytest.mark.slow  # compiles its own random-weight model (~50 s): make test-all
def test_bench_random_weights_batched(checkpoints):
    result = bench(
        str(checkpoints["qwen2_bias"]),
        "--random-weights",
        "--quant",
        "q4f32_1",
        "--batch",
        "3",
        "--prompt-len",
        "20",
        "--gen-len",
        "4",
        "--repeats",
        "1",
        "--json",
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["random_weights"] and out["quantization"] == "q4f32_1" and out["batch"] == 3
    assert out["compile_seconds"] > 0 and out["decode_tok_s"] > 0


def test_full_size_presets_are_architecture_only():
    for name in ("llama3-8b", "qwen2.5-7b", "llama2-7b"):
        source = resolve(name)
        assert source.format == "config" and source.preset["config"]["hidden_size"] >= 3584


def test_bench_limits_are_clear_errors(compiled):
    artifact = str(compiled("llama_tied", "q0f32"))
    too_long = bench(artifact, "--prompt-len", "120", "--gen-len", "20")
    assert too_long.exit_code == 1 and "context window 128" in too_long.stderr
    too_wide = bench(artifact, "--batch", "9", "--prompt-len", "4", "--gen-len", "2")
    assert too_wide.exit_code == 1 and "max batch size" in too_wide.stderr


def test_bench_weights_folder_is_compiled_first(checkpoints, tmp_path):
    from llmc.compile import CompileOptions, quantize_model

    weights = quantize_model(
        str(checkpoints["llama_tied"]), CompileOptions(quant="q4f32_1", output=tmp_path / "w", quiet=True)
    )
    result = bench(str(weights), "--prompt-len", "12", "--gen-len", "3", "--repeats", "1", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["quantization"] == "q4f32_1" and out["compile_seconds"] > 0 and not out["random_weights"]
