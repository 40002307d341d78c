"""CUDA libraries built on this GPU-less machine carry compiled sm_90a device code, not CUDA source."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmc.compiler.cuda import fatbin_entries, library_has_device_code

LLMC = str(Path(sys.executable).parent / "llmc")
pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not installed")


def compile_cuda(model: Path | str, target: str, quant: str, out: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            LLMC,
            "compile",
            str(model),
            *flags,
            "--target",
            target,
            "--quant",
            quant,
            "-o",
            str(out),
            "--quiet",
            "--context-window",
            "64",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.parametrize("quant", ["q0f16", "q4f16_1"])
def test_cuda_sm90a_library_holds_cubin(checkpoints, tmp_path, quant):
    out = tmp_path / quant
    if quant == "q0f16":
        # the llama-tiny preset (GQA groups of 4 + llama3 rope) made TVM's TIR CSE emit a use before
        # definition in the attention kernels; llmc's CUDA builds turn that pass off
        done = compile_cuda("llama-tiny", "cuda:sm_90a", quant, out, "--random-weights")
    else:
        done = compile_cuda(checkpoints["llama_gqa"], "cuda:sm_90a", quant, out)
    assert done.returncode == 0, done.stderr
    config = json.loads((out / "llmc-config.json").read_text())
    assert config["target"] == "cuda:sm_90a" and config["device"] == "cuda"
    library = out / config["library"]
    data = library.read_bytes()
    assert library_has_device_code(library), "the library must hold cubin sections, not CUDA source"
    assert b"-arch sm_90a" in data, "kernels must be compiled for sm_90a"
    assert b"__global__" not in data
    assert ("sass", "sm_90") in fatbin_entries(library)


@pytest.mark.slow  # a second CUDA build for three architectures (~75 s): make test-all
def test_cuda_multi_arch_fatbin(checkpoints, tmp_path):
    out = tmp_path / "fat"
    done = compile_cuda(checkpoints["llama_gqa"], "cuda:sm_80+sm_90a", "q4f16_1", out)
    assert done.returncode == 0, done.stderr
    config = json.loads((out / "llmc-config.json").read_text())
    assert config["cuda_archs"] == ["sm_80", "sm_90a"]
    assert config["static_plan_bytes"]["decode"] > 0  # CUDA's own PassContext keeps the memory-plan instrument
    entries = fatbin_entries(out / config["library"])
    assert {("sass", "sm_80"), ("sass", "sm_90"), ("ptx", "sm_80")} <= set(entries), entries
    assert ("sass", "sm_89") not in entries


def test_unknown_cuda_arch_in_fatbin_target(tmp_path):
    done = subprocess.run(
        [LLMC, "compile", "x", "--target", "cuda:sm_80+sm_42", "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "sm_42" in done.stderr and "Traceback" not in done.stderr


def test_plain_cuda_target_without_a_gpu_names_the_choices(tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has a GPU")
    done = subprocess.run(
        [LLMC, "compile", "x", "--target", "cuda", "-o", str(tmp_path / "o")], capture_output=True, text=True
    )
    assert done.returncode == 1 and "cuda:sm_90a" in done.stderr and "Traceback" not in done.stderr
