"""The android target's OpenCL kernels run for real on PoCL (CPU OpenCL) and match the llvm build.

The tiny model is exported for the ``android`` preset at q4f32_1 (PoCL 3.1 has no fp16; the q4f16_1
kernels are covered by clang's syntax check in test_mobile_targets.py) and put through llmc's own
pipeline phases up to scheduling; each fused PrimFunc is then lowered by TVM for OpenCL and its
kernels launched on PoCL by ``opencl_harness``, while the same function from the llvm export
(unscheduled: plain loop nests) runs on the CPU through TVM. Inputs are identical random arrays
(structured index arrays for the attention kernels).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pyopencl", reason="pyopencl not installed (make install-mobile)")

import opencl_harness as harness  # noqa: E402
import pyopencl as cl  # noqa: E402
import tvm  # noqa: E402
from support.checkpoints import TINY_CONTEXT_WINDOW, TINY_PREFILL_CHUNK  # noqa: E402
from tvm import tirx  # noqa: E402

from llmc.compile import CompileOptions, compile_model, plan_model  # noqa: E402
from llmc.compiler.build import build_module  # noqa: E402
from llmc.compiler.pipeline import PHASES  # noqa: E402
from llmc.compiler.targets import get_target  # noqa: E402

QUANT = "q4f32_1"
# every kernel of the model under `--run mobile` (make test-mobile, ~1 min more; fixture every_kernel); else a sample
SIZES = {"seq_len": 5, "batch_size": 3}  # symbolic dims of the dense kernels (not multiples of the tiles)
ATTENTION_WORDS = ("kv", "attn", "page", "merge_state", "tree")


@pytest.fixture(scope="module")
def context():
    try:
        devices = [d for p in cl.get_platforms() for d in p.get_devices()]
    except cl.Error as err:
        pytest.skip(f"no OpenCL platform (install pocl-opencl-icd: make install-mobile): {err}")
    if not devices:
        pytest.skip("no OpenCL device (install pocl-opencl-icd: make install-mobile)")
    return cl.Context(devices[:1])


def scheduled_module(checkpoint, preset: str, stop_before: str) -> tuple[tvm.IRModule, tvm.target.Target]:
    """The tiny model's Relax module for ``preset`` after llmc's phases up to ``stop_before``."""
    options = CompileOptions(
        target=preset, quant=QUANT, context_window=TINY_CONTEXT_WINDOW, prefill_chunk=TINY_PREFILL_CHUNK
    )
    plan = plan_model(str(checkpoint), options)
    plan.cpu_kernels = False  # the llvm reference: the same float kernels (and layout) as the GPU build
    target = get_target(preset).tvm_target()
    mod, _ = build_module(plan.module(target), target)
    with target:
        for phase in PHASES:
            if phase.name == stop_before:
                break
            mod = tvm.transform.Sequential(phase.passes(target, 2))(mod)
    return mod, target


@pytest.fixture(scope="module")
def modules(checkpoints):
    """(android module after dlight scheduling, its target, llvm module before scheduling)."""
    android, target = scheduled_module(checkpoints["llama_gqa"], "android", "lower_dataflow")
    cpu, _ = scheduled_module(checkpoints["llama_gqa"], "llvm", "schedule")
    return android, target, cpu


SHIPPED_PREFIX = "pocl_test_"


@pytest.fixture(scope="module")
def shipped(checkpoints, tmp_path_factory) -> dict[str, str]:
    """Kernel name -> definition, from the .cl beside a real `--target android` q4f32_1 library."""
    options = CompileOptions(
        target="android",
        quant=QUANT,
        output=tmp_path_factory.mktemp("pocl") / "android-q4f32_1",
        quiet=True,
        context_window=TINY_CONTEXT_WINDOW,
        prefill_chunk=TINY_PREFILL_CHUNK,
        system_lib_prefix=SHIPPED_PREFIX,
    )
    folder = compile_model(str(checkpoints["llama_gqa"]), options)
    source = (folder / "model-android.cl").read_text().replace(SHIPPED_PREFIX, "")
    return {name: definition(program, name) for name, program in harness.split_programs(source).items()}


def definition(program: str, kernel: str) -> str:
    """The kernel's definition (each program also declares every other kernel first)."""
    return program.split(f"__kernel void {kernel}(")[-1]


def prim_funcs(mod: tvm.IRModule) -> list[str]:
    return sorted(gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc))


def random_inputs(func: tirx.PrimFunc, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for param in harness.buffer_params(func):
        shape = [int(d) if isinstance(d, tirx.IntImm) else SIZES.get(d.name, 4) for d in param.ty.shape]
        dtype = str(param.ty.dtype)
        if dtype == "uint32":  # packed 4-bit weights: any bits are valid
            arrays[param.name] = rng.integers(0, 2**32, shape, dtype=np.uint64).astype(np.uint32)
        elif dtype.startswith("int"):  # token ids / positions
            arrays[param.name] = rng.integers(0, 4, shape).astype(dtype)
        else:
            arrays[param.name] = rng.standard_normal(shape).astype(dtype)
    return arrays


def compare(name, modules, shipped, context, arrays, scalars=None, cpu_name=None) -> int:
    """Run ``name`` on PoCL and on llvm with the same inputs; assert every buffer agrees. Returns kernels run.

    The kernels run are checked to be, byte for byte, those the android library ships.
    """
    android, target, cpu = modules
    lowered = harness.lower(android[name], name, target)
    for kernel in lowered.kernels:
        assert definition(kernel.program, kernel.name) == shipped[kernel.name], (
            f"{kernel.name} differs from the library"
        )
    got = harness.run_on_opencl(lowered, arrays, scalars or {}, context)
    want = harness.run_on_llvm(cpu[cpu_name or name], name, arrays, scalars or {})
    for key, expected in want.items():
        scale = max(1.0, float(np.abs(expected).max())) if expected.dtype.kind == "f" else 0
        np.testing.assert_allclose(got[key], expected, rtol=1e-4, atol=1e-4 * scale, err_msg=f"{name}: {key}")
    return len(lowered.kernels)


def test_matmul_and_gemv_kernels(modules, shipped, context, every_kernel):
    """Every (fused) dequantize-matmul: prefill matmuls (seq_len rows) and decode GEMVs (batch_size rows)."""
    names = [n for n in prim_funcs(modules[0]) if "dequantize_matmul" in n]
    assert len(names) >= 10
    if not every_kernel:
        rows = {n: [str(d) for d in harness.buffer_params(modules[0][n])[0].ty.shape] for n in names}
        names = [
            next(n for n in names if "seq_len" in rows[n]),  # prefill matmul
            next(n for n in names if "batch_size" in rows[n]),  # batch decode GEMV
            next(n for n in names if all(d.startswith("T.int64") for d in rows[n])),  # single-token GEMV
        ]
    for seed, name in enumerate(names):
        assert compare(name, modules, shipped, context, random_inputs(modules[0][name], seed)) >= 1


def test_rms_norm_kernels(modules, shipped, context):
    names = [n for n in prim_funcs(modules[0]) if n.startswith("rms_norm")]
    assert len(names) == 3
    for seed, name in enumerate(names):
        compare(name, modules, shipped, context, random_inputs(modules[0][name], seed))


def test_other_dense_kernels(modules, shipped, context, every_kernel):
    """The rest outside the KV cache: embedding take/dequantize, RoPE, SiLU-multiply, reshapes."""
    names = [
        n
        for n in prim_funcs(modules[0])
        if "dequantize_matmul" not in n and not n.startswith("rms_norm") and not any(w in n for w in ATTENTION_WORDS)
    ]
    sample = ["fused_rope", "take_dequantize", "fused_split_silu_multiply"]
    assert set(sample) <= set(names)
    names = names if every_kernel else sample
    for seed, name in enumerate(names):
        func = modules[0][name]
        scalars = {p.name: 1 for p in func.params if p not in harness.buffer_params(func)}  # e.g. apply_rope
        compare(name, modules, shipped, context, random_inputs(func, seed), scalars)


ROPE = {"rotary_mode": 1, "rope_scale": 1.0, "rope_theta": 10000.0, "sm_scale": 0.25}


def test_prefill_attention_kernel(modules, shipped, context):
    """Ragged causal prefill attention with RoPE in the kernel: two sequences of 3 and 5 tokens."""
    rng = np.random.default_rng(7)
    lengths = [3, 5]
    total = sum(lengths)
    indptr = np.array([0, 3, 8], dtype="int32")
    arrays = {
        "q": rng.standard_normal((total, 4, 16)).astype("float32"),
        "q_indptr": indptr,
        "k": rng.standard_normal((total, 2, 16)).astype("float32"),
        "v": rng.standard_normal((total, 2, 16)).astype("float32"),
        "kv_indptr": indptr.copy(),
        "q_rope_position": np.concatenate([np.arange(n) for n in lengths]).astype("int32"),
        "k_rope_pos_offset": np.zeros(2, dtype="int32"),
        "output": np.zeros((total, 4, 16), dtype="float32"),
        "lse": np.zeros((total, 4), dtype="float32"),
    }
    compare("batch_prefill_ragged_kv", modules, shipped, context, arrays, {"causal": 1, **ROPE})


def test_decode_attention_kernel(modules, shipped, context):
    """Paged decode attention: sequence 0 spans pages 1 and 3 (21 tokens), sequence 1 page 0 (9 tokens)."""
    rng = np.random.default_rng(8)
    arrays = {
        "Q": rng.standard_normal((2, 4, 16)).astype("float32"),
        "pages": rng.standard_normal((4, 2, 2, 16, 16)).astype("float32"),
        "page_table_indptr": np.array([0, 2, 3], dtype="int32"),
        "page_table_values": np.array([1, 3, 0], dtype="int32"),
        "length_info": np.array([5, 9], dtype="int32"),  # tokens on each sequence's last page
        "k_rope_pos_offset": np.zeros(2, dtype="int32"),
        "q_rope_position": np.array([20, 8], dtype="int32"),
        "output": np.zeros((2, 4, 16), dtype="float32"),
        "lse": np.zeros((2, 4), dtype="float32"),
    }
    compare("batch_decode_paged_kv", modules, shipped, context, arrays, ROPE, cpu_name="batch_decode_paged_kv_cpu")
