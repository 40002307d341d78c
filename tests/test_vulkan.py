"""--target vulkan: TVM's binary formats read back, the WGSL -> Vulkan-layout rewrite, naga's SPIR-V
(validated by spirv-val, bindings checked), and a tiny model compiled end to end.

TVM's wheel has no Vulkan runtime, so the library cannot be loaded here; the tests parse it back and
check that TVM's own loader asks for ``ffi.Module.load_from_bytes.vulkan`` (the module kind is
right). Running the packed SPIR-V is tests/test_wgsl_kernels.py.
"""

from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest
import tvm
from support.artifacts import fake_model_section
from tvm import te
from tvm.s_tir import dlight as dl

from llmc.compiler import spirv, tvm_format, vulkan
from llmc.compiler.targets import get_target
from llmc.errors import LlmcError

needs_naga = pytest.mark.skipif(not spirv.naga_available(), reason="node + naga-wasm missing (make install-vulkan)")
needs_spirv_val = pytest.mark.skipif(
    shutil.which("spirv-val") is None, reason="spirv-val missing (make install-vulkan)"
)


def _build(with_scalar: bool) -> tvm.runtime.Module:
    """A one-kernel function built with the vulkan preset's TVM target (WGSL kernel, x86-64 host)."""
    n = te.var("n") if with_scalar else 300
    a = te.placeholder((n,), name="A")
    b = te.compute(a.shape, lambda i: a[i] * 2.0 + 1.0, name="B")
    func = te.create_prim_func([a, b]).with_attr("global_symbol", "axpb")
    target = get_target("vulkan").tvm_target()
    with target:
        mod = dl.ApplyDefaultSchedule(dl.gpu.Fallback())(tvm.IRModule({"axpb": func}))
        return tvm.compile(mod, target=target)


def _blob(lib) -> bytes:
    return bytes(tvm.get_global_func("runtime.ModulePackImportsToTensor")(lib.mod).numpy())


@pytest.fixture(scope="module")
def axpb():
    return _build(with_scalar=True)


def test_library_blob_and_webgpu_module_parse_back(axpb):
    raw = _blob(axpb)
    blob = tvm_format.read_library_blob(raw)
    assert [kind for kind, _ in blob.modules] == ["_lib", "webgpu"]
    assert blob.indptr == [0, 1, 1] and blob.children == [1]
    assert tvm_format.write_library_blob(blob) == raw  # byte-identical round trip
    fmap, wgsl = tvm_format.read_webgpu_module(blob.modules[1][1])
    info = fmap["axpb_kernel"]
    assert info.arg_types == [tvm_format.HANDLE, tvm_format.HANDLE, (0, 32, 1)]
    assert info.launch_param_tags[:2] == ["blockIdx.x", "threadIdx.x"]
    assert "fn axpb_kernel(" in wgsl["axpb_kernel"]


def test_truncated_blob_is_a_clear_error(axpb):
    raw = _blob(axpb)
    with pytest.raises(tvm_format.FormatError, match="header says"):
        tvm_format.read_library_blob(raw[:-5])


def test_vulkan_module_round_trip():
    fmap = {"k": tvm_format.FunctionInfo("k", [tvm_format.HANDLE, (0, 32, 1)], ["blockIdx.x", "threadIdx.x"])}
    shaders = {"k": tvm_format.SpirvShader(tvm_format.FLAG_USE_UBO, [0x07230203, 1, 2, 3])}
    data = tvm_format.write_vulkan_module(fmap, shaders)
    assert data[:14] == struct.pack("<Q", 6) + b"vulkan"
    assert tvm_format.read_vulkan_module(data) == (fmap, shaders)


def test_wgsl_rewrite_to_vulkan_layout(axpb):
    _, wgsl = tvm_format.read_webgpu_module(tvm_format.read_library_blob(_blob(axpb)).modules[1][1])
    code, n_scalars = spirv.wgsl_for_vulkan(wgsl["axpb_kernel"])
    assert n_scalars == 1
    assert "@size(8) n: i32" in code and "packGridDimX" not in code
    assert "var<uniform> podArgs" in code

    static = _build(with_scalar=False)
    _, wgsl = tvm_format.read_webgpu_module(tvm_format.read_library_blob(_blob(static)).modules[1][1])
    code, n_scalars = spirv.wgsl_for_vulkan(wgsl["axpb_kernel"])
    assert n_scalars == 0 and "uniform" not in code and "PODArgs" not in code
    with pytest.raises(spirv.SpirvError, match="PODArgs"):
        spirv.wgsl_for_vulkan("fn f() {}")


@needs_naga
@needs_spirv_val
def test_spirv_has_tvm_vulkan_bindings(axpb):
    webgpu_bytes = tvm_format.read_library_blob(_blob(axpb)).modules[1][1]
    fmap, shaders = tvm_format.read_vulkan_module(vulkan.webgpu_to_vulkan(webgpu_bytes, validate=True))
    assert fmap["axpb_kernel"].launch_param_tags == ["blockIdx.x", "threadIdx.x"]  # no paramWriteAccess
    shader = shaders["axpb_kernel"]
    assert shader.uses_ubo
    layout = spirv.decorations(shader.words)
    assert layout["entry_points"] == ["axpb_kernel"]
    resources = sorted((r["binding"], r["set"], r["storage"]) for r in layout["resources"].values())
    assert resources == [(0, 0, "StorageBuffer"), (1, 0, "StorageBuffer"), (2, 0, "Uniform")]
    with pytest.raises(spirv.SpirvError, match="spirv-val rejected"):
        spirv.spirv_val(shader.words[:-3])  # a truncated module is rejected, so validation is real


def test_missing_naga_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(spirv, "NAGA_DIR", tmp_path)
    with pytest.raises(LlmcError, match="make install-vulkan"):
        spirv.wgsl_to_spirv({"k": "fn k() {}"})


@pytest.fixture(scope="module")
def vulkan_artifact(compiled):
    """The tiny Llama, q4f16_1, compiled with ``--target vulkan``."""
    if not spirv.naga_available() or shutil.which("spirv-val") is None:
        pytest.skip("node + naga-wasm or spirv-val missing (make install-vulkan)")
    return compiled("llama_gqa", "q4f16_1", "vulkan")


def test_compile_tiny_model_for_vulkan(vulkan_artifact):
    library = vulkan_artifact / "model-vulkan.so"
    blob = vulkan.read_library(library)
    assert [kind for kind, _ in blob.modules] == ["relax.VMExecutable", "_lib", "vulkan"]
    fmap, shaders = tvm_format.read_vulkan_module(blob.modules[2][1])
    assert len(shaders) >= 40 and set(fmap) == set(shaders)
    for name, shader in shaders.items():
        layout = spirv.decorations(shader.words)
        assert layout["entry_points"] == [name]
        bindings = sorted(r["binding"] for r in layout["resources"].values())
        info = fmap[name]
        assert bindings == list(range(info.num_buffers + shader.uses_ubo)), name
        assert shader.uses_ubo == bool(info.scalar_types)
        assert not any(t.startswith("paramWriteAccess") for t in info.launch_param_tags)
        if shader.uses_ubo:  # scalars 8 bytes apart: TVM's ArgUnion64 slots
            slots = [8 * i for i in range(len(info.scalar_types))]
            assert any(sorted(o.values()) == slots for o in layout["member_offsets"].values()), name
    spirv.spirv_val(shaders[sorted(shaders)[0]].words)
    # TVM's own loader reads the blob and asks for the Vulkan runtime this wheel lacks
    with pytest.raises(Exception, match="load_from_bytes.vulkan"):
        tvm.runtime.load_module(str(library))


def _rel_err(a, b) -> float:
    return float(np.abs(a.astype("float64") - b).max() / np.abs(b).max())


def _gpu_and_cpu_steps(gpu, reference) -> list:
    """The same steps on both engines, as (gpu, cpu) logits pairs: two prefill chunks (ragged, then paged
    attention + merge), decode steps, a ragged batch, a batch decode."""
    pairs = []
    for engine in (gpu, reference):
        engine.add_sequence(0)
        engine.add_sequence(1)
    for chunk in ([5, 17, 33, 2, 9], [41, 7, 12]):
        pairs.append((gpu.prefill(0, chunk), reference.prefill(0, chunk)))
    token = int(pairs[-1][1].argmax())
    for _ in range(3):
        pairs.append((gpu.decode(0, token), reference.decode(0, token)))
        token = int(pairs[-1][1].argmax())
    pairs.append((gpu.batch_prefill([1], [[3, 30, 8]]), reference.batch_prefill([1], [[3, 30, 8]])))
    pairs.append((gpu.batch_decode([0, 1], [token, 4]), reference.batch_decode([0, 1], [token, 4])))
    return pairs


@pytest.mark.vulkan  # the whole model on lavapipe: ~2.5 min per driver path
@pytest.mark.parametrize("through", ["wgpu", "vulkan"])
def test_vulkan_library_runs_tiny_model_on_lavapipe(vulkan_artifact, compiled, through, tmp_path):
    """The compiled library itself (host code + packed SPIR-V) generates on lavapipe like the llvm build;
    ``vulkan`` hands the SPIR-V words to the driver unchanged, ``wgpu`` re-translates them."""
    pytest.importorskip(through, reason=f"{through} missing (make install-vulkan)")
    from kernel_harness import RawVulkanRunner, VulkanLibraryEmulator, WgpuRunner

    from llmc.runtime.engine import Engine

    try:
        runner = WgpuRunner() if through == "wgpu" else RawVulkanRunner()
    except Exception as e:
        pytest.skip(f"no Vulkan device (Mesa lavapipe: make install-vulkan): {str(e).splitlines()[0]}")
    reference = Engine(compiled("llama_gqa", "q4f16_1", cpu_kernels="float"))  # the same float maths as the GPU
    artifact = shutil.copytree(vulkan_artifact, tmp_path / "vk")  # TVM reads a library path's blob once
    with VulkanLibraryEmulator(runner) as emulator:
        gpu = Engine(artifact, device="webgpu")
        pairs = _gpu_and_cpu_steps(gpu, reference)
        fork = tvm.get_global_func("vm.builtin.kv_state_fork_sequence")
        for engine in (gpu, reference):
            fork(engine.kv_cache, 0, 2, 5)  # mid-page: the shared page is copied
        pairs.append((gpu.decode(2, 11), reference.decode(2, 11)))
        called, kernels = emulator.called, emulator.kernels
    for got, expected in pairs:
        assert _rel_err(got, expected) < 2e-2
        assert np.array_equal(got.argmax(-1), expected.argmax(-1))
    assert {"batch_prefill_ragged_kv_kernel", "batch_prefill_paged_kv_kernel", "batch_decode_paged_kv_kernel"} <= called
    assert {"tir_attention_merge_state_kernel", "copy_single_page_kernel"} <= called
    assert len(called) >= 25, sorted(kernels - called)


@pytest.mark.vulkan  # the whole model on lavapipe
@pytest.mark.parametrize("name", ["qwen3_moe", "gemma2"])
def test_vulkan_family_library_runs_on_lavapipe(name, compiled, tmp_path):
    """GPU kernels of the families whose kernels differ most generate on lavapipe like the float CPU build
    (prefill chunks, decode steps, a batch decode): Qwen3-MoE's routing, top-k and gathered expert matmuls
    under dlight's schedules; Gemma 2's soft-capped attention (TVM's kernels, patched by
    llmc.kernels.gpu_softcap) against llmc's CPU kernels, which are checked against transformers."""
    pytest.importorskip("vulkan", reason="vulkan missing (make install-vulkan)")
    if not spirv.naga_available() or shutil.which("spirv-val") is None:
        pytest.skip("node + naga-wasm or spirv-val missing (make install-vulkan)")
    from kernel_harness import RawVulkanRunner, VulkanLibraryEmulator

    from llmc.runtime.engine import Engine

    try:
        runner = RawVulkanRunner()
    except Exception as e:
        pytest.skip(f"no Vulkan device (Mesa lavapipe: make install-vulkan): {str(e).splitlines()[0]}")
    reference = Engine(compiled(name, "q4f16_1", cpu_kernels="float"))
    artifact = shutil.copytree(compiled(name, "q4f16_1", "vulkan"), tmp_path / "vk")
    with VulkanLibraryEmulator(runner) as emulator:
        gpu = Engine(artifact, device="webgpu")
        # (Gemma 2's sliding layers: the Engine decodes the batch one sequence at a time on GPUs, see TVM_NOTES)
        pairs = _gpu_and_cpu_steps(gpu, reference)
        assert gpu.serial_batch_decode == (name == "gemma2")
        called = emulator.called
    for got, expected in pairs:
        assert _rel_err(got, expected) < 2e-2
        assert np.array_equal(got.argmax(-1), expected.argmax(-1))
    if name == "qwen3_moe":
        assert any("moe_matmul" in k for k in called) and any("topk" in k for k in called), sorted(called)


def _lavapipe_runner():
    pytest.importorskip("vulkan", reason="vulkan missing (make install-vulkan)")
    if not spirv.naga_available() or shutil.which("spirv-val") is None:
        pytest.skip("node + naga-wasm or spirv-val missing (make install-vulkan)")
    from kernel_harness import RawVulkanRunner

    try:
        return RawVulkanRunner()
    except Exception as e:
        pytest.skip(f"no Vulkan device (Mesa lavapipe: make install-vulkan): {str(e).splitlines()[0]}")


def _control_head_steps(reference_dir, vulkan_dir, tmp_path) -> None:
    """A model whose queries carry control heads (llmc.kernels.gpu_sinks) generates on lavapipe like llmc's CPU
    kernels (checked against transformers in test_models_gptoss / test_models_llama4): a prompt longer than the
    prefill chunk (ragged, then paged attention), a child forked mid-page whose prefill and batch decode run a kernel
    per block depth (a sink must enter each softmax once, masks hold across depths), and decode steps. float32
    activations: in float16 a near-tie of two router logits may pick another expert than the CPU does."""
    from kernel_harness import VulkanLibraryEmulator

    from llmc.runtime.engine import Engine

    runner = _lavapipe_runner()
    reference = Engine(reference_dir)
    artifact = shutil.copytree(vulkan_dir, tmp_path / "vk")  # TVM reads a library path's blob once
    rng = np.random.default_rng(11)
    parent = rng.integers(3, reference.vocab_size, 37).tolist()
    child = parent[:21] + rng.integers(3, reference.vocab_size, 13).tolist()
    pairs = []
    with VulkanLibraryEmulator(runner) as emulator:
        gpu = Engine(artifact, device="webgpu")
        assert not gpu.serial_batch_decode  # every layer of a control-head cache is full attention in TVM's cache
        for engine in (gpu, reference):
            engine.add_sequence(0)
        pairs.append((gpu.prefill(0, parent[:34]), reference.prefill(0, parent[:34])))
        for engine in (gpu, reference):
            engine.fork_sequence(0, 1, 21)
        pairs.append((gpu.prefill(1, child[21:30]), reference.prefill(1, child[21:30])))
        for step in range(3):
            tokens = [parent[34 + step], child[30 + step]]
            pairs.append((gpu.batch_decode([0, 1], tokens), reference.batch_decode([0, 1], tokens)))
        pairs.append((gpu.decode(1, child[33]), reference.decode(1, child[33])))
        called = emulator.called
    for got, expected in pairs:
        assert _rel_err(got, expected) < 1e-4
    assert {"batch_prefill_ragged_kv_kernel", "batch_prefill_paged_kv_kernel", "batch_decode_paged_kv_kernel"} <= called


@pytest.mark.vulkan  # the whole model on lavapipe
def test_vulkan_attention_sinks_on_lavapipe(compiled, tmp_path):
    """GPT-OSS: attention sinks and its 8-token sliding layer (masked by key position) in TVM's GPU kernels."""
    _lavapipe_runner()
    reference = compiled("gpt_oss", "q4f32_1", cpu_kernels="float")
    _control_head_steps(reference, compiled("gpt_oss", "q4f32_1", "vulkan"), tmp_path)


@pytest.mark.vulkan  # the whole model on lavapipe
def test_vulkan_chunked_attention_on_lavapipe(tmp_path):
    """Llama 4 with a 16-token attention chunk in a 128-token build: chunks masked in TVM's GPU kernels."""
    from support.checkpoints import make_checkpoint

    from llmc.compile import CompileOptions, compile_model

    _lavapipe_runner()
    checkpoint = make_checkpoint(tmp_path / "ckpt", "llama4_text", seed=41, overrides={"attention_chunk_size": 16})
    built = {}
    for target, kernels in (("llvm", "float"), ("vulkan", "int8")):
        options = CompileOptions(
            target=target, quant="q4f32_1", output=tmp_path / target, context_window=128, prefill_chunk=24,
            max_batch_size=4, cpu_kernels=kernels, quiet=True,
        )  # fmt: skip
        built[target] = compile_model(str(checkpoint), options)
    _control_head_steps(built["llvm"], built["vulkan"], tmp_path)


def test_run_on_a_vulkan_artifact_without_a_vulkan_runtime_is_a_clear_error(tmp_path):
    """The PyPI wheel has no Vulkan runtime: `llmc run` says what loads the library instead of crashing."""
    import json

    from click.testing import CliRunner

    from llmc.artifact import FORMAT_VERSION
    from llmc.cli import main
    from llmc.compiler.targets import get_target

    folder = tmp_path / "vk"
    folder.mkdir()
    config = {"format_version": FORMAT_VERSION, "stage": "compiled", "target": "vulkan", "device": "vulkan"}
    config |= {"library": "model-vulkan.so", "quantization": "q0f32", "params": [], "weights": [], "dtype": "float32"}
    config |= {"model": fake_model_section(), "context_window": 128, "prefill_chunk": 24, "max_batch_size": 1}
    preset = get_target("vulkan")
    config["runs_on"] = preset.backend.runs_on(preset, config["library"])  # what llmc compile records
    (folder / "llmc-config.json").write_text(json.dumps(config))
    (folder / "model-vulkan.so").write_bytes(b"\x7fELF placeholder")
    done = CliRunner().invoke(main, ["run", str(folder), "--prompt", "hi"])
    assert done.exit_code == 1 and "Traceback" not in done.output
    assert "USE_VULKAN=ON" in done.output and str(folder) in done.output
