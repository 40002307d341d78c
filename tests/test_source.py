"""MODEL resolution: local folders, .gguf files, presets, and hf:// through a pre-populated hub cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmc.errors import ModelSourceError
from llmc.source import parse_hub_spec, resolve

LLMC = str(Path(sys.executable).parent / "llmc")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_local_folder_and_gguf(checkpoints, tmp_path):
    folder = resolve(str(checkpoints["llama_tied"]))
    assert folder.format == "hf" and folder.path == checkpoints["llama_tied"].resolve()
    gguf = resolve("smollm2-135m")
    assert gguf.format == "gguf" and gguf.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert resolve(str(gguf.path)).format == "gguf"
    single = tmp_path / "only-gguf"
    single.mkdir()
    (single / "m.gguf").symlink_to(gguf.path)
    assert resolve(str(single)).format == "gguf"


def test_unknown_names_are_clear_errors(tmp_path):
    with pytest.raises(ModelSourceError, match="known preset"):
        resolve("no-such-preset")
    with pytest.raises(ModelSourceError, match="hf://org/name"):
        parse_hub_spec("hf://just-a-name")
    assert parse_hub_spec("hf://org/name@v1.0") == ("org/name", "v1.0")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelSourceError, match="not .gguf"):
        resolve(str(tmp_path / "weights.bin"))


def populate_hub_cache(cache: Path, repo_id: str, checkpoint: Path) -> Path:
    """Lay out a checkpoint the way huggingface_hub caches a download (refs + snapshots)."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / COMMIT
    shutil.copytree(checkpoint, snapshot)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return snapshot


def run_offline(cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    return subprocess.run([LLMC, *args], capture_output=True, text=True, env=env, timeout=600)


def test_hf_scheme_uses_the_local_cache_offline(checkpoints, tmp_path):
    cache = tmp_path / "hub"
    populate_hub_cache(cache, "tiny-org/tiny-llama", checkpoints["llama_tied"])
    out = tmp_path / "artifact"
    done = run_offline(
        cache, "compile", f"hf://tiny-org/tiny-llama@{COMMIT}", "-o", str(out), "--quiet", "--context-window", "64"
    )
    assert done.returncode == 0, done.stderr
    config = json.loads((out / "llmc-config.json").read_text())
    assert config["source"]["spec"] == f"hf://tiny-org/tiny-llama@{COMMIT}"
    assert COMMIT in config["source"]["path"]
    assert (out / "tokenizer.json").exists()


def test_hf_scheme_not_cached_offline_is_a_clear_error(tmp_path):
    done = run_offline(tmp_path / "empty-hub", "compile", "hf://nobody/nothing", "-o", str(tmp_path / "o"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "hf://nobody/nothing" in done.stderr and "cache" in done.stderr
