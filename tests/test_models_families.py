"""Every model family against transformers' own implementation of the same tiny random config.

One q0f32 library per family serves: prefill at three lengths (short, across a KV page, longer than the
prefill chunk and than the sliding window), teacher-forced decode, batch prefill + batch decode of three
sequences, and free-running greedy tokens. A q4f16_1 library (float CPU path) is checked against the
transformers model whose weights were quantized and dequantized by llmc's own quantizer.
"""

from __future__ import annotations

import numpy as np
import pytest
from support.checkpoints import FAMILY_MODELS, TINY_PREFILL_CHUNK, hf_logits

from llmc.quant import get_quant
from llmc.runtime.engine import PAGE_SIZE, Engine

PROMPT_LENGTHS = [5, PAGE_SIZE + 3, TINY_PREFILL_CHUNK * 2 + 7]  # the last: > 2 chunks, > every sliding window
DECODE_STEPS = 6
FP32, FP16 = 1e-4, 2e-2  # of max|logit|


def random_ids(vocab: int, length: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(3, vocab, length).tolist()


def assert_close(actual: np.ndarray, expected: np.ndarray, tolerance: float, what: str) -> None:
    scale = float(np.abs(expected).max())
    error = float(np.abs(actual - expected).max())
    assert error <= tolerance * scale, f"{what}: max|err| {error:.3g} > {tolerance} x {scale:.3g}"


def load_hf(path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


# pytest-xdist runs a file on one worker (--dist loadfile): the families' checks are split over two files,
# this one and test_models_families_more.py, which runs the same four checks on the second half
# families whose differences another family of the default run already exercises (config-name aliases, an
# o_proj bias by another key, NoPE layers, interleaved RoPE, sequential LayerNorm with SwiGLU) run their checks
# under `--run slow` only (make test-models): the default run stays near 20 minutes on 2 cores
SLOW_FAMILIES = {"internlm3", "seed_oss", "smollm3", "ernie4_5", "stablelm"}
# (the multi-head latent attention families run these checks in test_models_deepseek.py, with MLA's own, and
# Llama 4 in test_models_llama4.py)
FAMILIES = [
    pytest.param(n, marks=pytest.mark.slow) if n in SLOW_FAMILIES else n
    for n in FAMILY_MODELS
    if not n.startswith(("deepseek", "llama4")) and n != "gpt_oss"  # (gpt_oss: test_models_gptoss.py)
]
FIRST_HALF, SECOND_HALF = FAMILIES[: len(FAMILIES) // 2], FAMILIES[len(FAMILIES) // 2 :]
# the q4f16_1 check by default on these (every kind of quantized layer: q/k/v/o biases, tied and biased heads,
# fused qkv and gate/up, ungated MLPs, experts with and without a dense layer, Conv1D, LayerNorm, 2-D QK-norm
# weights); on every family under `--run slow` (make test-all): the others differ from these in attention,
# RoPE or scale factors, which the q0f32 checks cover
QUANT_BY_DEFAULT = {"qwen3", "gemma3", "phi3", "mixtral", "gpt2", "phi", "cohere", "arcee"}  # (+ qwen3_moe's experts
# on the integer path: test_moe_experts_on_the_cpu_integer_layout)


def open_family(name: str, compiled, family_checkpoints):
    engine = Engine(compiled(name, "q0f32"))
    yield name, engine, load_hf(family_checkpoints[name])
    engine.reset()


@pytest.fixture(scope="module", params=FIRST_HALF)
def family(request, compiled, family_checkpoints):
    yield from open_family(request.param, compiled, family_checkpoints)


def test_window_and_chunk_cover_the_test(family):
    name, engine, hf = family
    window = getattr(hf.config, "sliding_window", None)
    if window:
        assert window < PROMPT_LENGTHS[-1], "the long prompt must cross the sliding window"
        assert engine.prefill_chunk < window
    assert engine.prefill_chunk < PROMPT_LENGTHS[-1]


def test_prefill_then_decode(family):
    name, engine, hf = family
    engine.reset()
    for seq_id, length in enumerate(PROMPT_LENGTHS):
        ids = random_ids(engine.vocab_size, length + DECODE_STEPS, seed=seq_id)
        reference = hf_logits(hf, ids)
        engine.add_sequence(seq_id)
        assert_close(engine.prefill(seq_id, ids[:length]), reference[length - 1], FP32, f"{name} prefill {length}")
        for step in range(DECODE_STEPS):
            position = length + step
            logits = engine.decode(seq_id, ids[position])
            assert_close(logits, reference[position], FP32, f"{name} decode step {step} after {length}")
        engine.remove_sequence(seq_id)


def test_batch_prefill_and_batch_decode(family):
    name, engine, hf = family
    engine.reset()
    lengths, seq_ids = [3, 11, 9], [10, 11, 12]
    prompts = [random_ids(engine.vocab_size, n + DECODE_STEPS, seed=100 + i) for i, n in enumerate(lengths)]
    references = [hf_logits(hf, p) for p in prompts]
    for seq_id in seq_ids:
        engine.add_sequence(seq_id)
    logits = engine.batch_prefill(seq_ids, [p[:n] for p, n in zip(prompts, lengths)])
    for i, n in enumerate(lengths):
        assert_close(logits[i], references[i][n - 1], FP32, f"{name} batch_prefill seq {i}")
    for step in range(DECODE_STEPS):
        logits = engine.batch_decode(seq_ids, [p[n + step] for p, n in zip(prompts, lengths)])
        for i, n in enumerate(lengths):
            assert_close(logits[i], references[i][n + step], FP32, f"{name} batch_decode step {step} seq {i}")
    for seq_id in seq_ids:
        engine.remove_sequence(seq_id)


def test_greedy_tokens_match_transformers(family):
    import torch

    name, engine, hf = family
    engine.reset()
    prompt = random_ids(engine.vocab_size, 30, seed=7)  # + 8 new tokens: past the smallest window
    engine.add_sequence(0)
    tokens = [int(np.argmax(engine.prefill(0, prompt)))]
    for _ in range(7):
        tokens.append(int(np.argmax(engine.decode(0, tokens[-1]))))
    engine.remove_sequence(0)
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert tokens == out[0, len(prompt) :].tolist()


def q4_dequantized_hf(checkpoint):
    """The transformers model of ``checkpoint`` with its matrices quantized and decoded by llmc's q4f16_1 groups."""
    import torch

    group = get_quant("q4f16_1").group
    hf = load_hf(checkpoint)

    def round_trip(weight: np.ndarray) -> np.ndarray:  # [out, in], groups along in
        packed, scale = group.quantize(weight)
        return group.dequantize(packed, scale, weight.shape[1])

    done = set()  # a tied embedding / LM head is one tensor: round-trip it once (quantizing is not idempotent)
    with torch.no_grad():
        for module_name, module in hf.named_modules():
            if type(module).__name__.endswith("Experts"):  # [E, rows, in] stacks: each expert's rows alike
                # Llama 4 and GPT-OSS stack experts [E, in, rows]
                flip = type(module).__name__ == "Llama4TextExperts" or getattr(module, "is_transposed", False)
                for stack in (module.gate_up_proj, module.down_proj):
                    rows = [round_trip(w.T).T if flip else round_trip(w) for w in stack.numpy()]
                    stack.copy_(torch.from_numpy(np.stack(rows)))
                continue
            weight = getattr(module, "weight", None)
            if weight is None or weight.ndim != 2 or module_name.endswith("wpe") or id(weight) in done:
                continue  # (learned positions stay float)
            if type(module).__name__.endswith(("Router", "Norm")) or module_name.endswith("kv_b_proj"):
                continue  # MoE routers and norms stay float (Cohere's per-head QK-norm weight is 2-D), and so do
                # MLA's absorbed W_UK / W_UV (DeepSeek: per-head parameters made from kv_b_proj, not a Linear)
            done.add(id(weight))
            if type(module).__name__ == "Conv1D":  # GPT-2 stores [in, out]
                weight.copy_(torch.from_numpy(round_trip(weight.numpy().T).T.copy()))
            else:  # Linear layers and the token embedding
                weight.copy_(torch.from_numpy(round_trip(weight.numpy())))
    return hf


@pytest.mark.parametrize(
    "name", [n if n in QUANT_BY_DEFAULT else pytest.param(n, marks=pytest.mark.slow) for n in FAMILY_MODELS]
)
def test_q4f16_equals_transformers_on_llmc_dequantized_weights(name, compiled, family_checkpoints):
    """The quantized kernels compute exactly the model whose matrices are llmc's decoded ones (fp16)."""
    hf = q4_dequantized_hf(family_checkpoints[name])
    engine = Engine(compiled(name, "q4f16_1", cpu_kernels="float"))
    for seq_id, length in enumerate(PROMPT_LENGTHS):
        ids = random_ids(engine.vocab_size, length, seed=50 + seq_id)
        engine.add_sequence(seq_id)
        assert_close(engine.prefill(seq_id, ids), hf_logits(hf, ids)[-1], FP16, f"{name} q4f16_1 prefill {length}")
        engine.remove_sequence(seq_id)


# ---------------------------------------------------------------------- GGUF files of the tiny models
# Mistral and Mixtral files use llama.cpp's llama architecture
GGUF_ARCH = {"qwen3": "qwen3", "mistral": "llama", "qwen3_moe": "qwen3moe", "mixtral": "llama"}


def write_gguf(checkpoint, name: str, path, formats: dict[str, str] | None = None) -> None:
    """The tiny checkpoint as a GGUF the way llama.cpp's converter writes one: its tensor names and
    metadata, Q/K rows permuted for the llama architecture, the BPE vocabulary and merges. Tensors are
    F32 unless ``formats`` maps a GGUF tensor-name fragment to a GGML type (quantized by gguf-py)."""
    import json

    import gguf
    import torch

    arch = GGUF_ARCH[name]
    hf = load_hf(checkpoint)
    c = hf.config
    tokenizer = json.loads((checkpoint / "tokenizer.json").read_text())
    vocab = sorted(tokenizer["model"]["vocab"].items(), key=lambda item: item[1])
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    if getattr(c, "sliding_window", None):
        writer.add_sliding_window(c.sliding_window)
    if hasattr(c, "num_experts_per_tok"):
        writer.add_expert_count(getattr(c, "num_local_experts", None) or c.num_experts)
        writer.add_expert_used_count(c.num_experts_per_tok)
        if hasattr(c, "moe_intermediate_size"):
            writer.add_expert_feed_forward_length(c.moe_intermediate_size)
            writer.add_expert_weights_norm(c.norm_topk_prob)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([3 if i < 3 else 1 for i in range(len(vocab))])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]])
    names = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "self_attn.q_norm": "attn_q_norm",
        "self_attn.k_norm": "attn_k_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "mlp.gate": "ffn_gate_inp",  # the MoE router
    }

    def add_tensor(out: str, array: np.ndarray) -> None:
        fmt = next((f for fragment, f in (formats or {}).items() if fragment in out), "F32")
        if fmt == "F32" or array.ndim < 2:  # norms stay F32, as llama.cpp keeps them
            writer.add_tensor(out, np.ascontiguousarray(array))
        else:
            kind = gguf.GGMLQuantizationType[fmt]
            writer.add_tensor(out, gguf.quants.quantize(np.ascontiguousarray(array), kind), raw_dtype=kind)

    for hf_name, tensor in hf.state_dict().items():
        array = tensor.to(torch.float32).numpy()
        if ".experts." in hf_name:  # transformers' [E, rows, cols] stacks -> llama.cpp's *_exps tensors
            layer = hf_name.split(".")[2]
            if hf_name.endswith("gate_up_proj"):
                gate, up = np.split(array, 2, axis=1)
                add_tensor(f"blk.{layer}.ffn_gate_exps.weight", gate)
                add_tensor(f"blk.{layer}.ffn_up_exps.weight", up)
            else:
                add_tensor(f"blk.{layer}.ffn_down_exps.weight", array)
            continue
        if hf_name == "model.embed_tokens.weight":
            out = "token_embd.weight"
        elif hf_name == "model.norm.weight":
            out = "output_norm.weight"
        elif hf_name == "lm_head.weight":
            out = "output.weight"
        else:
            _, _, layer, *rest = hf_name.split(".")
            module, kind = ".".join(rest[:-1]), rest[-1]
            out = f"blk.{layer}.{names[module]}.{kind}"
            if arch == "llama" and module in ("self_attn.q_proj", "self_attn.k_proj") and kind == "weight":
                heads = c.num_attention_heads if "q_proj" in module else c.num_key_value_heads
                array = array.reshape(heads, 2, array.shape[0] // heads // 2, -1).swapaxes(1, 2).reshape(array.shape)
        add_tensor(out, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# mistral (llama arch, a window) and qwen3_moe (experts) by default; llama.cpp's own converter output is checked in
# test_gguf_families.py
@pytest.mark.parametrize(
    "name", [n if n in ("mistral", "qwen3_moe") else pytest.param(n, marks=pytest.mark.slow) for n in GGUF_ARCH]
)
def test_gguf_of_the_tiny_model_equals_transformers(name, family_checkpoints, tmp_path):
    """The family's GGUF naming and metadata (qwen3 QK-norm tensors; llama-architecture Mistral files with
    their sliding window and permuted Q/K) give the same model as the safetensors checkpoint."""
    from llmc.compile import CompileOptions, compile_model

    gguf_file = tmp_path / f"{name}.gguf"
    write_gguf(family_checkpoints[name], name, gguf_file)
    artifact = compile_model(
        str(gguf_file),
        CompileOptions(output=tmp_path / "out", quiet=True, context_window=128, prefill_chunk=TINY_PREFILL_CHUNK),
    )
    engine = Engine(artifact)
    hf = load_hf(family_checkpoints[name])
    ids = random_ids(engine.vocab_size, PROMPT_LENGTHS[-1], seed=3)
    engine.add_sequence(0)
    ours = engine.forward_all(0, ids)
    reference = hf_logits(hf, ids)
    for position in (0, len(ids) // 2, len(ids) - 1):
        assert_close(ours[position], reference[position], FP32, f"{name} GGUF position {position}")


# GGML formats of the quantized MoE file: experts in three block formats, attention in Q8_0, router F32
MOE_FORMATS = {"ffn_gate_exps": "Q4_0", "ffn_up_exps": "Q4_0", "ffn_down_exps": "Q4_1", "attn_": "Q8_0"}


@pytest.mark.slow  # three MoE builds (~2.5 min): make test-models
def test_moe_gguf_keep_decodes_expert_blocks_like_gguf_py(family_checkpoints, tmp_path):
    """--quant keep runs the experts in the file's block formats: on the float path (decoded in the
    gathered expert matmul) its logits equal those of the q0f32 build, whose weights gguf-py dequantized;
    on the CPU integer path (grouped kernel over expert-sorted rows, int8 activations) they are close."""
    from llmc.compile import CompileOptions, compile_model

    gguf_file = tmp_path / "qwen3_moe-q.gguf"
    write_gguf(family_checkpoints["qwen3_moe"], "qwen3_moe", gguf_file, MOE_FORMATS)
    logits = {}
    for quant, cpu in (("keep", "float"), ("keep", "int8"), ("q0f32", "float")):
        options = CompileOptions(
            quant=quant, output=tmp_path / f"{quant}-{cpu}", quiet=True, context_window=128, prefill_chunk=16,
            cpu_kernels=cpu,
        )  # fmt: skip
        engine = Engine(compile_model(str(gguf_file), options))
        engine.add_sequence(0)
        logits[quant, cpu] = engine.forward_all(0, random_ids(engine.vocab_size, 40, seed=4))
    for position in (0, 20, 39):
        reference = logits["q0f32", "float"][position]
        assert_close(logits["keep", "float"][position], reference, FP32, f"keep position {position}")
        assert_close(logits["keep", "int8"][position], reference, 3e-2, f"keep int8 position {position}")


def test_moe_gguf_keep_refuses_experts_in_mixed_formats(family_checkpoints, tmp_path):
    from llmc.compile import CompileOptions, compile_model
    from llmc.errors import ConfigError

    gguf_file = tmp_path / "mixed.gguf"
    write_gguf(
        family_checkpoints["qwen3_moe"], "qwen3_moe", gguf_file, {"ffn_gate_exps": "Q4_0", "ffn_up_exps": "Q8_0"}
    )
    with pytest.raises(ConfigError, match="mix formats.*--quant q4f16_1"):
        compile_model(str(gguf_file), CompileOptions(output=tmp_path / "out", quiet=True, context_window=128))
    assert not (tmp_path / "out").exists()


def test_moe_experts_on_the_cpu_integer_layout(compiled):
    """The default CPU build stores expert stacks in the integer-path layout (as every matrix of the
    artifact) and decodes them in the gathered matmul: close to the float-layout build (the dense
    matmuls' int8 activations are the only difference)."""
    engines = {cpu: Engine(compiled("qwen3_moe", "q4f16_1", cpu_kernels=cpu)) for cpu in ("int8", "float")}
    ids = random_ids(engines["float"].vocab_size, PROMPT_LENGTHS[1], seed=9)
    logits = {}
    for cpu, engine in engines.items():
        engine.add_sequence(0)
        logits[cpu] = engine.prefill(0, ids)
        engine.remove_sequence(0)
    assert_close(logits["int8"], logits["float"], 3e-2, "qwen3_moe q4f16_1 int8 layout vs float layout")


def test_mixtral_gguf_equals_llama_cpp(family_checkpoints, tmp_path):
    """llama.cpp (llama-cpp-python, one token per eval) on the tiny Mixtral GGUF: the same routing and
    expert math as llmc's build of that file (llama.cpp's F32 path rounds some products through fp16)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python: make install-bench")
    from llmc.compile import CompileOptions, compile_model

    gguf_file = tmp_path / "mixtral.gguf"
    write_gguf(family_checkpoints["mixtral"], "mixtral", gguf_file)
    llm = llama_cpp.Llama(
        model_path=str(gguf_file), n_ctx=64, n_batch=1, n_ubatch=1, logits_all=True, verbose=False, n_threads=1
    )
    ids = random_ids(llm.n_vocab(), 12, seed=3)
    reference = []
    for token in ids:
        llm.eval([token])
        reference.append(np.array(llm.scores[llm.n_tokens - 1]))
    options = CompileOptions(output=tmp_path / "out", quiet=True, context_window=64, prefill_chunk=TINY_PREFILL_CHUNK)
    engine = Engine(compile_model(str(gguf_file), options))
    engine.add_sequence(0)
    ours = engine.forward_all(0, ids)
    for position, expected in enumerate(reference):
        assert_close(ours[position], expected, 2e-3, f"mixtral GGUF vs llama.cpp, position {position}")
        top2 = np.sort(expected)[-2:]
        if top2[1] - top2[0] > 1e-2 * np.abs(expected).max():
            assert ours[position].argmax() == expected.argmax(), f"greedy token at {position}"


def test_inspect_names_the_experts(compiled):
    import subprocess
    import sys
    from pathlib import Path

    llmc = str(Path(sys.executable).parent / "llmc")
    done = subprocess.run([llmc, "inspect", str(compiled("qwen3_moe", "q0f32"))], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "experts:      8 of 32 per MoE layer, top-3 per token, 1 of 2 layers sparse" in done.stdout
