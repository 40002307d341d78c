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
