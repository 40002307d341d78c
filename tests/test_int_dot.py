"""CPU kernels. The integer path: repacked layout, the int8 x int4/int8 kernel against numpy on odd shapes for
every x86 instruction set this CPU runs (read from its extensions: the ISAs form no chain, e.g. Zen 4 has
AVX512-VNNI and not AVX-VNNI), every GGML block format (Q4_0 .. Q6_K, MXFP4) against gguf-py, the CPU
attention kernels against TVM's, and the lowered model (integer kernels present, no float dequantize-matmul
left)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import tvm

from llmc.compiler.cpu import cpu_record, native_cpu
from llmc.compiler.targets import get_target
from llmc.cpu_features import host_extensions, missing_extensions
from llmc.quant import int_dot
from llmc.quant.ggml_formats import FORMATS
from llmc.quant.ggml_layers import INT_DOT_FORMATS, ggml_codes, int_dot_arrays
from llmc.quant.group import GroupQuant
from llmc.quant.int_dot_kernels import int_matmul

# each ISA's kernels are built for the portable preset that has exactly that ISA as its best
ISA_PRESETS = {"avx512vnni": "llvm:avx512vnni", "avxvnni": "llvm:avxvnni", "avx2": "llvm:generic"}


def isa_target(isa: str) -> tvm.target.Target:
    """The ISA's preset (its mcpu and mattr), without fast-math: the kernels' own arithmetic is tested."""
    spec = {key: value for key, value in get_target(ISA_PRESETS[isa]).target.items() if not key.startswith("fast-")}
    return tvm.target.Target({**spec, "num-cores": 2})


def runs_here(isa: str) -> bool:
    """Whether this CPU has every extension the ISA's kernels may use (not an ordering of ISAs)."""
    return host_extensions() is not None and not missing_extensions(cpu_record(isa_target(isa))["extensions"])


RUNNABLE = [isa for isa in int_dot.ISAS if runs_here(isa)]
HOST = tvm.target.Target({"kind": "llvm", **native_cpu()})  # this CPU, less what it lacks


def reference(gq: GroupQuant, x: np.ndarray, packed: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The same maths in numpy: x rounded to int8 per group of 32 (absmax / 127), times the decoded weight."""
    rows, k = x.shape
    groups = gq.num_groups(k)
    padded = np.zeros((rows, groups * 32), np.float32)
    padded[:, :k] = x
    grouped = padded.reshape(rows, groups, 32)
    amax = np.abs(grouped).max(-1)
    inverse = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    codes = np.rint(grouped * inverse[..., None])
    x_rounded = (codes * (amax / np.float32(127))[..., None]).reshape(rows, -1)[:, :k]
    return x_rounded.astype(np.float64) @ gq.dequantize(packed, scale, k).T.astype(np.float64)


@pytest.mark.parametrize("bits", [4, 8])
def test_repack_round_trip_and_te_element(bits):
    gq = GroupQuant(bits, 32, "float16")
    rng = np.random.default_rng(bits)
    weight = rng.standard_normal((37, 80)).astype(np.float32)  # 3 tiles (last partial), 3 groups (last padded)
    packed, scale = gq.quantize(weight)
    codes, scales = int_dot.repack(gq, packed, scale)
    assert codes.shape == (3, 3, 4 if bits == 4 else 8, 64) and codes.dtype == np.uint8
    assert scales.shape == (3, 3, 16) and scales.dtype == np.float16  # the scheme's scales, unwidened
    flat, flat_scales = int_dot.unrepack(gq, codes, scales, 37)
    assert np.array_equal(flat, int_dot.unpack_codes(gq, packed))
    assert np.array_equal(flat_scales, scale)
    # row 5, k = 16 + 4 + 2 of group 1: tile 0, step 1, byte 5*4+2 (4-bit: high nibble)
    k = 32 + 16 + 4 + 2
    byte = codes[0, 1, (k % 32) // 4 % (4 if bits == 4 else 8), 5 * 4 + 2]
    code = (byte >> 4) if bits == 4 else byte
    assert code == int_dot.unpack_codes(gq, packed)[5, k]


@pytest.mark.parametrize("isa", RUNNABLE)
@pytest.mark.parametrize(("bits", "scale_dtype"), [(4, "float32"), (4, "float16"), (8, "float16")])
@pytest.mark.parametrize(("out_features", "in_features", "rows"), [(50, 96, 1), (37, 80, 7), (64, 64, 4), (33, 40, 9)])
def test_kernel_equals_numpy(isa, bits, scale_dtype, out_features, in_features, rows):
    """Rows not a multiple of 16, K not a multiple of the group, activation rows in blocks of 4 and alone."""
    gq = GroupQuant(bits, 32, scale_dtype)
    rng = np.random.default_rng(rows)
    weight = rng.standard_normal((out_features, in_features)).astype(np.float32)
    x = (rng.standard_normal((rows, in_features)) * rng.choice([1e-3, 1.0, 30.0], (rows, 1))).astype(np.float32)
    x[0, :5] = 0  # a group with zeros; a whole zero row when K is small
    packed, scale = gq.quantize(weight)
    codes, scales = int_dot.repack(gq, packed, scale)
    target = isa_target(isa)
    func = int_matmul(out_features, in_features, bits, isa, scale_dtype).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((rows, out_features), np.float32), dev)
    lib["main"](*(tvm.runtime.tensor(a, dev) for a in (x, codes, scales)), out)
    expected = reference(gq, x, packed, scale)
    assert np.abs(out.numpy() - expected).max() <= 1e-5 * max(np.abs(expected).max(), 1e-6)
    exact = x.astype(np.float64) @ gq.dequantize(packed, scale, in_features).T
    assert np.abs(out.numpy() - exact).max() > 0 or not x.any(), "activations should be rounded to int8"


@pytest.mark.parametrize("isa", RUNNABLE)
@pytest.mark.parametrize(("out_features", "in_features", "rows"), [(50, 96, 1), (37, 80, 7), (33, 40, 9)])
def test_kernel_with_minimum_equals_numpy(isa, out_features, in_features, rows):
    """GGML Q4_1's ``w = d * code + m`` (``with_min``): codes 0..15 and a float16 minimum per row and group."""
    groups = -(-in_features // 32)
    gq = GroupQuant(4, 32, "float16")
    rng = np.random.default_rng(rows)
    codes = rng.integers(0, 16, (out_features, groups * 32)).astype(np.uint32)
    d = (rng.random((out_features, groups)) * 0.1).astype(np.float16)
    m = (-rng.random((out_features, groups)) * 0.8).astype(np.float16)
    packed = np.zeros((out_features, groups * 4), np.uint32)
    for j in range(8):  # llmc's group layout: 8 codes per word, weight order
        packed |= codes[:, j::8] << np.uint32(4 * j)
    w_codes, w_scales = int_dot.repack(gq, packed, d)
    x = rng.standard_normal((rows, in_features)).astype(np.float32)
    target = isa_target(isa)
    func = int_matmul(out_features, in_features, 4, isa, "float16", with_min=True).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
    out = tvm.runtime.tensor(np.zeros((rows, out_features), np.float32))
    lib["main"](*(tvm.runtime.tensor(a) for a in (x, w_codes, w_scales, int_dot.repack_scales(m))), out)
    weight = d.astype(np.float32).repeat(32, 1) * codes + m.astype(np.float32).repeat(32, 1)
    padded = np.zeros((rows, groups * 32), np.float32)
    padded[:, :in_features] = x
    grouped = padded.reshape(rows, groups, 32)
    amax = np.abs(grouped).max(-1)
    inverse = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    x_rounded = (np.rint(grouped * inverse[..., None]) * (amax / np.float32(127))[..., None]).reshape(rows, -1)
    expected = x_rounded.astype(np.float64) @ weight.T.astype(np.float64)
    assert np.abs(out.numpy() - expected).max() <= 1e-5 * np.abs(expected).max()


# ---------------------------------------------------------------------- GGML block formats (--quant keep)
def _llama_cpp_quantizer():
    """llama.cpp's ``ggml_quantize_chunk`` from llama-cpp-python's libggml (``make install-bench``), or None."""
    import ctypes
    from pathlib import Path

    try:
        import llama_cpp
    except ImportError:
        return None
    library = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    function = library.ggml_quantize_chunk
    function.restype = ctypes.c_size_t
    function.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, *[ctypes.c_int64] * 3, ctypes.c_void_p]
    return function


def ggml_blocks(name: str, rows: int, cols: int, rng) -> np.ndarray:
    """Raw GGML rows ``uint8 [rows, row bytes]``: the first half quantized from heavy-tailed weights by
    llama.cpp (or gguf-py, which has no K-quant encoder), the rest random bytes with finite fp16 scales
    (every bit pattern of codes and sub-block scales), one block all zero."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    fmt = FORMATS[name]
    raw = rng.integers(0, 256, (rows, cols // fmt.block_size, fmt.block_bytes), dtype=np.uint8)
    for plane in fmt.planes:
        if plane.dtype == "float16":
            scale = (rng.standard_normal(raw.shape[:2]) * rng.choice([1e-4, 1e-2, 1.0], raw.shape[:2])).astype(
                np.float16
            )
            raw[:, :, plane.offset : plane.offset + 2] = scale.view(np.uint8).reshape(*raw.shape[:2], 2)
    if name == "MXFP4":  # e8m0 exponents (byte 0): scales 2^-24 .. 2^4
        raw[:, :, 0] = rng.integers(104, 133, raw.shape[:2], dtype=np.uint8)
    raw[1, 0] = 0
    raw = raw.reshape(rows, -1)
    weight = (rng.standard_t(4, (rows // 2, cols)) * 0.02).astype(np.float32)
    kind = GGMLQuantizationType[name]
    llama_cpp_quantize = _llama_cpp_quantizer()
    if llama_cpp_quantize is not None:
        out = np.zeros((rows // 2, raw.shape[1]), np.uint8)
        llama_cpp_quantize(int(kind), weight.ctypes.data, out.ctypes.data, 0, rows // 2, cols, None)
        raw[: rows // 2] = out
    elif fmt.block_size == 32:
        raw[: rows // 2] = quantize(weight, kind)
    return raw


def ggml_weight(name: str, raw: np.ndarray) -> np.ndarray:
    """gguf-py's dequantization: the reference decode."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    return np.asarray(dequantize(raw, GGMLQuantizationType[name]), np.float32).reshape(raw.shape[0], -1)


@pytest.mark.parametrize("name", list(INT_DOT_FORMATS))
def test_ggml_repack_decodes_exactly_as_gguf_py(name):
    """A GGML part's integer-path arrays hold the file's weights: decoded from the repacked codes, sub-block
    and super-block scales (``int_dot.form_element``), every weight equals gguf-py's, bit for bit."""
    from tvm import te

    rng = np.random.default_rng(len(name))
    rows, cols, form = 37, 512, INT_DOT_FORMATS[name]  # a partial tile; two K-quant super-blocks
    raw = ggml_blocks(name, rows, cols, rng)
    planes = FORMATS[name].split(raw)
    arrays = int_dot_arrays(name, planes)
    assert np.array_equal(int_dot.unrepack_codes(arrays[0], form.bits, form.high_bits, rows), ggml_codes(name, planes))
    inputs = [te.placeholder(a.shape, str(a.dtype), name=f"in{i}") for i, a in enumerate(arrays)]
    second = inputs[2] if len(inputs) > 2 else None
    out = te.compute((rows, cols), lambda r, k: int_dot.form_element(form, inputs[0], inputs[1], second, r, k))
    lib = tvm.compile(te.create_prim_func([*inputs, out]), target=HOST)
    got = tvm.runtime.tensor(np.zeros((rows, cols), np.float32))
    lib(*(tvm.runtime.tensor(a) for a in arrays), got)
    expected = ggml_weight(name, raw)
    differ = got.numpy().view(np.uint32) != expected.view(np.uint32)
    assert not differ.any(), f"{name}: {int(differ.sum())} of {differ.size} weights differ"


def _int8_rounded(x: np.ndarray) -> np.ndarray:
    """x as the kernel sees it: int8 codes per group of 32 (absmax / 127), times the group's scale."""
    rows, k = x.shape
    grouped = x.reshape(rows, -1, 32)
    amax = np.abs(grouped).max(-1)
    inverse = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    return (np.rint(grouped * inverse[..., None]) * (amax / np.float32(127))[..., None]).reshape(rows, k)


# every format on the best ISA here; each new kernel form (5-bit codes, K-quant scales) on the other two
GGML_CASES = [(isa, name) for isa in RUNNABLE[:1] for name in INT_DOT_FORMATS] + [
    (isa, name) for isa in RUNNABLE[1:] for name in ("Q5_0", "Q4_K", "Q6_K")
]


@pytest.mark.parametrize(("isa", "name"), GGML_CASES)
def test_ggml_kernel_equals_gguf_py(isa, name):
    """The integer kernel on a GGML part equals gguf-py's dequantized weights times the int8-rounded
    activations (prefill rows in blocks of 4 and alone, a partial tile, a zero group)."""
    rng = np.random.default_rng(7)
    rows, cols, form = 37, 512, INT_DOT_FORMATS[name]
    raw = ggml_blocks(name, rows, cols, rng)
    x = (rng.standard_normal((5, cols)) * rng.choice([1e-3, 1.0, 30.0], (5, 1))).astype(np.float32)
    x[0, :32] = 0
    target = isa_target(isa)
    func = int_matmul(rows, cols, form.bits, isa, form=form).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
    out = tvm.runtime.tensor(np.zeros((5, rows), np.float32))
    lib["main"](
        tvm.runtime.tensor(x), *(tvm.runtime.tensor(a) for a in int_dot_arrays(name, FORMATS[name].split(raw))), out
    )
    weight = ggml_weight(name, raw).astype(np.float64)
    expected = _int8_rounded(x).astype(np.float64) @ weight.T
    scale = np.abs(expected).max(axis=1, keepdims=True)
    assert (np.abs(out.numpy() - expected) <= 2e-6 * scale).all(), np.abs(out.numpy() - expected).max()
    assert np.abs(out.numpy() - x.astype(np.float64) @ weight.T).max() > 0, "activations should be rounded to int8"


def test_isa_kernels_run_only_where_the_cpu_has_them():
    """Each ISA's preset gives that ISA; RUNNABLE follows this CPU's extensions (AVX-VNNI and AVX512-VNNI
    independently); the host's own build never needs an extension the host lacks."""
    for isa in int_dot.ISAS:
        assert int_dot.target_isa(isa_target(isa)) == isa
    have = host_extensions()
    if have is None:
        pytest.skip("not Linux on x86-64: no CPU extensions to read")
    assert ("avx512vnni" in RUNNABLE) == ({"avx512f", "avx512bw", "avx512vl", "avx512vnni"} <= have)
    assert ("avxvnni" in RUNNABLE) == ({"avx2", "avxvnni"} <= have)
    assert not missing_extensions(cpu_record(get_target("llvm").tvm_target())["extensions"])


def test_target_isa():
    assert int_dot.target_isa(get_target("llvm:generic").tvm_target()) == "avx2"
    assert int_dot.target_isa(tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu"})) is None
    assert int_dot.target_isa(tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"})) is None
    assert int_dot.target_isa(tvm.target.Target({"kind": "llvm", "mcpu": "znver5"})) == "avx512vnni"
    assert int_dot.target_isa(tvm.target.Target({"kind": "cuda"})) is None


INSTRUCTIONS = {"avx512vnni": "vpdpbusd", "avxvnni": "vpdpbusd", "avx2": "vpmaddubsw"}


@pytest.mark.parametrize("target", ["llvm", "llvm:generic"])
def test_compiled_model_uses_integer_kernels(compiled, target):
    """The lowered model has integer matmuls and no float dequantize-matmul; the library holds the ISA's
    dot-product instruction (so a later change cannot silently fall back to the float path)."""
    import json

    host_isa = int_dot.target_isa(get_target("llvm").tvm_target())
    if target != "llvm" and int_dot.target_isa(get_target(target).tvm_target()) == host_isa:
        pytest.skip(f"{target} has this CPU's best integer-dot ISA ({host_isa}): the llvm case checks it")
    folder = compiled("llama_gqa", "q4f16_1", target)
    config = json.loads((folder / "llmc-config.json").read_text())
    assert config["int_dot"] == int_dot.target_isa(get_target(target).tvm_target())
    instruction = INSTRUCTIONS[config["int_dot"]]
    assert config["dtype"] == "float32"
    dump = subprocess.run(["objdump", "-d", str(folder / config["library"])], capture_output=True, text=True)
    if dump.returncode != 0:
        pytest.skip("objdump is not installed")
    assert instruction in dump.stdout


def test_lowered_module_has_no_float_dequantize_matmul(checkpoints):
    from llmc.compile import CompileOptions, plan_model
    from llmc.compiler.build import build_module
    from llmc.compiler.pipeline import make_pipeline

    options = CompileOptions(quant="q4f16_1", context_window=64, prefill_chunk=32)
    plan = plan_model(str(checkpoints["llama_gqa"]), options)
    target = get_target("llvm").tvm_target()
    mod, _ = build_module(plan.module(target), target)
    lowered = make_pipeline(target)(mod)
    names = [gv.name_hint for gv, f in lowered.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert sum(name.startswith("int_dot_matmul") for name in names) >= 5  # qkv, o, gate_up, down, lm_head
    assert not [name for name in names if "dequantize_matmul" in name and not name.startswith("int_dot")]
    plan.cpu_kernels = False  # the exact float path, for reference checks
    mod, _ = build_module(plan.module(target), target)
    names = [gv.name_hint for gv in make_pipeline(target)(mod).functions]
    assert not [name for name in names if name.startswith("int_dot")]


def test_fast_exp_and_silu_multiply():
    """The libm-free exp of the CPU SiLU kernel: a few float32 ulps, plus the rounding of x * log2(e) for
    large |x| (clamped at 2^+-126)."""
    from tvm import te

    from llmc.kernels.cpu_silu import fast_exp

    x = np.concatenate([np.linspace(-80, 80, 4001), [-200.0, 0.0, 1e-8, 88.0]]).astype(np.float32)
    placeholder = te.placeholder((x.size,), "float32")
    func = te.create_prim_func([placeholder, te.compute(placeholder.shape, lambda i: fast_exp(placeholder[i]))])
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=HOST)
    out = tvm.runtime.tensor(np.zeros_like(x), tvm.cpu())
    lib["main"](tvm.runtime.tensor(x, tvm.cpu()), out)
    expected = np.exp(np.clip(x.astype(np.float64), -126 * np.log(2), 126 * np.log(2)))
    assert np.all(np.abs(out.numpy() - expected) <= 4e-7 * (1 + np.abs(x)) * expected)
