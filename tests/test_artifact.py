"""The artifact folder: complete or absent, never half-written; a re-run after an interruption succeeds."""

from __future__ import annotations

import json

import numpy as np
import pytest

import llmc.compiler.build
from llmc.artifact import TensorCacheWriter, atomic_output_dir, read_config
from llmc.compile import CompileOptions, compile_model
from llmc.errors import ArtifactError


def test_interrupted_compile_leaves_nothing_and_rerun_succeeds(checkpoints, tmp_path, monkeypatch):
    out = tmp_path / "art"
    real = llmc.compiler.build.compile_library

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(llmc.compiler.build, "compile_library", interrupted)
    options = CompileOptions(output=out, quiet=True, context_window=64)
    with pytest.raises(KeyboardInterrupt):
        compile_model(str(checkpoints["llama_tied"]), options)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(llmc.compiler.build, "compile_library", real)
    compile_model(str(checkpoints["llama_tied"]), options)
    config = read_config(out)
    assert config["context_window"] == 64 and (out / config["library"]).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_tensor_cache_round_trip(tmp_path):
    with atomic_output_dir(tmp_path / "cache") as folder:
        writer = TensorCacheWriter(folder, shard_cap=1000)
        arrays = {f"w{i}": np.random.default_rng(i).standard_normal((10, 7 + i)).astype("float32") for i in range(5)}
        for name, array in arrays.items():
            writer.add(name, array)
        writer.finish({"quantization": "q0f32"})
    index = json.loads((tmp_path / "cache" / "tensor-cache.json").read_text())
    assert len(index["records"]) > 1, "small shard cap must split shards"
    for shard in index["records"]:
        data = (tmp_path / "cache" / shard["dataPath"]).read_bytes()
        assert len(data) == shard["nbytes"]
        for rec in shard["records"]:
            raw = data[rec["byteOffset"] : rec["byteOffset"] + rec["nbytes"]]
            assert np.array_equal(np.frombuffer(raw, rec["dtype"]).reshape(rec["shape"]), arrays[rec["name"]])


def test_incomplete_artifact_is_reported(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(ArtifactError, match="llmc-config.json"):
        read_config(tmp_path / "half")


def test_killed_quantize_leaves_nothing_complete_and_rerun_cleans_up(tmp_path):
    """A real SIGKILL mid-run: no output folder appears; the next run succeeds and removes the leftovers."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    llmc = str(Path(sys.executable).parent / "llmc")
    out = tmp_path / "weights"
    # SmolLM2: seconds of conversion inside the temp folder, so the kill lands mid-write
    args = [llmc, "quantize", "smollm2-135m", "--quant", "q4f16_1", "-o", str(out), "--quiet"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".weights.tmp-*/params_shard_0.bin")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    leftovers = list(tmp_path.glob(".weights.tmp-*"))
    assert leftovers, "the run should have been killed while writing"
    assert not out.exists()
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (out / "llmc-config.json").exists() and (out / "tensor-cache.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights"], "abandoned temp folders are removed"


def test_full_disk_is_a_clear_error_and_keeps_nothing(checkpoints, tmp_path, monkeypatch):
    import errno

    from click.testing import CliRunner

    import llmc.artifact
    from llmc.cli import main

    def full(self, name, array):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(llmc.artifact.TensorCacheWriter, "add", full)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["quantize", str(checkpoints["llama_tied"]), "--quant", "q4f16_1", "-o", str(out), "--quiet"]
    )
    assert result.exit_code == 1 and "no space left" in result.stderr and "Free space and re-run" in result.stderr
    assert "Traceback" not in result.output and list(tmp_path.iterdir()) == []
