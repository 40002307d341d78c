"""A tiny model's kernels run on an emulated Vulkan GPU (Mesa lavapipe through wgpu), compared with
the llvm build on the same random inputs: TVM's WGSL kernels, and the SPIR-V llmc packs for
``--target vulkan`` bound the way TVM's Vulkan runtime binds them (tests/kernel_harness.py).

Default: one function of each kind (matmul, rms_norm, rope, ...) of the q4f16_1 model. The sweep over
every fused function of the q4f16_1 and q4f32_1 models runs under ``make test-vulkan`` (``--run vulkan``).
"""

from __future__ import annotations

import re
import shutil

import pytest

from llmc.compiler import spirv

pytest.importorskip("wgpu", reason="wgpu missing (make install-vulkan)")
if not spirv.naga_available() or shutil.which("spirv-val") is None:
    pytest.skip("node + naga-wasm or spirv-val missing (make install-vulkan)", allow_module_level=True)

from kernel_harness import MODES, KernelHarness, model_functions  # noqa: E402

TOLERANCE = {"q4f16_1": 1e-2, "q4f32_1": 1e-5}  # max |gpu - llvm| / max |llvm|


@pytest.fixture(scope="module")
def harness():
    try:
        return KernelHarness()
    except Exception as e:  # no Vulkan driver: wgpu finds no adapter
        pytest.skip(f"no Vulkan adapter for wgpu (Mesa lavapipe: make install-vulkan): {str(e).splitlines()[0]}")


@pytest.fixture(scope="module")
def functions(checkpoints):
    cache = {}

    def get(quant: str) -> dict:
        if quant not in cache:
            cache[quant] = model_functions(str(checkpoints["llama_gqa"]), quant)
        return cache[quant]

    return get


def _check(harness, quant: str, name: str, func) -> None:
    result = harness.compare(name, func)
    if result.skipped:
        pytest.skip(f"{name}: {result.skipped}")
    assert result.kernels, f"{name}: no device kernel"
    assert result.outputs >= 1, f"{name}: the llvm build wrote nothing"
    for mode in harness.modes:
        assert result.max_rel_err[mode] <= TOLERANCE[quant], (name, mode, result.max_rel_err)


def _one_per_kind(names) -> list[str]:
    kinds = {}
    for name in sorted(names):
        kinds.setdefault(re.sub(r"\d+", "", name), name)
    return sorted(kinds.values())


def test_raw_vulkan_runs_the_spirv_words(harness):
    """The packed SPIR-V goes to vkCreateShaderModule unchanged (wgpu would re-translate it)."""
    if harness.raw is None:
        pytest.skip("PyPI vulkan bindings missing (make install-vulkan)")
    assert harness.modes == MODES


def test_sample_kernels_q4f16_1_match_llvm(harness, functions):
    funcs = functions("q4f16_1")
    sample = _one_per_kind(funcs)
    assert {"rms_norm", "fused_rope", "take_dequantize"} <= set(sample)
    assert any(n.startswith("dequantize_matmul") for n in sample)
    for name in sample:
        _check(harness, "q4f16_1", name, funcs[name])


@pytest.mark.vulkan  # every-kernel sweep (~3 min)
@pytest.mark.parametrize("quant", ["q4f16_1", "q4f32_1"])
def test_every_fused_kernel_matches_llvm(harness, functions, quant):
    funcs = functions(quant)
    assert len(funcs) >= 35
    for name in sorted(funcs):
        _check(harness, quant, name, funcs[name])
