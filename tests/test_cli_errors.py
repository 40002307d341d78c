"""Bad input: a one-line error naming the file and the fix, non-zero exit, no traceback, nothing left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmc.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_clean_failure(result, *needles: str, out_dir: Path | None = None) -> None:
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmc: error:"), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    if out_dir is not None:
        assert not out_dir.exists(), "no artifact folder may be left behind"
        leftovers = [p.name for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}.")]
        assert not leftovers, leftovers


@pytest.fixture
def checkpoint(checkpoints, tmp_path) -> Path:
    """A private copy of the tiny Llama checkpoint that a test may damage."""
    return Path(shutil.copytree(checkpoints["llama_gqa"], tmp_path / "ckpt"))


def compile_args(model: Path | str, out: Path, *extra: str) -> list[str]:
    return ["compile", str(model), "-o", str(out), "--quiet", "--context-window", "64", *extra]


def test_missing_folder(tmp_path):
    out = tmp_path / "out"
    assert_clean_failure(invoke(*compile_args(tmp_path / "nope", out)), "nope", out_dir=out)


def test_missing_config_json(checkpoint, tmp_path):
    (checkpoint / "config.json").unlink()
    out = tmp_path / "out"
    assert_clean_failure(invoke(*compile_args(checkpoint, out)), "config.json", "missing", out_dir=out)


def test_malformed_config_json(checkpoint, tmp_path):
    (checkpoint / "config.json").write_text('{"model_type": "llama", ')
    out = tmp_path / "out"
    assert_clean_failure(invoke(*compile_args(checkpoint, out)), "config.json", "not valid JSON", out_dir=out)


def test_unknown_model_type(checkpoint, tmp_path):
    config = json.loads((checkpoint / "config.json").read_text())
    config["model_type"] = "mamba9000"
    (checkpoint / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert_clean_failure(invoke(*compile_args(checkpoint, out)), "mamba9000", "llama", "qwen2", out_dir=out)


def test_truncated_safetensors(checkpoint, tmp_path):
    shard = sorted(checkpoint.glob("*.safetensors"))[3]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    out = tmp_path / "out"
    assert_clean_failure(invoke(*compile_args(checkpoint, out)), shard.name, "truncated", out_dir=out)


def test_missing_tensor(checkpoint, tmp_path):
    index_file = checkpoint / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    del index["weight_map"]["model.layers.1.mlp.up_proj.weight"]
    index_file.write_text(json.dumps(index))
    out = tmp_path / "out"
    assert_clean_failure(
        invoke(*compile_args(checkpoint, out)), "model.layers.1.mlp.up_proj.weight", "missing", out_dir=out
    )


def test_tensor_of_wrong_shape(checkpoint, tmp_path):
    config = json.loads((checkpoint / "config.json").read_text())
    config["intermediate_size"] = 128  # the weights say 96
    (checkpoint / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert_clean_failure(
        invoke(*compile_args(checkpoint, out)), "gate_proj.weight", "(96, 64)", "(128, 64)", out_dir=out
    )


def test_unknown_target(checkpoint, tmp_path):
    out = tmp_path / "out"
    assert_clean_failure(
        invoke(*compile_args(checkpoint, out, "--target", "tpu9")), "tpu9", "llmc targets", out_dir=out
    )


def test_unknown_quant(checkpoint, tmp_path):
    out = tmp_path / "out"
    assert_clean_failure(invoke(*compile_args(checkpoint, out, "--quant", "q5f99")), "q5f99", "q0f32", out_dir=out)


def test_output_exists_needs_force(checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = invoke(*compile_args(checkpoint, out))
    assert_clean_failure(result, str(out), "--force")
    assert (out / "keep.txt").read_text() == "mine", "an existing folder must not be touched without --force"
    result = invoke(*compile_args(checkpoint, out, "--force"))
    assert result.exit_code == 0, result.output
    assert (out / "llmc-config.json").exists() and not (out / "keep.txt").exists()


def test_corrupt_gguf(tmp_path):
    garbage = tmp_path / "broken.gguf"
    garbage.write_bytes(b"GGUF" + os.urandom(4096))
    out = tmp_path / "out"
    assert_clean_failure(invoke(*compile_args(garbage, out)), "broken.gguf", "re-download", out_dir=out)


def test_truncated_real_gguf(tmp_path):
    from llmc.source import resolve

    real = resolve("smollm2-135m").path
    truncated = tmp_path / "smollm2-truncated.gguf"
    with open(real, "rb") as src:
        truncated.write_bytes(src.read(8 << 20))
    out = tmp_path / "out"
    assert_clean_failure(invoke(*compile_args(truncated, out)), "smollm2-truncated.gguf", out_dir=out)


def test_prompt_longer_than_context_window(compiled):
    artifact = compiled("llama_tied", "q0f32")
    result = invoke("run", str(artifact), "--no-chat", "--prompt", "the quick brown fox " * 100)
    assert_clean_failure(result, "context window is 128", "--context-window")


def test_run_on_missing_artifact(tmp_path):
    assert_clean_failure(invoke("run", str(tmp_path / "nothing"), "--prompt", "hi"), "nothing", "llmc compile")


def test_console_script_hides_traceback_unless_verbose(tmp_path):
    llmc = Path(sys.executable).parent / "llmc"
    plain = subprocess.run([str(llmc), "compile", str(tmp_path / "nope")], capture_output=True, text=True)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().startswith("llmc: error:") and len(plain.stderr.strip().splitlines()) == 1
    verbose = subprocess.run(
        [str(llmc), "--verbose", "compile", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr
