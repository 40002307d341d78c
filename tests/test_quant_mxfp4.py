"""MXFP4 kept as stored (``--quant keep``): ggml's MXFP4 blocks decode bit-exactly in llmc's TE kernel and its
integer-path arrays (every exponent, every code, against gguf-py's own dequantize); the decode feeding a matmul runs
on lavapipe as on the CPU (``--run vulkan``); a dense GGUF with MXFP4 matrices and embedding computes what its
dequantized build computes (``--run slow``). The gpt-oss checks (a GGUF from llama.cpp's converter, an HF MXFP4
checkpoint) are in tests/test_gguf_families.py and tests/test_models_gptoss.py."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import te

from llmc.compiler.targets import get_target
from llmc.quant import int_dot
from llmc.quant.ggml_formats import FORMATS
from llmc.quant.ggml_layers import INT_DOT_FORMATS, int_dot_arrays

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType  # noqa: E402
from gguf.quants import dequantize  # noqa: E402

MXFP4 = FORMATS["MXFP4"]


def every_block() -> np.ndarray:
    """Raw MXFP4 rows ``uint8 [256, 16 * 17]``: row ``e`` has exponent ``e`` in each of its 16 blocks, whose
    code bytes run through all 256 values (every pair of codes at every exponent, subnormal scales included)."""
    raw = np.empty((256, 16, 17), np.uint8)
    raw[:, :, 0] = np.arange(256, dtype=np.uint8)[:, None]
    raw[:, :, 1:] = np.arange(256, dtype=np.uint8).reshape(16, 16)
    return raw.reshape(256, -1)


def gguf_py(raw: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.asarray(dequantize(raw, GGMLQuantizationType.MXFP4), np.float32).reshape(raw.shape[0], -1)


def run_te(element, arrays: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """``element(placeholders, row, k)`` computed over ``shape`` on this CPU."""
    inputs = [te.placeholder(a.shape, str(a.dtype), name=f"in{i}") for i, a in enumerate(arrays)]
    out = te.compute(shape, lambda r, k: element(inputs, r, k), name="dequantize")
    lib = tvm.compile(te.create_prim_func([*inputs, out]), target=get_target("llvm").tvm_target())
    got = tvm.runtime.tensor(np.zeros(shape, np.float32))
    lib(*(tvm.runtime.tensor(a) for a in arrays), got)
    return got.numpy()


def assert_bit_equal(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    same = (got.view(np.uint32) == expected.view(np.uint32)) | (np.isnan(got) & np.isnan(expected))
    assert same.all(), f"{what}: {int((~same).sum())} of {same.size} weights differ from gguf-py's"


@pytest.mark.parametrize("blocks", [16, 15])  # 15: a row's exponents end inside a word
def test_mxfp4_planes_hold_the_file_bytes_and_decode_as_gguf_py(blocks):
    raw = np.ascontiguousarray(every_block()[:, : blocks * 17])
    planes = MXFP4.split(raw)
    assert planes["e"].dtype == np.uint32 and planes["e"].shape == (256, 4)  # four exponents per word
    assert planes["qs"].dtype == np.uint32 and planes["qs"].shape == (256, 4 * blocks)
    assert {n: (s, d) for n, (s, d) in MXFP4.plane_shapes(256, 32 * blocks).items()} == {
        n: (a.shape, str(a.dtype)) for n, a in planes.items()
    }
    assert (MXFP4.join(planes) == raw).all()
    names = [p.name for p in MXFP4.planes]
    with np.errstate(all="ignore"):
        got = run_te(
            lambda ins, r, k: MXFP4.te_element(dict(zip(names, ins)), r, k),
            [planes[n] for n in names],
            (256, 32 * blocks),
        )
    assert_bit_equal(got, gguf_py(raw), "TE decode")


def test_mxfp4_integer_path_arrays_decode_as_gguf_py():
    """The CPU integer layout (5-bit codes, float32 scales) holds the same weights, bit for bit (finite ones: the
    kernel test in tests/test_int_dot.py multiplies them)."""
    raw = np.ascontiguousarray(every_block()[:250, : 15 * 17])  # from e = 254, 12 * 2^(e - 128) is infinite
    form = INT_DOT_FORMATS["MXFP4"]
    arrays = int_dot_arrays("MXFP4", MXFP4.split(raw))
    codes = int_dot.unrepack_codes(arrays[0], form.bits, form.high_bits, raw.shape[0])
    assert codes.min() == 4 and codes.max() == 28  # -12 .. 12, offset 16
    got = run_te(lambda ins, r, k: int_dot.form_element(form, ins[0], ins[1], None, r, k), arrays, (250, 480))
    assert_bit_equal(got, gguf_py(raw), "integer-path decode")


@pytest.mark.vulkan  # needs wgpu and Mesa lavapipe (make install-vulkan); ~15 s
def test_mxfp4_dequantize_matmul_on_lavapipe_equals_llvm(monkeypatch):
    """The MXFP4 decode feeding a matmul, scheduled by dlight for the vulkan preset (WGSL: the exponent words read
    as 32-bit loads), runs on lavapipe as on the CPU: WGSL and SPIR-V paths give the llvm build's output."""
    pytest.importorskip("wgpu", reason="wgpu missing (make install-vulkan)")
    import kernel_harness

    random = kernel_harness._random

    def finite_exponents(shape, dtype, rng):
        if dtype == "uint32" and shape[-1] == 2:  # the exponent plane: bytes 110..140, finite weights
            return rng.integers(110, 141, size=[*shape, 4], dtype=np.uint8).view(np.uint32).reshape(shape)
        return random(shape, dtype, rng)

    monkeypatch.setattr(kernel_harness, "_random", finite_exponents)
    rows, cols, m = 64, 192, 3  # 6 blocks a row: each row's second exponent word is half padding
    shapes = MXFP4.plane_shapes(rows, cols)
    assert shapes["e"] == ((rows, 2), "uint32") and shapes["qs"] == ((rows, 24), "uint32")
    x = te.placeholder((m, cols), "float32", name="x")
    planes = {n: te.placeholder(s, d, name=n) for n, (s, d) in shapes.items()}
    weight = te.compute((rows, cols), lambda r, k: MXFP4.te_element(planes, r, k), name="dequantize")
    k = te.reduce_axis((0, cols), name="k")
    y = te.compute((m, rows), lambda i, j: te.sum(x[i, k] * weight[j, k], axis=k), name="matmul")
    try:
        harness = kernel_harness.KernelHarness()
    except Exception as e:
        pytest.skip(f"no Vulkan device (Mesa lavapipe: make install-vulkan): {str(e).splitlines()[0]}")
    result = harness.compare("mxfp4_matmul", te.create_prim_func([x, *planes.values(), y]))
    assert result.outputs == 1 and result.max_rel_err and all(e <= 1e-6 for e in result.max_rel_err.values()), result


# ---------------------------------------------------------------------- a dense GGUF with MXFP4 matrices
MXFP4_LAYERS = [  # (q, k, v, o, gate, up, down) per layer: q/k/v runs MXFP4 | Q4_K | MXFP4
    ("MXFP4", "Q4_K", "MXFP4", "MXFP4", "MXFP4", "MXFP4", "MXFP4"),
    ("Q8_0", "MXFP4", "MXFP4", "Q4_0", "MXFP4", "Q8_0", "MXFP4"),
]


@pytest.fixture(scope="module")
def mxfp4_llama_builds(tmp_path_factory):
    """A 2-layer llama GGUF (tests/test_gguf_quant.py's writer) whose matrices and tied embedding are MXFP4 (gguf-py's
    encoder) beside other formats, built at q0f32, keep (float kernels) and keep on the CPU integer path."""
    import test_gguf_quant
    from support.checkpoints import TINY_CONTEXT_WINDOW, TINY_PREFILL_CHUNK

    from llmc.compile import CompileOptions, compile_model

    root = tmp_path_factory.mktemp("mxfp4-llama")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(test_gguf_quant, "LAYER_TYPES", MXFP4_LAYERS)
        patch.setattr(test_gguf_quant, "EMBEDDING_TYPE", "MXFP4")
        patch.setattr(test_gguf_quant, "QUANTIZABLE", {*test_gguf_quant.QUANTIZABLE, "MXFP4"})
        path = test_gguf_quant.write_mixed_gguf(root / "mxfp4.gguf", seed=3)
    builds = {}
    for label, quant, kernels in [("q0f32", "q0f32", "float"), ("keep", "keep", "float"), ("int8", "keep", "int8")]:
        options = CompileOptions(
            quant=quant,
            output=root / label,
            quiet=True,
            context_window=TINY_CONTEXT_WINDOW,
            prefill_chunk=TINY_PREFILL_CHUNK,
            cpu_kernels=kernels,
        )
        builds[label] = compile_model(str(path), options)
    return builds


@pytest.mark.slow  # three builds (~2 min)
def test_mxfp4_linear_layers_and_embedding_equal_the_dequantized_build(mxfp4_llama_builds):
    """MXFP4 in dense layers (fused q/k/v runs mixing formats) and as the tied embedding / LM head: ``keep`` computes
    what the dequantized (q0f32) build computes; the integer path (MXFP4 as 5-bit codes, int8 activations) is close."""
    import json

    import test_gguf_quant

    config = json.loads((mxfp4_llama_builds["keep"] / "llmc-config.json").read_text())
    runs = config["tensor_formats"]["runs"]
    assert runs["model.layers.0.self_attn.qkv_proj.weight"] == [["MXFP4", 256], ["Q4_K", 128], ["MXFP4", 128]]
    assert runs["model.embed_tokens.weight"] == [["MXFP4", test_gguf_quant.VOCAB]]
    ids = np.random.default_rng(4).integers(2, test_gguf_quant.VOCAB, 12).tolist()
    expected = test_gguf_quant._logits(mxfp4_llama_builds["q0f32"], ids)
    kept = test_gguf_quant._logits(mxfp4_llama_builds["keep"], ids)
    assert np.abs(kept - expected).max() <= 2e-5 * np.abs(expected).max()
    fast_config = json.loads((mxfp4_llama_builds["int8"] / "llmc-config.json").read_text())
    assert "model.embed_tokens.q_weight" in fast_config["weights"]  # the table on the integer path too
    fast = test_gguf_quant._logits(mxfp4_llama_builds["int8"], ids)
    cosine = (fast * expected).sum(-1) / np.linalg.norm(fast, axis=-1) / np.linalg.norm(expected, axis=-1)
    error = np.abs(fast - expected).max() / np.abs(expected).max()
    # measured: cosine 0.9985, error 4.8e-2 of max|logit| (the Q-formats' mixed file: 0.9992, 3.2e-2); random
    # weights give near-tied logits, so the argmax may flip where the float builds agree
    assert cosine.min() > 0.995 and error < 0.1, (cosine.min(), error)
