"""What a new user meets first: `llmc run` on a model instead of an artifact, and a failed compile with the
default -o (issue 16's "small things")."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from llmc.cli import main

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 300,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}


def checkpoint_missing_tensors(folder):
    """A checkpoint folder whose safetensors file lacks most tensors: compiling it fails while writing weights."""
    from safetensors.numpy import save_file

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CONFIG))
    save_file({"model.embed_tokens.weight": np.zeros((300, 64), np.float32)}, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("command", ["run", "chat"])
def test_run_on_a_gguf_says_it_is_a_model(command):
    from llmc.source import resolve

    gguf = resolve("smollm2-135m").path
    args = [command, str(gguf)] + (["-p", "hi"] if command == "run" else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"llmc: error: {gguf}: a GGUF model file, not a compiled artifact folder.")
    assert f"`llmc compile {gguf} --target llvm -o dist/model`" in result.stderr
    assert "Traceback" not in result.output


def test_run_on_a_checkpoint_folder_says_compile_it(tmp_path):
    folder = checkpoint_missing_tensors(tmp_path / "ckpt")
    result = CliRunner().invoke(main, ["run", str(folder), "-p", "hi"])
    assert result.exit_code == 1
    assert "a model checkpoint folder, not a compiled artifact" in result.stderr
    assert "Re-run" not in result.stderr  # it was never compiled


def test_run_on_a_preset_name_says_compile_it():
    result = CliRunner().invoke(main, ["run", "smollm2-135m", "-p", "hi"])
    assert result.exit_code == 1 and "a model preset, not a compiled artifact folder" in result.stderr


def test_failed_compile_with_default_output_leaves_no_dist(tmp_path, monkeypatch):
    folder = checkpoint_missing_tensors(tmp_path / "ckpt")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = CliRunner().invoke(main, ["compile", str(folder), "--target", "llvm", "--quant", "q0f32", "--quiet"])
    assert result.exit_code == 1 and result.stderr.startswith("llmc: error:")
    assert list(work.iterdir()) == []  # no empty dist/
