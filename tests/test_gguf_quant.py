"""``--quant keep``: GGML blocks decode bit-exactly in llmc's TE kernel; a mixed-format GGUF compiles and
computes what its dequantized (q0f32) build computes; unsupported formats fail naming the tensor."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.checkpoints import TINY_CONTEXT_WINDOW, TINY_PREFILL_CHUNK

from llmc.compile import CompileOptions, compile_model, plan_model, quantize_model
from llmc.errors import CheckpointError, ConfigError
from llmc.quant.ggml_formats import FORMATS
from llmc.runtime.engine import Engine

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as GGMLType  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402


# ---------------------------------------------------------------------- random blocks
def random_blocks(name: str, rows: int, blocks: int, rng, extreme: bool = True) -> np.ndarray:
    """Raw GGML rows of random bytes with finite fp16 scales (tiny, huge and zero), and one all-zero block."""
    fmt = FORMATS[name]
    raw = rng.integers(0, 256, (rows, blocks, fmt.block_bytes), dtype=np.uint8)
    if name in ("F16", "BF16", "F32"):
        dtype = {"F16": np.float16, "BF16": np.float32, "F32": np.float32}[name]
        values = (rng.standard_normal((rows, blocks)) * 0.05).astype(dtype)
        raw = values.view(np.uint8).reshape(rows, blocks, -1)[..., -fmt.block_bytes :].copy()
    else:
        magnitudes = [1e-7, 6e-5, 1e-3, 1.0, 300.0, 65000.0] if extreme else [1e-3, 2e-3]
        for plane in fmt.planes:
            if plane.dtype == "float16":
                scale = rng.standard_normal((rows, blocks)) * rng.choice(magnitudes, (rows, blocks))
                scale = np.clip(scale, -65000, 65000).astype(np.float16)
                raw[:, :, plane.offset : plane.offset + 2] = scale.view(np.uint8).reshape(rows, blocks, 2)
    raw[min(1, rows - 1), 0] = 0  # a zero block
    return raw.reshape(rows, -1)


def decode_with_te(name: str, raw: np.ndarray, cols: int) -> np.ndarray:
    """llmc's TE decode (the expression the matmul kernels inline) built for llvm and run."""
    import tvm
    from tvm import te

    from llmc.compiler.targets import get_target

    fmt = FORMATS[name]
    planes = fmt.split(raw)
    tensors = {n: te.placeholder(a.shape, str(a.dtype), name=n) for n, a in planes.items()}
    out = te.compute((raw.shape[0], cols), lambda r, k: fmt.te_element(tensors, r, k), name="dequantize")
    lib = tvm.compile(te.create_prim_func([*tensors.values(), out]), target=get_target("llvm").tvm_target())
    args = [tvm.runtime.tensor(planes[n]) for n in tensors] + [
        tvm.runtime.tensor(np.zeros((raw.shape[0], cols), np.float32))
    ]
    lib(*args)
    return args[-1].numpy()


@pytest.mark.parametrize("name", list(FORMATS))
def test_te_decode_is_bit_exact_against_gguf_py(name):
    rng = np.random.default_rng(len(name))
    fmt = FORMATS[name]
    rows, blocks = 7, max(1, 96 // fmt.block_size) if fmt.block_size > 1 else 40  # odd row count
    raw = random_blocks(name, rows, blocks, rng)
    cols = blocks * fmt.block_size
    assert (fmt.join(fmt.split(raw)) == raw).all()  # planes hold exactly the file's bytes
    expected = np.asarray(dequantize(raw, GGMLType[name]), dtype=np.float32).reshape(rows, cols)
    with np.errstate(all="ignore"):
        got = decode_with_te(name, raw, cols)
    same = (got.view(np.uint32) == expected.view(np.uint32)) | (np.isnan(got) & np.isnan(expected))
    assert same.all(), f"{name}: {int((~same).sum())} of {same.size} weights differ"


def test_bits_per_weight_are_the_files():
    assert {n: f.bits_per_weight for n, f in FORMATS.items() if f.block_size > 1} == {
        "Q4_0": 4.5,
        "Q4_1": 5.0,
        "Q5_0": 5.5,
        "Q5_1": 6.0,
        "Q8_0": 8.5,
        "Q4_K": 4.5,
        "Q5_K": 5.5,
        "Q6_K": 6.5625,
        "MXFP4": 4.25,
    }


# ---------------------------------------------------------------------- a tiny mixed-format GGUF
HIDDEN, HEADS, KV_HEADS, INTER, LAYERS, VOCAB = 256, 4, 2, 512, 2, 320
# per layer: (q, k, v, o, gate, up, down); q/k/v and gate/up are fused in llmc, so layer 0 mixes formats
LAYER_TYPES = [
    ("Q4_K", "Q4_K", "Q6_K", "Q5_K", "Q4_0", "Q4_0", "Q8_0"),
    ("Q4_1", "Q5_0", "Q5_1", "F16", "F32", "Q4_0", "Q6_K"),  # BF16: gguf_file cannot map it yet
]
EMBEDDING_TYPE = "Q6_K"  # tied (no output.weight): the LM head is the embedding table
QUANTIZABLE = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}  # gguf-py has an encoder for these


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter permutation of Q/K rows (the reader undoes it)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _tensor(name: str, kind: str, shape: tuple[int, int], rng, permute_heads: int = 0):
    """(data, raw dtype) of one weight: gguf-py's encoder where it has one, random K-quant blocks otherwise."""
    if kind in QUANTIZABLE or kind in ("F16", "F32"):
        weight = (rng.standard_normal(shape) * 0.08).astype(np.float32)
        if permute_heads:
            weight = _permute(weight, permute_heads)
        if kind == "F32":
            return weight, GGMLType.F32
        if kind == "F16":
            return weight.astype(np.float16), GGMLType.F16
        return quantize(weight, GGMLType[kind]), GGMLType[kind]
    fmt = FORMATS[kind]
    raw = random_blocks(kind, shape[0], shape[1] // fmt.block_size, rng, extreme=False)
    return raw, GGMLType[kind]


def _byte_level_tokens() -> list[str]:
    """GPT-2's 256 byte-level token strings (printable bytes as themselves, others shifted past 255)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def write_mixed_gguf(path: Path, seed: int = 0) -> Path:
    """A 2-layer llama GGUF mixing every kept format, with a byte-level BPE vocabulary."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(INTER)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    byte_tokens = _byte_level_tokens()
    tokens = ["<s>", "</s>"] + byte_tokens + [f"tok{i}" for i in range(VOCAB - 2 - len(byte_tokens))]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3] + [1] * (VOCAB - 2))
    writer.add_token_merges([])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    head_dim = HIDDEN // HEADS

    def add(name: str, kind: str, shape: tuple, permute_heads: int = 0):
        data, raw_dtype = _tensor(name, kind, shape, rng, permute_heads)
        writer.add_tensor(name, data, raw_dtype=raw_dtype)

    add("token_embd.weight", EMBEDDING_TYPE, (VOCAB, HIDDEN))
    writer.add_tensor("output_norm.weight", (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))
    for layer, kinds in enumerate(LAYER_TYPES):
        q, k, v, o, gate, up, down = kinds
        shapes = {
            "attn_q": (q, (HEADS * head_dim, HIDDEN), HEADS),
            "attn_k": (k, (KV_HEADS * head_dim, HIDDEN), KV_HEADS),
            "attn_v": (v, (KV_HEADS * head_dim, HIDDEN), 0),
            "attn_output": (o, (HIDDEN, HEADS * head_dim), 0),
            "ffn_gate": (gate, (INTER, HIDDEN), 0),
            "ffn_up": (up, (INTER, HIDDEN), 0),
            "ffn_down": (down, (HIDDEN, INTER), 0),
        }
        for part, (kind, shape, heads) in shapes.items():
            add(f"blk.{layer}.{part}.weight", kind, shape, heads)
        for norm in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{layer}.{norm}.weight", (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def mixed_gguf(tmp_path_factory) -> Path:
    return write_mixed_gguf(tmp_path_factory.mktemp("gguf") / "tiny-mixed.gguf")


@pytest.fixture(scope="module")
def mixed_builds(mixed_gguf, tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed-builds")
    builds = {}
    for label, quant, cpu_kernels in [
        ("q0f32", "q0f32", "float"),
        ("keep", None, "float"),
        ("keep-int8", None, "int8"),
    ]:
        options = CompileOptions(
            quant=quant,
            output=root / label,
            quiet=True,
            context_window=TINY_CONTEXT_WINDOW,
            prefill_chunk=TINY_PREFILL_CHUNK,
            max_batch_size=2,
            cpu_kernels=cpu_kernels,
        )
        builds[label] = compile_model(str(mixed_gguf), options)
    return builds


def _logits(folder: Path, ids: list[int]) -> np.ndarray:
    engine = Engine(folder)
    engine.add_sequence(0)
    out = [engine.prefill(0, ids[:5])]
    for token in ids[5:]:
        out.append(engine.decode(0, token))
    return np.stack(out)


def test_mixed_gguf_keep_equals_dequantized_build(mixed_builds):
    config = json.loads((mixed_builds["keep"] / "llmc-config.json").read_text())
    assert config["quantization"] == "keep"  # the default for a GGUF file
    runs = config["tensor_formats"]["runs"]
    assert runs["model.layers.0.self_attn.qkv_proj.weight"] == [["Q4_K", 384], ["Q6_K", 128]]
    assert runs["model.layers.1.self_attn.qkv_proj.weight"] == [["Q4_1", 256], ["Q5_0", 128], ["Q5_1", 128]]
    assert runs["model.layers.0.mlp.gate_up_proj.weight"] == [["Q4_0", 1024]]
    groups = config["tensor_groups"]
    assert set(groups["model.layers.*.mlp.down_proj.weight"]) == {"Q8_0", "Q6_K"}
    reference = json.loads((mixed_builds["q0f32"] / "llmc-config.json").read_text())
    assert config["param_bytes"] < reference["param_bytes"] / 3  # blocks, not floats
    assert abs(config["bits_per_param"] - config["param_bytes"] * 8 / _weights(reference)) < 0.01

    from click.testing import CliRunner

    from llmc.cli import main

    shown = CliRunner().invoke(main, ["inspect", str(mixed_builds["keep"])]).output
    assert f"bits/weight:  {config['bits_per_param']:.3f}" in shown
    assert any(
        "layers.*.self_attn.qkv_proj" in line and "Q4_K" in line and "Q6_K" in line for line in shown.splitlines()
    )

    ids = np.random.default_rng(1).integers(2, VOCAB, 12).tolist()
    expected = _logits(mixed_builds["q0f32"], ids)
    kept = _logits(mixed_builds["keep"], ids)
    scale = np.abs(expected).max()
    assert np.abs(kept - expected).max() <= 2e-5 * scale
    # the CPU integer path (every block format's linear parts): activations quantized to int8, so close, not equal
    fast = _logits(mixed_builds["keep-int8"], ids)
    fast_config = json.loads((mixed_builds["keep-int8"] / "llmc-config.json").read_text())
    assert fast_config["int_dot"] is not None
    part_arrays = {name.rpartition(".")[2] for name in fast_config["weights"] if ".parts." in name}
    assert part_arrays == {"q_weight", "q_scale", "q_min", "q_super", "w"}, part_arrays  # F16/F32 parts: "w"
    assert "model.embed_tokens.q_super" in fast_config["weights"]  # the tied Q6_K table, gathered and the LM head
    cosine = (fast * expected).sum(-1) / np.linalg.norm(fast, axis=-1) / np.linalg.norm(expected, axis=-1)
    assert cosine.min() > 0.995
    assert (fast.argmax(-1) == expected.argmax(-1)).mean() >= 0.8


def _weights(config: dict) -> int:
    """Number of weights of a q0f32 build (float32: 4 bytes each)."""
    return config["param_bytes"] // 4


def test_keep_weights_folder_compiles_for_the_cpu_layout(mixed_gguf, mixed_builds, tmp_path):
    """`llmc quantize --quant keep` stores portable planes; compiling the folder repacks Q4_0/Q8_0."""
    folder = quantize_model(str(mixed_gguf), CompileOptions(quant="keep", output=tmp_path / "w", quiet=True))
    options = CompileOptions(
        output=tmp_path / "a",
        quiet=True,
        context_window=TINY_CONTEXT_WINDOW,
        prefill_chunk=TINY_PREFILL_CHUNK,
        max_batch_size=2,
    )
    artifact = compile_model(str(folder), options)
    ids = np.random.default_rng(2).integers(2, VOCAB, 8).tolist()
    assert np.array_equal(_logits(artifact, ids), _logits(mixed_builds["keep-int8"], ids))


def test_unsupported_format_names_tensor_and_format(tmp_path):
    path = tmp_path / "q2k.gguf"
    writer = gguf.GGUFWriter(path, arch="llama")
    for key, value in [("block_count", 1), ("embedding_length", 256), ("feed_forward_length", 256)]:
        writer.add_uint32(f"llama.{key}", value)
    writer.add_head_count(2)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(8)])
    raw = np.random.default_rng(0).integers(0, 256, (8, 84), dtype=np.uint8)  # Q2_K: 84 bytes per 256
    writer.add_tensor("token_embd.weight", raw, raw_dtype=GGMLType.Q2_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match=r"tensor model\.embed_tokens\.weight is stored as Q2_K"):
        plan_model(str(path), CompileOptions())


def test_keep_needs_a_gguf(checkpoints):
    with pytest.raises(ConfigError, match="keep"):
        plan_model(str(checkpoints["llama_gqa"]), CompileOptions(quant="keep"))


# ---------------------------------------------------------------------- llmc's quantizer for float weights
def test_scale_search_beats_range_scales_on_heavy_tailed_weights():
    """Searched scales: lower error than range-covering ones (same layout, same bits)."""
    from llmc.quant import get_quant

    rng = np.random.default_rng(0)
    weight = (rng.standard_t(4, (64, 256)) * 0.02).astype(np.float32)  # outliers, as in real matrices
    weight[0] = 0
    for plain, searched in [("q4f16_1", "q4f16_s"), ("q3f16_1", "q3f16_s")]:
        errors = {}
        for name in (plain, searched):
            gq = get_quant(name).group
            decoded = gq.dequantize(*gq.quantize(weight), weight.shape[1])
            errors[name] = float(np.square(decoded - weight).mean())
            assert (decoded[0] == 0).all()
        assert errors[searched] < 0.97 * errors[plain], errors


def test_q4_1_encoder_decodes_with_gguf_py_and_beats_its_quantizer():
    from llmc.quant.encode import encode_q4_1

    rng = np.random.default_rng(1)
    weight = (rng.standard_t(4, (33, 128)) * 0.02).astype(np.float32)
    weight[1] = 0
    weight[2] = np.abs(weight[2])  # all-positive rows: the minimum stays <= 0
    raw = encode_q4_1(weight)
    assert raw.shape == (33, 4 * 20) and raw.dtype == np.uint8
    ours = np.asarray(dequantize(raw, GGMLType.Q4_1)).reshape(weight.shape)
    theirs = np.asarray(dequantize(quantize(weight, GGMLType.Q4_1), GGMLType.Q4_1)).reshape(weight.shape)
    assert (ours[1] == 0).all()
    assert np.square(ours - weight).mean() < 0.9 * np.square(theirs - weight).mean()


@pytest.mark.builds  # minutes per target
@pytest.mark.parametrize("target", ["vulkan", "cuda:sm_90a", "android", "iphone", "webgpu"])
def test_mixed_gguf_keep_compiles_for_gpu_targets(mixed_gguf, tmp_path, target):
    """The same decode expressions go through dlight's GPU rules (single contiguous reads per plane)."""
    if target.startswith("cuda") and shutil.which("nvcc") is None:
        pytest.skip("nvcc (CUDA toolkit) is not installed")
    out = tmp_path / "a"
    llmc = str(Path(sys.executable).parent / "llmc")  # CUDA builds need the CLI's nvcc/driver set-up
    done = subprocess.run(
        [llmc, "compile", str(mixed_gguf), "--target", target, "-o", str(out), "--quiet", "--context-window", "64"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    config = json.loads((out / "llmc-config.json").read_text())
    assert config["quantization"] == "keep" and config["target"] == target


# ---------------------------------------------------------------------- real files (make test-keep-real)
REAL_GGUF = os.environ.get("LLMC_KEEP_GGUF", "smollm2-135m")  # a GGUF path or preset: make test-keep-real KEEP_GGUF=


def _llama_cpp_perplexity(gguf: Path, ids: list[int], window: int) -> float:
    from llama_cpp import Llama

    from llmc.runtime.perplexity import log_softmax_nll, window_slices

    llm = Llama(model_path=str(gguf), n_ctx=window, n_batch=window, logits_all=True, n_threads=2, verbose=False)
    nll = []
    for part in window_slices(len(ids), window):
        tokens = ids[part]
        llm.reset()
        llm.eval(tokens[:-1])
        nll.extend(log_softmax_nll(np.asarray(llm.scores[: len(tokens) - 1], np.float32), np.asarray(tokens[1:])))
    return float(np.exp(np.mean(nll)))


@pytest.mark.real_models  # a real GGUF, minutes
def test_real_gguf_keep_perplexity_matches_q0f32_and_llama_cpp(tmp_path):
    from llmc.checkpoint.gguf_file import read_gguf
    from llmc.runtime.perplexity import perplexity, read_text
    from llmc.runtime.session import Session
    from llmc.source import resolve

    gguf_path = resolve(REAL_GGUF).path
    window = 512
    scores, ids = {}, None
    for quant in ("keep", "q0f32"):
        options = CompileOptions(
            quant=quant, output=tmp_path / quant, quiet=True, context_window=window, prefill_chunk=window
        )
        options.cpu_kernels = "float"  # keep: the exact decode path; the int8 path rounds activations
        artifact = compile_model(str(gguf_path), options)
        session = Session(artifact)
        ids = ids or session.tokenizer.encode(read_text(None)[0])
        scores[quant] = perplexity(session.engine, ids, window).perplexity
        if quant == "keep":
            config = json.loads((artifact / "llmc-config.json").read_text())
            tensor_bytes = sum(int(t.data.nbytes) for t in read_gguf(gguf_path)[1])
            assert abs(config["param_bytes"] - tensor_bytes) <= 0.1 * tensor_bytes
        del session
    reference = _llama_cpp_perplexity(gguf_path, ids, window)
    assert abs(scores["keep"] / scores["q0f32"] - 1) < 0.001, scores
    assert abs(scores["keep"] / reference - 1) < 0.005, (scores, reference)


def test_q4a_s_compiles_a_float_checkpoint_through_the_ggml_kernels(tmp_path):
    """llmc's Q4_1 encoder on a float checkpoint: a weights folder whose formats are recorded, compiled,
    close to the float model."""
    from support.checkpoints import make_trained_checkpoint

    checkpoint = make_trained_checkpoint(tmp_path / "trained")
    sizes = dict(quiet=True, context_window=TINY_CONTEXT_WINDOW, prefill_chunk=TINY_PREFILL_CHUNK, max_batch_size=2)
    folder = quantize_model(str(checkpoint), CompileOptions(quant="q4a_s", output=tmp_path / "w", **sizes))
    stored = json.loads((folder / "llmc-config.json").read_text())
    assert stored["quantization"] == "q4a_s" and 5.0 < stored["bits_per_param"] < 8.5
    assert set(stored["tensor_groups"]["model.layers.*.mlp.down_proj.weight"]) == {"Q4_1"}
    assert set(stored["tensor_groups"]["model.embed_tokens.weight"]) == {"Q8_0"}
    ours = compile_model(str(folder), CompileOptions(output=tmp_path / "a", **sizes))
    reference = compile_model(str(checkpoint), CompileOptions(quant="q0f32", output=tmp_path / "r", **sizes))
    ids = np.random.default_rng(3).integers(3, 200, 10).tolist()
    got, expected = _logits(ours, ids), _logits(reference, ids)
    cosine = (got * expected).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(expected, axis=-1)
    assert cosine.min() > 0.98, cosine
