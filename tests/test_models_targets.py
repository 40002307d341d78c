"""Build-only checks: the families whose shape differs most from Llama compile for the GPU and phone targets.

In the default run: gemma3, qwen3_moe and gpt2 for android; ``gemma3`` (sliding-window + global layers, module-
applied RoPE with two bases, QK-norm, GELU-tanh, offset norms) for cuda:sm_90a (through the CLI, which prepares
nvcc); ``gemma3`` and ``qwen3_moe`` (top-k routing, gathered expert matmuls, a dense layer) for webgpu (WGSL
codegen; linking the .wasm needs emcc and is ``make test-web``'s job). ``make test-models-builds`` (``--run
builds``) builds every family in FAMILIES for cuda:sm_90a and android and generates its WGSL for webgpu (the
round-5 families among them: LayerNorm phi, gpt_neox, stablelm, starcoder2, cohere; Llama-shaped granite, olmo,
exaone4, glm, ernie4_5, smollm3, arcee, seed_oss, internlm3). q4f16_1 throughout. ``make test-vulkan`` runs
Qwen3-MoE's GPU kernels on lavapipe.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LLMC = str(Path(sys.executable).parent / "llmc")
slow_builds = pytest.mark.builds  # every family for cuda:sm_90a
FAMILIES = ["gemma3", "qwen3_moe", "gemma2", "qwen3", "phi3", "olmo2", "gpt2", "mistral", "mixtral"]
FAMILIES += ["phi", "gpt_neox", "stablelm", "starcoder2", "cohere"]  # LayerNorm families: make test-models-builds
# Llama-shaped by switches (multipliers, NoPE layers, QK-norm, partial rotary, biases): make test-models-builds
FAMILIES += ["granite", "olmo", "exaone4", "glm", "ernie4_5", "smollm3", "arcee", "seed_oss", "internlm3"]
FAMILIES += ["deepseek_v2", "deepseek_v3"]  # MLA over a latent KV head, DeepSeek routing: make test-models-builds
FAMILIES += ["llama4_text"]  # QK-norm/temperature kernels, input-scaled MoE: make test-models-builds
FAMILIES += ["gpt_oss"]  # attention sinks in TVM's GPU kernels (llmc.kernels.gpu_sinks): make test-models-builds
DEFAULT_CUDA = ("gemma3",)  # the others: make test-models-builds
# sliding + global layers with module RoPE, MoE routing, LayerNorm with learned positions: the rest there
DEFAULT_ANDROID = ("gemma3", "qwen3_moe", "gpt2")
DEFAULT_WEBGPU = ("gemma3", "qwen3_moe")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not installed")
@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n in DEFAULT_CUDA else [slow_builds]) for n in FAMILIES])
def test_builds_for_cuda_sm90a(name, family_checkpoints, tmp_path):
    from llmc.compiler.cuda import library_has_device_code

    out = tmp_path / "cuda"
    args = ["compile", str(family_checkpoints[name]), "--target", "cuda:sm_90a", "--quant", "q4f16_1"]
    done = subprocess.run(
        [LLMC, *args, "-o", str(out), "--quiet", "--context-window", "64"], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr
    config = json.loads((out / "llmc-config.json").read_text())
    assert library_has_device_code(out / config["library"])


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[] if n in DEFAULT_ANDROID else [slow_builds]) for n in FAMILIES]
)
def test_builds_for_android(name, compiled):
    folder = compiled(name, "q4f16_1", "android")
    config = json.loads((folder / "llmc-config.json").read_text())
    assert config["target"] == "android" and (folder / config["library"]).stat().st_size > 0


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[] if n in DEFAULT_WEBGPU else [slow_builds]) for n in FAMILIES]
)
def test_codegen_for_webgpu(name, family_checkpoints):
    """Every kernel becomes WGSL: by default Gemma 3's paged-KV sliding-window attention and Qwen3-MoE's routing
    and gathered expert matmuls; every family under ``--run builds``."""
    from tvm import relax

    from llmc.compile import CompileOptions, plan_model
    from llmc.compiler.build import build_module
    from llmc.compiler.pipeline import make_pipeline
    from llmc.compiler.targets import get_target

    options = CompileOptions(target="webgpu", quant="q4f16_1", context_window=64, prefill_chunk=16)
    plan = plan_model(str(family_checkpoints[name]), options)
    target = get_target("webgpu").tvm_target()
    mod, _ = build_module(plan.module(target), target)
    with target:
        executable = relax.build(mod, target, relax_pipeline=make_pipeline(target, None, 2))

    def device_sources(module) -> list[str]:
        found = [module.inspect_source()] if module.kind == "webgpu" else []
        return found + [s for child in module.imports for s in device_sources(child)]

    sources = device_sources(executable.mod)
    assert len(sources) == 1 and "@compute" in sources[0]
    expected = {"gemma3": "sliding_window", "qwen3_moe": "moe_matmul"}.get(name, "batch_decode_paged_kv")
    assert expected in sources[0]  # the sliding layers' attention kernels; the expert matmuls


def test_gemma2_soft_capping_reaches_the_gpu_kernels(family_checkpoints):
    """Gemma 2 builds for GPU targets: TVM's prefill and decode attention kernels cap their scores
    (llmc.kernels.gpu_softcap; `make test-vulkan` checks the numbers on lavapipe)."""
    from tvm import relax, tirx

    from llmc.compile import CompileOptions, plan_model
    from llmc.compiler.build import build_module
    from llmc.compiler.pipeline import make_pipeline
    from llmc.compiler.targets import get_target

    options = CompileOptions(target="webgpu", quant="q4f16_1", context_window=64, prefill_chunk=16)
    plan = plan_model(str(family_checkpoints["gemma2"]), options)
    target = get_target("webgpu").tvm_target()
    mod, _ = build_module(plan.module(target), target)
    kernels = {gv.name_hint: func for gv, func in mod.functions.items() if isinstance(func, tirx.PrimFunc)}
    capped = {name for name, func in kernels.items() if "tanh" in func.script()}
    attention = {"batch_prefill_paged_kv", "batch_decode_paged_kv", "batch_prefill_ragged_kv"}
    attention |= {f"{name}_sliding_window" for name in ("batch_prefill_paged_kv", "batch_decode_paged_kv")}
    assert attention <= capped, " ".join(sorted(capped))
    with target:
        relax.build(mod, target, relax_pipeline=make_pipeline(target, None, 2))
