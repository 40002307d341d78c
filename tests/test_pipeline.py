"""The pass pipeline: --opt levels switch groups off without changing results; --debug-dump shows each phase."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmc.compile import CompileOptions, compile_model
from llmc.runtime.engine import Engine

LLMC = str(Path(sys.executable).parent / "llmc")


def last_logits(artifact: Path, prompt: list[int]) -> np.ndarray:
    engine = Engine(artifact)
    engine.add_sequence(0)
    return engine.prefill(0, prompt)


def test_opt_levels_agree_and_switch_groups_off(checkpoints, tmp_path):
    prompt = np.random.default_rng(3).integers(3, 200, 30).tolist()
    results, dumps = {}, {}
    for level in (0, 1, 2):
        dumps[level] = tmp_path / f"dump-O{level}"
        options = CompileOptions(
            output=tmp_path / f"O{level}",
            quiet=True,
            context_window=64,
            prefill_chunk=32,
            opt_level=level,
            debug_dump=dumps[level],
        )
        results[level] = last_logits(compile_model(str(checkpoints["qwen2_bias"]), options), prompt)
    scale = np.abs(results[0]).max()
    assert np.abs(results[1] - results[0]).max() <= 1e-4 * scale
    assert np.abs(results[2] - results[0]).max() <= 1e-4 * scale
    phases = {level: sorted(p.name for p in dumps[level].iterdir()) for level in dumps}
    assert "03_fuse.py" not in phases[0] and "03_fuse.py" in phases[1]
    assert phases[2][-1] == "08_finalize.py"
    final = {level: (dumps[level] / "08_finalize.py").read_text() for level in dumps}
    # the KV cache's CPU attention kernels are parallel at every level; O2 adds the matmul/elementwise schedules
    assert final[1].count("T.parallel") < final[2].count("T.parallel"), "O2 adds the CPU schedules"
    assert final[0].count("def fused_") < final[1].count("def fused_"), "O1 adds operator fusion"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not installed")
def test_o3_captures_cuda_graphs(checkpoints, tmp_path):
    dump = tmp_path / "dump"
    done = subprocess.run(
        [
            LLMC,
            "compile",
            str(checkpoints["llama_tied"]),
            "--target",
            "cuda:sm_90a",
            "--quant",
            "q4f16_1",
            "--opt",
            "O3",
            "-o",
            str(tmp_path / "out"),
            "--quiet",
            "--context-window",
            "64",
            "--debug-dump",
            str(dump),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    final = (dump / "08_finalize.py").read_text()
    assert "vm.builtin.cuda_graph.run_or_capture" in final
    assert (dump / "07_cuda_graph.py").exists()
