"""GGUF files written by llama.cpp's own converter, loaded by llmc, against transformers.

Each family's tiny random checkpoint (``FAMILY_MODELS``) is converted by ``convert_hf_to_gguf.py`` of the
llama-cpp-python 0.3.36 sdist (its ``vendor/llama.cpp``, unpacked by ``bench/llama_tools.py`` or here from the
cached sdist; skipped when neither is on this machine): an ``f32`` file compiled at q0f32 must give
transformers' logits to FP32 (1e-4 of the logit range, as the family tests), a ``q8_0`` file compiled with
``--quant keep`` (its Q8_0 blocks as stored, float kernels) those of transformers' model whose matrices went
through gguf-py's Q8_0 quantizer as the converter's did, to the same tolerance. The converter is code
nobody here wrote: its tensor names, metadata keys, Q/K permutations and regroupings are what llmc's
``GGUFSpec``s undo. Its BPE pre-tokenizer check does not know the tiny tokenizer; the GLM, Ernie and Llama vocab
writers want their real (SentencePiece) tokenizers; its GPT-NeoX and GPT-2 classes read ``rotary_pct`` and
``n_ctx``, which transformers 5's config dicts lack; its StableLM class returns instead of yielding the stacked
per-head QK-norms (a generator's ``return``: such checkpoints fail to convert): each is patched in the
converter's process, never in its files.

Two families run by default (GPT-NeoX: its own tensor and layer names, regrouped q/k/v, biases; GLM: the
``chatglm`` arch, interleaved rotary rows moved on Q8_0 blocks); every family with ``--run slow``
(``make test-gguf-families``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from support.checkpoints import TINY_PREFILL_CHUNK, hf_logits, make_checkpoint

LLAMA_CPP_VERSION = "0.3.36"
CACHE = Path(os.environ.get("LLMC_CACHE_DIR", Path.home() / ".cache" / "llmc"))
FP32 = 1e-4  # of max|logit| (tests/test_models_families.py)
INT8 = 3e-2  # of max|logit|, CPU integer kernels (int8 activations; tests/test_models_gptoss.py)
PROMPT = 30  # tokens: shorter than every sliding window (llama.cpp's StarCoder2 files have none)

# family -> (llama.cpp architecture, config overrides of the tiny checkpoint where llama.cpp fixes a setting)
GGUF_FAMILIES = {
    "phi": ("phi2", {"qk_layernorm": False}),  # llama.cpp's phi2 has no QK LayerNorm
    "gpt_neox": ("gptneox", {}),
    # llama.cpp's StableLM converter writes no rope base or scaling (llama.cpp: 10000, none)
    "stablelm": (
        "stablelm",
        {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}},
    ),
    "starcoder2": ("starcoder2", {}),
    "cohere": ("command-r", {}),
    "granite": ("granite", {}),
    "olmo": ("olmo", {}),
    "exaone4": ("exaone4", {}),
    "glm": ("chatglm", {}),
    "ernie4_5": ("ernie4_5", {}),
    # llama.cpp's smollm3 has every 4th layer without RoPE, whatever config.json says
    "smollm3": ("smollm3", {"no_rope_layer_interval": 4, "num_hidden_layers": 4}),
    "arcee": ("arcee", {}),
    "seed_oss": ("seed_oss", {}),
    "internlm3": ("llama", {}),  # q/k/v/o and MLP biases on llama.cpp's llama arch
    "gpt2": ("gpt2", {}),
    # Llama 3.1-style rope scaling: the converter writes it as a rope_freqs tensor, not as metadata
    "llama_gqa": ("llama", {}),
    # multi-head latent attention (kv_b_proj split per head into attn_k_b / attn_v_b); the file keeps yarn's
    # mscale_all_dim only, and mscale equals it in DeepSeek's configs
    "deepseek_v2": (
        "deepseek2",
        {
            "rope_parameters": {
                "rope_type": "yarn",
                "rope_theta": 10000.0,
                "factor": 4.0,
                "original_max_position_embeddings": 32,
                "mscale": 0.5,
                "mscale_all_dim": 0.5,
            }
        },
    ),
    "deepseek_v3": ("deepseek2", {}),  # sigmoid routing told by its exp_probs_b bias (no gating function kept)
    "olmo2": ("olmo2", {}),
    "gpt_oss": ("gpt-oss", {"swiglu_limit": 7.0}),  # llama.cpp's gpt-oss fixes the SwiGLU limit at 7
    # what llama.cpp's llama4 fixes: every 4th layer NoPE (so 4 layers), QK-norm, 8192-token chunks and temperature
    "llama4_text": (
        "llama4",
        {
            "num_hidden_layers": 4,
            "no_rope_layer_interval": 4,
            "attention_chunk_size": 8192,
            "floor_scale": 8192,
            "attn_scale": 0.1,
            "use_qk_norm": True,
        },
    ),
    "gemma2": ("gemma2", {"query_pre_attn_scalar": 16}),  # llama.cpp's gemma2 scales by the head width (16)
}
DEFAULT = {"gpt_neox", "llama_gqa"}
FUSED_QKV = "olmo"  # also converted with --fuse-qkv: one attn_qkv tensor per layer, split by llmc's reader

# run in the converter's own process: its sys.path, its gguf-py, the patches
CONVERT = r"""
import sys
src, jobs = sys.argv[1], sys.argv[2:]
sys.path[:0] = [src, src + "/gguf-py"]
from conversion import base, chatglm, ernie, gemma, gpt2, gptneox, llama, stablelm
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "default"  # the tiny BPE: no known hash
real_vocabs = (chatglm.ChatGLMModel, ernie.Ernie4_5Model, llama.LlamaModel, gemma.Gemma2Model, llama.Llama4Model)
for model in real_vocabs:  # (GLM's, SentencePiece)
    model.set_vocab = base.TextModel._set_vocab_gpt2
def with_hparams(model, **fields):  # config.json names of transformers 4 that transformers 5's dicts lack
    init = model.__init__
    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        for key, value in fields.items():
            self.hparams.setdefault(key, value(self.hparams))
    model.__init__ = patched
with_hparams(gptneox.GPTNeoXModel, rotary_pct=lambda h: (h.get("rope_parameters") or {})["partial_rotary_factor"])
with_hparams(gpt2.GPT2Model, n_ctx=lambda h: h["n_positions"])
stablelm_modify = stablelm.StableLMModel.modify_tensors
def stablelm_modify_yielding_stacked_norms(self, *args):  # it returns (not yields) the stacked QK-norms
    stacked = yield from stablelm_modify(self, *args)
    if stacked is not None:
        yield from stacked
stablelm.StableLMModel.modify_tensors = stablelm_modify_yielding_stacked_norms
import traceback
import convert_hf_to_gguf
for job in jobs:  # a family the converter fails on fails its own tests, with the converter's traceback
    folder, outtype, outfile, *extra = job.split("|")
    sys.argv = ["convert_hf_to_gguf.py", folder, "--outtype", outtype, "--outfile", outfile, *extra]
    try:
        convert_hf_to_gguf.main()
    except BaseException:
        open(outfile + ".error", "w").write(traceback.format_exc())
"""


def converter_source() -> Path:
    """llama.cpp's sources with ``convert_hf_to_gguf.py``: an unpacked build folder, else the cached sdist's."""
    for folder in sorted(CACHE.glob(f"llama.cpp-{LLAMA_CPP_VERSION}-*/src")):
        if (folder / "convert_hf_to_gguf.py").exists() and (folder / "conversion").is_dir():
            return folder
    sdist = CACHE / "src" / f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz"
    if not sdist.exists():
        pytest.skip(
            f"llama.cpp's convert_hf_to_gguf.py is not on this machine (no {sdist}): "
            f"make install-llama-tools, or pip download --no-binary :all: --no-deps "
            f"llama-cpp-python=={LLAMA_CPP_VERSION} -d {sdist.parent} (network)"
        )
    out = CACHE / f"llama.cpp-{LLAMA_CPP_VERSION}-convert" / "src"
    if not (out / "convert_hf_to_gguf.py").exists():
        prefix = f"llama_cpp_python-{LLAMA_CPP_VERSION}/vendor/llama.cpp/"
        keep = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
        with tarfile.open(sdist) as archive:
            members = []
            for member in archive.getmembers():
                if member.name.startswith(prefix) and member.name[len(prefix) :].startswith(keep):
                    member.name = member.name[len(prefix) :]
                    members.append(member)
            archive.extractall(out, members=members, filter="data")
    return out


def _selected(session, module) -> set[str]:
    """The families whose tests in this module run in this session (their files are converted in one go)."""
    names = set()
    for item in session.items:
        if item.module is module and hasattr(item, "callspec") and item.get_closest_marker("skip") is None:
            names.add(item.callspec.params.get("name"))  # (tests parametrized otherwise add None)
    return names - {None}


@pytest.fixture(scope="module")
def gguf_files(request, tmp_path_factory):
    """(family, outtype) -> (GGUF file, HF checkpoint folder); every selected family converted by one process."""
    src = converter_source()
    root = tmp_path_factory.mktemp("gguf-families")
    families = sorted(_selected(request.session, request.module)) or sorted(DEFAULT)
    checkpoints, jobs, files = {}, [], {}
    for seed, name in enumerate(GGUF_FAMILIES):
        if name not in families:
            continue
        checkpoints[name] = make_checkpoint(root / name, name, seed=40 + seed, overrides=GGUF_FAMILIES[name][1])
        variants = [("f32", ""), ("q8_0", "")] + ([("f32", "--fuse-qkv")] if name == FUSED_QKV else [])
        for outtype, extra in variants:
            out = root / f"{name}-{outtype}{extra.replace('--', '-')}.gguf"
            jobs.append("|".join([str(checkpoints[name]), outtype, str(out), *([extra] if extra else [])]))
            files[name, outtype + extra] = (out, checkpoints[name])
    done = subprocess.run(
        [sys.executable, "-c", CONVERT, str(src), *jobs], capture_output=True, text=True, env={**os.environ}
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return files


def converted(files: dict, name: str, outtype: str) -> tuple[Path, Path]:
    gguf, checkpoint = files[name, outtype]
    error = gguf.with_name(gguf.name + ".error")
    if error.exists():
        pytest.fail(f"llama.cpp's converter failed on the tiny {name} ({outtype}):\n{error.read_text()[-3000:]}")
    return gguf, checkpoint


def load_hf(path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def as_q8_0(hf) -> None:
    """transformers' model with the weights of the converter's q8_0 file: every matrix but norms and learned
    positions through Q8_0 (gguf-py's quantizer, as the converter's; blocks along the input features)."""
    import torch

    done = set()  # a tied embedding / LM head is one tensor
    with torch.no_grad():
        for module_name, module in hf.named_modules():
            for name, param in module.named_parameters(recurse=False):
                full = f"{module_name}.{name}"
                if param.ndim < 2 or id(param) in done or "norm" in full or module_name.endswith("wpe"):
                    continue
                if module_name.endswith(("mlp.gate", "router")) or name.endswith("bias"):
                    continue  # MoE routers and (expert) biases stay float32
                done.add(id(param))
                input_major = type(module).__name__ == "Llama4TextExperts" or getattr(module, "is_transposed", False)
                if param.ndim == 3 and input_major:  # GPT-OSS's, Llama 4's stacks [E, in, out]: blocks along inputs
                    stacked = [q8_0(np.ascontiguousarray(w.T)).T for w in param.numpy()]
                    param.copy_(torch.from_numpy(np.ascontiguousarray(np.stack(stacked))))
                    continue
                conv1d = type(module).__name__ == "Conv1D"  # GPT-2 stores [in, out]
                rows = np.ascontiguousarray(param.numpy().T if conv1d else param.numpy())
                mla = full.endswith("kv_b_proj.weight")
                decoded = mla_kv_b_as_stored(rows, hf.config, q8_0) if mla else q8_0(rows)
                param.copy_(torch.from_numpy(np.ascontiguousarray(decoded.T if conv1d else decoded)))


def q8_0(rows: np.ndarray) -> np.ndarray:
    from gguf import GGMLQuantizationType, quants

    return quants.dequantize(quants.quantize(rows, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0)


def mla_kv_b_as_stored(rows: np.ndarray, config, quantize) -> np.ndarray:
    """DeepSeek's kv_b_proj as the q8_0 file holds it: per head, the W_UK rows transposed (attn_k_b, rows of
    qk_nope_head_dim values: float16, too short for Q8_0 blocks) and the W_UV rows (attn_v_b, through Q8_0)."""
    heads, nope, v = config.num_attention_heads, config.qk_nope_head_dim, config.v_head_dim
    per_head = rows.reshape(heads, nope + v, -1)
    uk = per_head[:, :nope].astype(np.float16).astype(np.float32)
    uv = quantize(np.ascontiguousarray(per_head[:, nope:]).reshape(heads * v, -1)).reshape(heads, v, -1)
    return np.concatenate([uk, uv], axis=1).reshape(rows.shape)


def llmc_logits(gguf: Path, quant: str, out: Path, ids: list[int], cpu_kernels: str = "float") -> np.ndarray:
    from llmc.compile import CompileOptions, compile_model
    from llmc.runtime.engine import Engine

    options = CompileOptions(
        quant=quant,
        output=out,
        quiet=True,
        context_window=64,
        prefill_chunk=TINY_PREFILL_CHUNK,
        cpu_kernels=cpu_kernels,
    )
    engine = Engine(compile_model(str(gguf), options))
    engine.add_sequence(0)
    return engine.forward_all(0, ids)


def assert_close(actual: np.ndarray, expected: np.ndarray, tolerance: float, what: str) -> None:
    for position, (a, b) in enumerate(zip(actual, expected)):
        scale, error = float(np.abs(b).max()), float(np.abs(a - b).max())
        message = f"{what} position {position}: max|err| {error:.3g} > {tolerance} x {scale:.3g}"
        assert error <= tolerance * scale, message


FAMILY_PARAMS = [n if n in DEFAULT else pytest.param(n, marks=pytest.mark.slow) for n in GGUF_FAMILIES]


@pytest.mark.parametrize("outtype", ["f32", "q8_0"])
@pytest.mark.parametrize("name", FAMILY_PARAMS)
def test_llama_cpp_gguf_equals_transformers(name, outtype, gguf_files, tmp_path):
    from llmc.checkpoint.gguf_reader import GGUFCheckpoint

    gguf, checkpoint = converted(gguf_files, name, outtype)
    assert GGUFCheckpoint(gguf).arch == GGUF_FAMILIES[name][0]
    hf = load_hf(checkpoint)
    ids = np.random.default_rng(5).integers(3, hf.config.vocab_size, PROMPT).tolist()
    if outtype == "q8_0":
        as_q8_0(hf)
    quant = "q0f32" if outtype == "f32" else "keep"
    ours = llmc_logits(gguf, quant, tmp_path / "out", ids)
    assert_close(ours, hf_logits(hf, ids), FP32, f"{name} {outtype} GGUF ({quant})")


@pytest.mark.slow
@pytest.mark.parametrize("name", [FUSED_QKV])
def test_fused_qkv_gguf_is_split_by_the_reader(name, gguf_files, tmp_path):
    """``--fuse-qkv`` files hold one ``attn_qkv`` per layer (Q/K rows permuted before fusing): the reader offers
    its row ranges as the family's q/k/v tensors."""
    from llmc.checkpoint.gguf_reader import GGUFCheckpoint

    gguf, checkpoint = converted(gguf_files, name, "f32--fuse-qkv")
    assert any(t.name == "blk.0.attn_qkv.weight" for t in GGUFCheckpoint(gguf).tensors)
    hf = load_hf(checkpoint)
    ids = np.random.default_rng(6).integers(3, hf.config.vocab_size, PROMPT).tolist()
    assert_close(llmc_logits(gguf, "q0f32", tmp_path / "out", ids), hf_logits(hf, ids), FP32, f"{name} fused qkv")


def test_unsupported_gguf_architecture_is_a_clear_error(tmp_path):
    """``llmc inspect`` / ``llmc compile`` on a GGUF of an architecture no family reads: one ``llmc: error:``
    line naming it and the supported ones."""
    import gguf

    from llmc.models import gguf_architectures

    path = tmp_path / "bloom.gguf"
    writer = gguf.GGUFWriter(str(path), "bloom")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    llmc = str(Path(sys.executable).parent / "llmc")
    for command in (["inspect", str(path)], ["compile", str(path), "-o", str(tmp_path / "out")]):
        done = subprocess.run([llmc, *command], capture_output=True, text=True)
        assert done.returncode != 0
        assert "llmc: error:" in done.stderr and "'bloom'" in done.stderr, done.stderr
        assert ", ".join(gguf_architectures()) in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def mxfp4_gguf(tmp_path_factory):
    """The released gpt-oss layout: an MXFP4 checkpoint, which llama.cpp's converter repacks into ggml's MXFP4 type
    (gate and up split, nibbles reordered); with transformers holding the experts its own decoder makes from the
    checkpoint, and a prompt."""
    from support.mxfp4 import hf_with_decoded_experts, write_mxfp4_checkpoint

    from llmc.checkpoint.gguf_reader import GGUFCheckpoint

    root = tmp_path_factory.mktemp("gpt-oss-mxfp4")
    source = make_checkpoint(root / "float", "gpt_oss", seed=77, overrides=GGUF_FAMILIES["gpt_oss"][1])
    checkpoint = write_mxfp4_checkpoint(source, root / "mxfp4")
    gguf = root / "gpt-oss-mxfp4.gguf"
    job = f"{checkpoint}|f32|{gguf}"
    done = subprocess.run([sys.executable, "-c", CONVERT, str(converter_source()), job], capture_output=True, text=True)
    assert done.returncode == 0 and not gguf.with_name(gguf.name + ".error").exists(), done.stderr[-3000:]
    kinds = {t.name.split(".", 2)[-1]: t.tensor_type.name for t in GGUFCheckpoint(gguf).tensors}
    assert kinds["ffn_gate_exps.weight"] == kinds["ffn_down_exps.weight"] == "MXFP4"
    hf = hf_with_decoded_experts(checkpoint, root / "float-config")
    ids = np.random.default_rng(7).integers(3, hf.config.vocab_size, PROMPT).tolist()
    return gguf, hf_logits(hf, ids), ids


@pytest.mark.slow
@pytest.mark.parametrize(("quant", "kernels"), [("q0f32", "float"), ("keep", "float"), ("keep", "int8")])
def test_mxfp4_gpt_oss_gguf_equals_transformers(mxfp4_gguf, quant, kernels, tmp_path):
    """The MXFP4 file compiled at q0f32 (experts dequantized at load) and with ``--quant keep`` (the MXFP4 blocks
    as stored, decoded in the float expert kernels) equals transformers holding the decoded experts; on the CPU
    integer path (the same weights as 5-bit integers, int8 activations) within the int8 tolerance."""
    gguf, expected, ids = mxfp4_gguf
    ours = llmc_logits(gguf, quant, tmp_path / "out", ids, kernels)
    assert_close(ours, expected, FP32 if kernels == "float" else INT8, f"gpt_oss MXFP4 GGUF ({quant}, {kernels})")
    if quant == "keep":
        config = json.loads((tmp_path / "out" / "llmc-config.json").read_text())
        runs = config["tensor_formats"]["runs"]
        cache = json.loads((tmp_path / "out" / "tensor-cache.json").read_text())
        stored = {r["name"]: r["dtype"] for shard in cache["records"] for r in shard["records"]}
        # float kernels: the file's exponent bytes and codes; the integer path: its repacked codes and scales
        arrays = {"e": "uint32", "qs": "uint32"} if kernels == "float" else {"q_weight": "uint8", "q_scale": "float32"}
        for stack in ("gate_up_proj", "down_proj"):
            assert [fmt for fmt, _ in runs[f"model.layers.0.mlp.experts.{stack}.weight"]] == ["MXFP4"], runs
            for leaf, dtype in arrays.items():
                assert stored[f"model.layers.0.mlp.experts.{stack}.parts.0.{leaf}"] == dtype, stored
