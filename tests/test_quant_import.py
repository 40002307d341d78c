"""Pre-quantized checkpoints (AWQ, GPTQ, fp8) imported as stored: the planes hold the checkpoint's numbers
exactly, the compiled model equals transformers run on the dequantized weights, and bad configs fail in
one line.

The checkpoints are written here by numpy from each format's documented layout (not by llmc's reader):
a tiny transformers Llama's Linear weights quantized per group, packed as AutoAWQ (gemm), AutoGPTQ (v1,
zero points minus one) / GPTQModel (v2) and DeepSeek-V3-style fp8 / compressed-tensors save them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from click.testing import CliRunner
from support.checkpoints import TINY_CONTEXT_WINDOW, TINY_PREFILL_CHUNK, hf_logits, make_checkpoint

from llmc.checkpoint import open_checkpoint
from llmc.cli import main
from llmc.compile import CompileOptions, compile_model, quantize_model
from llmc.errors import ConfigError
from llmc.plan import plan_model
from llmc.runtime.engine import Engine
from llmc.source import resolve

LLMC = str(Path(sys.executable).parent / "llmc")
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # AutoAWQ: nibble i of a word holds output column AWQ_ORDER[i]
GROUP = 32  # divides every input width of the tiny model (64, 96)


# ---------------------------------------------------------------------- writing the formats (numpy)
def quantize_groups(weight: np.ndarray, bits: int, group: int, sym: bool):
    """``W[out, in]`` -> codes ``[out, in]``, zero points and fp16 scales ``[out, in / group]`` (min/max)."""
    rows, cols = weight.shape
    maxq = (1 << bits) - 1
    w = weight.reshape(rows, cols // group, group)
    if sym:
        scale = np.abs(w).max(-1) * 2 / maxq
        zero = np.full(scale.shape, (maxq + 1) // 2)
    else:
        low, high = np.minimum(w.min(-1), 0), np.maximum(w.max(-1), 0)
        scale = (high - low) / maxq
        zero = np.rint(-low / scale).astype(np.int64)
    scale = scale.astype(np.float16)
    codes = np.clip(np.rint(w / scale.astype(np.float32)[..., None]) + zero[..., None], 0, maxq).astype(np.int64)
    return codes.reshape(rows, cols), zero, scale


def dequantize_groups(codes, zero, scale, group: int) -> np.ndarray:
    return ((codes - np.repeat(zero, group, 1)) * np.repeat(scale.astype(np.float32), group, 1)).astype(np.float32)


def pack_along_last(values: np.ndarray, bits: int, order=None) -> np.ndarray:
    """``[n, m]`` -> int32 ``[n, m * bits / 32]``: field i of a word holds value ``order[i]`` of its run."""
    per = 32 // bits
    runs = values.reshape(values.shape[0], -1, per).astype(np.uint32)
    words = np.zeros(runs.shape[:2], np.uint32)
    for i, j in enumerate(order or range(per)):
        words |= runs[:, :, j] << np.uint32(bits * i)
    return words.view(np.int32)


def awq_tensors(base: str, weight: np.ndarray) -> tuple[dict, np.ndarray]:
    codes, zero, scale = quantize_groups(weight, 4, GROUP, sym=False)
    tensors = {
        f"{base}.qweight": pack_along_last(codes.T, 4, AWQ_ORDER),  # [in, out/8]
        f"{base}.qzeros": pack_along_last(zero.T, 4, AWQ_ORDER),  # [groups, out/8]
        f"{base}.scales": np.ascontiguousarray(scale.T),  # [groups, out]
    }
    return tensors, dequantize_groups(codes, zero, scale, GROUP)


def gptq_tensors(bits: int, sym: bool, v1: bool):
    def write(base: str, weight: np.ndarray) -> tuple[dict, np.ndarray]:
        codes, zero, scale = quantize_groups(weight, bits, GROUP, sym)
        cols = weight.shape[1]
        along_input = pack_along_last(np.ascontiguousarray(codes), bits)  # [out, in*bits/32]: rows of words
        tensors = {
            f"{base}.qweight": np.ascontiguousarray(along_input.T),  # [in*bits/32, out]
            f"{base}.qzeros": pack_along_last(np.ascontiguousarray((zero - (1 if v1 else 0)).T), bits),
            f"{base}.scales": np.ascontiguousarray(scale.T),
            f"{base}.g_idx": (np.arange(cols) // GROUP).astype(np.int32),
        }
        return tensors, dequantize_groups(codes, zero, scale, GROUP)

    return write


def fp8_tensors(block: tuple[int, int] | str | None, scale_name: str):
    """e4m3 weights (round to nearest) with a float32 scale per block, per output channel ("channel", stored
    ``[out, 1]``) or per tensor (None), amax -> 448."""

    def write(base: str, weight: np.ndarray) -> tuple[dict, np.ndarray]:
        rows, cols = weight.shape
        br, bc = (1, cols) if block == "channel" else block or (rows, cols)
        amax = np.abs(weight.reshape(rows // br, br, cols // bc, bc)).max(axis=(1, 3))
        scale = (amax / 448).astype(np.float32)
        expanded = np.repeat(np.repeat(scale, br, 0), bc, 1)
        fp8 = (weight / expanded).astype(ml_dtypes.float8_e4m3fn)
        stored = scale if block else scale.reshape(1)
        tensors = {f"{base}.weight": fp8, f"{base}.{scale_name}": stored}
        if scale_name == "weight_scale":
            tensors[f"{base}.input_scale"] = np.ones(1, np.float32)  # static activation scale: not used by llmc
        return tensors, fp8.astype(np.float32) * expanded

    return write


# llmc's scheme for each written format
METHOD = {"awq": "awq", "gptq4": "gptq", "gptq8": "gptq", "fp8": "fp8", "fp8_channel": "fp8", "fp8_tensor": "fp8"}
FORMATS = {
    "awq": (
        awq_tensors,
        {"quant_method": "awq", "bits": 4, "group_size": GROUP, "zero_point": True, "version": "gemm"},
    ),
    "gptq4": (
        gptq_tensors(4, sym=True, v1=True),
        {"quant_method": "gptq", "bits": 4, "group_size": GROUP, "sym": True, "desc_act": False},
    ),
    "gptq8": (
        gptq_tensors(8, sym=False, v1=False),
        {"quant_method": "gptq", "bits": 8, "group_size": GROUP, "sym": False, "checkpoint_format": "gptq_v2"},
    ),
    "fp8": (
        fp8_tensors((32, 32), "weight_scale_inv"),
        {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [32, 32]},
    ),
    "fp8_channel": (fp8_tensors("channel", "weight_scale"), {"quant_method": "fbgemm_fp8"}),
    "fp8_tensor": (
        fp8_tensors(None, "weight_scale"),
        {
            "quant_method": "compressed-tensors",
            "format": "float-quantized",
            "config_groups": {
                "group_0": {"weights": {"num_bits": 8, "type": "float", "strategy": "tensor"}, "targets": ["Linear"]}
            },
            "ignore": ["lm_head"],
        },
    ),
}


def save_tensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    import torch
    from safetensors.torch import save_file

    def to_torch(array: np.ndarray):
        if array.dtype == ml_dtypes.float8_e4m3fn:
            return torch.from_numpy(array.view(np.uint8).copy()).view(torch.float8_e4m3fn)
        return torch.from_numpy(np.ascontiguousarray(array))

    save_file({name: to_torch(a) for name, a in tensors.items()}, str(path))


@pytest.fixture(scope="module")
def float_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("quant-import") / "float", "llama_gqa", seed=3)


@pytest.fixture(scope="module")
def quantized(float_checkpoint, tmp_path_factory):
    """``quantized(format)`` -> (checkpoint folder, the float weights it decodes to by layout)."""
    import torch
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("quantized")
    model = AutoModelForCausalLM.from_pretrained(float_checkpoint, dtype=torch.float32)
    floats = {name: p.detach().numpy().copy() for name, p in model.state_dict().items()}
    cache: dict[str, tuple[Path, dict]] = {}

    def get(fmt: str, config_patch: dict | None = None, label: str | None = None) -> tuple[Path, dict]:
        key = label or fmt
        if key in cache:
            return cache[key]
        write, quant_config = FORMATS[fmt]
        folder = root / key
        folder.mkdir()
        for file in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(float_checkpoint / file, folder / file)
        config = json.loads((float_checkpoint / "config.json").read_text())
        config["quantization_config"] = {**quant_config, **(config_patch or {})}
        (folder / "config.json").write_text(json.dumps(config))
        tensors, decoded = {}, {}
        for name, array in floats.items():
            base = name.removesuffix(".weight")
            if base.rsplit(".", 1)[-1] in LINEARS:
                stored, decoded[name] = write(base, array)
                tensors.update(stored)
            else:
                tensors[name] = array
        save_tensors(folder / "model.safetensors", tensors)
        cache[key] = (folder, decoded)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def reference(float_checkpoint):
    """``reference(decoded, ids)``: transformers' logits with the Linear weights set to ``decoded``."""
    import torch
    from transformers import AutoModelForCausalLM

    def logits(decoded: dict, ids: list[int]) -> np.ndarray:
        model = AutoModelForCausalLM.from_pretrained(float_checkpoint, dtype=torch.float32).eval()
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in decoded:
                    param.copy_(torch.from_numpy(decoded[name]))
        return hf_logits(model, ids)

    return logits


IDS = np.random.default_rng(7).integers(3, 300, 14).tolist()


def llmc_logits(folder: Path, ids: list[int]) -> np.ndarray:
    """Logits at positions 4.. of ``ids``: one prefill of 5 tokens, then a decode per token."""
    engine = Engine(folder)
    engine.add_sequence(0)
    out = [engine.prefill(0, ids[:5])]
    out += [engine.decode(0, token) for token in ids[5:]]
    return np.stack(out)


def build(model: Path, out: Path, quant: str | None = None, cpu_kernels: str = "int8") -> Path:
    options = CompileOptions(
        quant=quant,
        output=out,
        quiet=True,
        context_window=TINY_CONTEXT_WINDOW,
        prefill_chunk=TINY_PREFILL_CHUNK,
        max_batch_size=2,
        cpu_kernels=cpu_kernels,
    )
    return compile_model(str(model), options)


# ---------------------------------------------------------------------- the reader: exact planes
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_reader_decodes_the_documented_layout_exactly(fmt, quantized):
    folder, decoded = quantized(fmt)
    reader = open_checkpoint(resolve(str(folder)))
    assert set(reader.stored_weights()) == set(decoded)
    for name, weight in decoded.items():
        np.testing.assert_array_equal(reader.get(name), weight)  # bit for bit
        method, planes = reader.get_raw(name)
        assert method == METHOD[fmt] and set(planes) <= {"qweight", "qzeros", "scales"}
    assert "model.embed_tokens.weight" in reader.names() and not any(n.endswith(".qweight") for n in reader.names())


def te_decode(layout, planes: dict[str, np.ndarray], rows: int, cols: int) -> np.ndarray:
    """llmc's TE decode of a stored weight (the expression the matmul kernels inline), built for llvm and run."""
    import tvm
    from tvm import te

    from llmc.compiler.targets import get_target
    from llmc.quant.stored_layers import stored_element

    tensors = {n: te.placeholder(a.shape, str(a.dtype), name=n) for n, a in planes.items()}
    out = te.compute((rows, cols), lambda r, k: stored_element(layout, tensors, r, k, rows, cols), name="dequantize")
    lib = tvm.compile(te.create_prim_func([*tensors.values(), out]), target=get_target("llvm").tvm_target())
    args = [tvm.runtime.tensor(planes[n]) for n in tensors] + [tvm.runtime.tensor(np.zeros((rows, cols), np.float32))]
    lib(*args)
    return args[-1].numpy()


@pytest.mark.parametrize("fmt", ["awq", "gptq8", "fp8"])
def test_te_decode_is_bit_exact(fmt, quantized):
    folder, decoded = quantized(fmt)
    reader = open_checkpoint(resolve(str(folder)))
    name = "model.layers.0.mlp.down_proj.weight"  # 64 x 96: three groups / blocks of 32 along the input
    _, planes = reader.get_raw(name)
    np.testing.assert_array_equal(te_decode(reader.layout, planes, *decoded[name].shape), decoded[name])


def test_fp8_decode_covers_every_code():
    """All 254 non-NaN e4m3fn codes (subnormals, both zeros, both signs) decode as ml_dtypes does."""
    from llmc.checkpoint.quant_config import StoredLayout
    from llmc.checkpoint.quantized import pack_rows

    codes = np.array([c for c in range(256) if c & 0x7F != 0x7F], np.uint8).reshape(2, 127)
    layout = StoredLayout("fp8", 8, scale_dtype="float32", block=(1, 0))
    planes = {"qweight": pack_rows(codes, 8), "scales": np.array([[1.0], [0.5]], np.float32)}
    expected = codes.view(ml_dtypes.float8_e4m3fn).astype(np.float32) * planes["scales"]
    np.testing.assert_array_equal(te_decode(layout, planes, 2, 127), expected)


def test_integer_layout_holds_the_weights_exactly(quantized):
    """The x86 integer kernels' arrays: ``d * code + m`` per 32 columns equals ``(code - zero) * scale``."""
    from llmc.quant import int_dot
    from llmc.quant.stored_layers import int_dot_arrays

    folder, decoded = quantized("awq")
    reader = open_checkpoint(resolve(str(folder)))
    name = "model.layers.0.mlp.gate_proj.weight"
    rows, cols = decoded[name].shape
    codes, d, m = int_dot_arrays(reader.layout, reader.get_raw(name)[1], cols)
    flat = int_dot.unrepack_codes(codes, 4, 0, rows)[:, :cols].astype(np.float32)

    def per_column(values: np.ndarray) -> np.ndarray:
        per_row = values.transpose(0, 2, 1).reshape(-1, values.shape[1])[:rows]
        return np.repeat(per_row, int_dot.GROUP, axis=1)[:, :cols]

    np.testing.assert_array_equal(per_column(d) * flat + per_column(m), decoded[name])


# ---------------------------------------------------------------------- compiled models against transformers
CASES = {
    # format, scheme used, CPU path, relative tolerance on logits (measured: float 7e-7, int8 1.8e-2)
    "awq-float": ("awq", None, "float", 1e-4),
    "fp8-float": ("fp8", None, "float", 1e-4),
    "gptq8-float": ("gptq8", None, "float", 1e-4),
    "fp8_tensor-q0f32": ("fp8_tensor", "q0f32", "float", 1e-4),  # dequantized on load
    "gptq4-int8": ("gptq4", None, "int8", 3e-2),  # x86 integer kernels: activations rounded to int8
}
DEFAULT_CASES = ("awq-float", "fp8-float")  # the others (~100 s more): make test-all; the integer path below


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=[] if c in DEFAULT_CASES else [pytest.mark.slow]) for c in CASES]
)
def test_compiled_equals_transformers_on_dequantized_weights(case, quantized, reference, tmp_path):
    fmt, quant, cpu_kernels, tolerance = CASES[case]
    folder, decoded = quantized(fmt)
    artifact = build(folder, tmp_path / case, quant, cpu_kernels)
    config = json.loads((artifact / "llmc-config.json").read_text())
    assert config["quantization"] == (quant or METHOD[fmt])  # the checkpoint's own format by default
    if cpu_kernels == "float" or fmt != "gptq4":
        assert config["int_dot"] is None
    if quant is None:
        assert len(config["stored_quant"]["params"]) == 2 * 4  # fused qkv, o, fused gate_up, down per layer
    expected = reference(decoded, IDS)[4:]
    got = llmc_logits(artifact, IDS)
    error = np.abs(got - expected).max()
    assert error <= tolerance * np.abs(expected).max(), (case, error, np.abs(expected).max())
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= (1.0 if tolerance <= 1e-4 else 0.8)


def test_awq_weights_folder_compiles_for_the_integer_kernels(quantized, reference, tmp_path):
    """`llmc quantize` keeps the planes (portable); `llmc compile` repacks them for the x86 integer kernels."""
    folder, decoded = quantized("awq")
    weights = quantize_model(str(folder), CompileOptions(quant="awq", output=tmp_path / "w", quiet=True))
    stored = json.loads((weights / "llmc-config.json").read_text())
    assert stored["quantization"] == "awq" and stored["int_dot"] is None
    assert any(name.endswith("qkv_proj.qzeros") for name in stored["weights"])
    assert 4.0 < stored["bits_per_param"] < 5.0
    artifact = build(weights, tmp_path / "a")
    config = json.loads((artifact / "llmc-config.json").read_text())
    expected = reference(decoded, IDS)[4:]
    got = llmc_logits(artifact, IDS)
    assert np.abs(got - expected).max() <= 3e-2 * np.abs(expected).max()
    if config["int_dot"]:  # an x86 CPU: the repacked integer layout
        assert any(name.endswith("qkv_proj.q_min") for name in config["params"])


# ---------------------------------------------------------------------- bad configs: one line
def assert_one_line_error(args: list[str], *needles: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmc: error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize(
    ("fmt", "patch", "needles"),
    [
        ("awq", {"bits": 3}, ("config.json", "quantization_config.bits", "3")),
        ("awq", {"version": "gemv"}, ("quantization_config.version", "gemm")),
        ("gptq4", {"bits": 2}, ("quantization_config.bits",)),
        ("gptq4", {"checkpoint_format": "marlin"}, ("quantization_config.checkpoint_format",)),
        ("fp8", {"quant_method": "bitsandbytes"}, ("quantization_config.quant_method", "bitsandbytes")),
        ("fp8", {"weight_block_size": [32]}, ("quantization_config.weight_block_size",)),
    ],
)
def test_bad_quantization_config_is_one_line(fmt, patch, needles, quantized, tmp_path):
    folder, _ = quantized(fmt, patch, label=f"{fmt}-{'-'.join(map(str, patch.values()))}")
    assert_one_line_error(["compile", str(folder), "-o", str(tmp_path / "out"), "--quiet"], *needles)
    assert not (tmp_path / "out").exists()


def test_act_order_is_refused_naming_the_tensor(quantized, tmp_path):
    from safetensors.numpy import load_file, save_file

    folder, _ = quantized("gptq4", {"desc_act": True}, label="gptq4-act-order")
    assert plan_model(str(folder), CompileOptions()).scheme.name == "gptq"  # desc_act, but g_idx in order

    tensors = load_file(folder / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.g_idx"
    tensors[name] = np.random.default_rng(0).permutation(tensors[name])  # groups no longer in input order
    save_file(tensors, folder / "model.safetensors")
    assert_one_line_error(
        ["compile", str(folder), "-o", str(tmp_path / "out"), "--quiet"],
        "model.safetensors",
        name,
        "desc_act",
        "--quant q0f32",
    )
    plan = plan_model(str(folder), CompileOptions(quant="q0f32"))  # dequantized on load instead: accepted
    assert plan.scheme.name == "q0f32"


def test_scheme_and_checkpoint_must_agree(quantized, float_checkpoint):
    awq, _ = quantized("awq")
    with pytest.raises(ConfigError, match="holds awq weights, not gptq"):
        plan_model(str(awq), CompileOptions(quant="gptq"))
    with pytest.raises(ConfigError, match="has no quantization_config"):
        plan_model(str(float_checkpoint), CompileOptions(quant="awq"))


# ---------------------------------------------------------------------- GPU targets (make test-models-builds)
@pytest.mark.builds
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not installed")
@pytest.mark.parametrize("fmt", ["awq", "gptq8", "fp8"])
def test_builds_for_cuda_sm90a(fmt, quantized, tmp_path):
    """dlight's GPU rules schedule the stored decodes (fused into the matmul) and nvcc compiles them."""
    from llmc.compiler.cuda import library_has_device_code

    folder, _ = quantized(fmt)
    out = tmp_path / "cuda"
    args = ["compile", str(folder), "--target", "cuda:sm_90a", "-o", str(out), "--quiet", "--context-window", "64"]
    done = subprocess.run([LLMC, *args], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    config = json.loads((out / "llmc-config.json").read_text())
    assert config["quantization"] == METHOD[fmt] and library_has_device_code(out / config["library"])
