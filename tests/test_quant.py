"""Group quantization: bit layout, round trip, exact kernels, quality, fusion, and the quantize command."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from support.checkpoints import make_trained_checkpoint

import llmc.quant.group
from llmc.cli import main
from llmc.compile import CompileOptions, compile_model, quantize_model
from llmc.quant import QUANTS, get_quant, int_dot
from llmc.quant.group_scheme import GroupScheme
from llmc.runtime.engine import Engine

GROUP_SCHEMES = [
    n for n, s in QUANTS.items() if isinstance(s, GroupScheme) and not s.group.search
]  # searched: test_gguf_quant
INT_DOT_SCHEMES = [name for name in GROUP_SCHEMES if int_dot.supports(QUANTS[name].group)]
MIN_COSINE = {"q8f16_1": 0.999, "q4f16_1": 0.98, "q4f32_1": 0.98, "q3f16_1": 0.95}


# ---------------------------------------------------------------------- layout and round trip
@pytest.mark.parametrize("name", GROUP_SCHEMES)
def test_round_trip_within_half_a_step(name):
    gq = get_quant(name).group
    rng = np.random.default_rng(0)
    for in_features in (gq.group_size * 3, 100, 7):  # 100 and 7 need zero padding for every group size
        weight = (rng.standard_normal((33, in_features)) * rng.choice([1e-3, 1.0, 50.0], (33, 1))).astype(np.float32)
        weight[0] = 0  # an all-zero row
        weight[1, :5] = [3.0, -3.0, 0, 1e-9, -1e-9]
        packed, scale = gq.quantize(weight)
        assert packed.dtype == np.uint32 and packed.shape == gq.packed_shapes(33, in_features)[0]
        assert scale.shape == (33, gq.num_groups(in_features)) and scale.dtype == np.dtype(gq.scale_dtype)
        decoded = gq.dequantize(packed, scale, in_features)
        half_step = np.repeat(np.abs(scale.astype(np.float32)) / 2, gq.group_size, axis=1)[:, :in_features]
        assert (np.abs(decoded - weight) <= half_step).all()
        assert (decoded[0] == 0).all()


def test_int4_layout_hand_checked():
    gq = get_quant("q4f16_1").group
    weight = np.zeros((1, 64), np.float32)
    weight[0, :16] = np.arange(16) - 8  # -8..7: scale 8/8.5, so codes 0..15 in order
    weight[0, 32:48] = 10 * (np.arange(16) - 8)  # second group: ten times larger
    packed, scale = gq.quantize(weight)
    assert [hex(w) for w in packed[0, :4]] == ["0x76543210", "0xfedcba98", "0x88888888", "0x88888888"]
    assert [hex(w) for w in packed[0, 4:6]] == ["0x76543210", "0xfedcba98"]
    assert np.isclose(float(scale[0, 0]), 8 / 8.5, rtol=1e-3) and np.isclose(float(scale[0, 1]), 80 / 8.5, rtol=1e-3)


def test_int3_layout_hand_checked():
    gq = get_quant("q3f16_1").group
    assert (gq.group_size, gq.per_word, gq.words_per_group) == (40, 10, 4)
    weight = np.zeros((1, 40), np.float32)
    weight[0, :8] = np.arange(8) - 4  # -4..3: codes 0..7, then zeros decode from 4
    packed, _ = gq.quantize(weight)
    # 10 codes of 3 bits per word, element i at bits 3i..3i+2: [0,1,2,3,4,5,6,7,4,4] and all-4 words
    assert [hex(w) for w in packed[0]] == ["0x24fac688", "0x24924924", "0x24924924", "0x24924924"]


def test_int8_layout_hand_checked():
    gq = get_quant("q8f16_1").group
    weight = np.zeros((1, 32), np.float32)
    weight[0, :2] = [-128, 127]
    packed, _ = gq.quantize(weight)
    assert hex(packed[0, 0]) == "0x8080ff00" and hex(packed[0, 1]) == "0x80808080"


def test_bits_per_param():
    assert [QUANTS[n].bits_per_param for n in ("q4f16_1", "q4f32_1", "q8f16_1")] == [4.5, 5.0, 8.5]
    assert QUANTS["q3f16_1"].bits_per_param == pytest.approx(3.2 + 0.4)


# ---------------------------------------------------------------------- compiled models
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return make_trained_checkpoint(tmp_path_factory.mktemp("trained") / "tiny-trained")


@pytest.fixture(scope="module")
def trained_builds(trained, tmp_path_factory):
    """``quant``: the exact float path (``--cpu-kernels float``); ``quant-int8``: the CPU integer path. Each is
    compiled when a test first asks for it (the default run skips the slow-marked cases and their builds)."""
    root = tmp_path_factory.mktemp("quant-builds")

    class Builds(dict):
        def __missing__(self, key: str) -> Path:
            quant, path = (key.removesuffix("-int8"), "int8") if key.endswith("-int8") else (key, "float")
            options = CompileOptions(
                quant=quant, output=root / key, quiet=True, context_window=64, prefill_chunk=64, cpu_kernels=path
            )
            self[key] = compile_model(str(trained), options)
            return self[key]

    return Builds()


def default_run(*cases: str):
    """Parameters: ``cases`` in the default run, the rest under ``--run slow`` (make test-all)."""
    return lambda names: [name if name in cases else pytest.param(name, marks=pytest.mark.slow) for name in names]


# the default run checks q4f16_1 (both CPU paths) and q8f16_1; q4f32_1 and q3f16_1 under --run slow
SAMPLED = default_run("q4f16_1", "q8f16_1", "q4f16_1-int8")


def prompts(engine) -> list[list[int]]:
    from llmc.runtime.session import Session

    tokenizer = Session(engine.folder).tokenizer
    text = tokenizer.encode("The lazy dog and the compiler: def add(a, b): return a + b. Numbers 42 appear. " * 2)
    rng = np.random.default_rng(0)
    return [text[:7], text[5:25], text[3:36]] + [rng.integers(3, engine.vocab_size, n).tolist() for n in (7, 20)]


def last_logits(engine, prompt_list) -> list[np.ndarray]:
    out = []
    for prompt in prompt_list:
        engine.add_sequence(0)
        out.append(engine.prefill(0, prompt))
        engine.remove_sequence(0)
    return out


@pytest.mark.parametrize("quant", SAMPLED(GROUP_SCHEMES))
def test_kernels_equal_transformers_on_dequantized_weights(quant, trained, trained_builds):
    """llmc's fused kernels compute exactly the model whose weights are the decoded ones."""
    import torch
    from transformers import AutoModelForCausalLM

    gq = get_quant(quant).group
    model = AutoModelForCausalLM.from_pretrained(trained, dtype=torch.float32).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:  # every Linear, the embedding and lm_head
                packed, scale = gq.quantize(param.numpy())
                param.copy_(torch.from_numpy(gq.dequantize(packed, scale, param.shape[1])))
    engine = Engine(trained_builds[quant])
    prompt_list = prompts(engine)
    tolerance = 1e-4 if gq.scale_dtype == "float32" else 2e-2
    for prompt, ours in zip(prompt_list, last_logits(engine, prompt_list)):
        with torch.no_grad():
            reference = model(torch.tensor([prompt])).logits[0, -1].numpy()
        assert np.abs(ours - reference).max() <= tolerance * np.abs(reference).max()


@pytest.mark.parametrize("quant", SAMPLED(GROUP_SCHEMES + [f"{q}-int8" for q in INT_DOT_SCHEMES]))
def test_quality_against_q0f32(quant, trained_builds):
    reference_engine = Engine(trained_builds["q0f32"])
    prompt_list = prompts(reference_engine)
    reference = last_logits(reference_engine, prompt_list)
    ours = last_logits(Engine(trained_builds[quant]), prompt_list)
    cosines = [float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(ours, reference)]
    assert min(cosines) >= MIN_COSINE[quant.removesuffix("-int8")], cosines


@pytest.mark.parametrize("quant", SAMPLED(INT_DOT_SCHEMES))
def test_int8_activations_cost_little(quant, trained_builds):
    """The integer path differs from the exact float path on the same codes only by the int8 rounding
    of activations: near-identical logits and the same top token."""
    prompt_list = prompts(Engine(trained_builds[quant]))
    exact = last_logits(Engine(trained_builds[quant]), prompt_list)
    ours = last_logits(Engine(trained_builds[f"{quant}-int8"]), prompt_list)
    assert json.loads((trained_builds[f"{quant}-int8"] / "llmc-config.json").read_text())["int_dot"] is not None
    for a, b in zip(ours, exact):
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) >= 0.999
        assert int(a.argmax()) == int(b.argmax())
        assert not np.array_equal(a, b), "the int8 path should not be the float path"


def test_no_kernel_writes_a_dequantized_weight(trained):
    """After the pipeline and TIR buffer compaction, no quantized kernel holds a float buffer shaped like
    a whole weight: each decodes only a tile of WEIGHT_TILE rows into a private buffer."""
    import tvm
    from tvm import s_tir

    from llmc.compile import ModelPlan
    from llmc.compiler.build import build_module
    from llmc.compiler.passes.cpu_schedule import WEIGHT_TILE
    from llmc.compiler.pipeline import make_pipeline
    from llmc.compiler.targets import get_target
    from llmc.models import llama
    from llmc.models.base import BuildSizes

    config = llama.parse_config(json.loads((trained / "config.json").read_text()), "tiny")
    sizes = BuildSizes(context_window=64, prefill_chunk=32)
    plan = ModelPlan(llama_family(), config, get_quant("q4f16_1"), True, cpu_kernels=False, sizes=sizes)  # float path
    target = get_target("llvm").tvm_target()
    mod, _ = build_module(plan.module(target), target)
    lowered = make_pipeline(target)(mod)
    compact = tvm.transform.Sequential(
        [
            s_tir.transform.LowerInitBlock(),
            s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
            s_tir.transform.ConvertBlocksToOpaque(),
            s_tir.transform.CompactBufferAllocation(),
        ]
    )
    c = config
    weight_shapes = {
        ((c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim, c.hidden_size),  # qkv_proj
        (c.hidden_size, c.num_attention_heads * c.head_dim),  # o_proj
        (2 * c.intermediate_size, c.hidden_size),  # gate_up_proj
        (c.hidden_size, c.intermediate_size),  # down_proj
        (c.vocab_size, c.hidden_size),  # embedding / lm_head
    }
    tiles = 0
    for gv, func in lowered.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or '"uint32"' not in func.script():
            continue
        text = compact(tvm.IRModule({"main": func}))["main"].script()
        for rows, cols in weight_shapes:
            pattern = rf"\(T\.int64\({rows}\), T\.int64\({cols}\)\)(, \"float16\")?\)"
            found = [m for m in re.finditer(r"alloc_buffer\(" + pattern, text)]
            assert not found, f"{gv.name_hint} writes a full {rows}x{cols} float weight"
        tiles += len(re.findall(rf"alloc_buffer\(\(T\.int64\({WEIGHT_TILE}\), T\.int64\(\d+\)\)", text))
    assert tiles >= 4, "the quantized matmuls should decode weight tiles"


def llama_family():
    from llmc.models import MODELS

    return MODELS["llama"]


# q4f32_1's float path by default: its weights are linked as they are (q4f16_1's fp16 norms are rewritten, and the
# CPU integer layout is rewritten, as test_gguf_quant's keep weights folder is for it); the rest under --run slow
@pytest.mark.parametrize("path", ["float", pytest.param("int8", marks=pytest.mark.slow)])
@pytest.mark.parametrize("quant", default_run("q4f32_1")(["q4f32_1", "q4f16_1"]))
def test_quantize_command_then_compile_reuses_weights(quant, path, trained, trained_builds, tmp_path):
    """A weights folder compiles to the same model as the checkpoint: linked as is where the target
    loads its layout (float path, float32), rewritten where it does not (CPU integer layout, fp16)."""
    weights = tmp_path / "weights"
    result = CliRunner().invoke(main, ["quantize", str(trained), "--quant", quant, "-o", str(weights), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "bits/param" in result.stdout and "MiB" in result.stdout
    stored = json.loads((weights / "llmc-config.json").read_text())
    assert stored["stage"] == "weights" and stored["quantization"] == quant and stored["int_dot"] is None
    assert not list(weights.glob("*.so")) and (weights / "tokenizer.json").exists()
    sizes = ["--quiet", "--context-window", "64", "--prefill-chunk", "64"]
    reference = quant if path == "float" else f"{quant}-int8"
    out = tmp_path / f"compiled-{path}"
    result = CliRunner().invoke(main, ["compile", str(weights), "-o", str(out), "--cpu-kernels", path, *sizes])
    assert result.exit_code == 0, result.output
    linked = os.stat(out / "params_shard_0.bin").st_ino == os.stat(weights / "params_shard_0.bin").st_ino
    assert linked == (path == "float" and quant == "q4f32_1")
    direct = Engine(trained_builds[reference])
    prompt_list = prompts(direct)
    for a, b in zip(last_logits(Engine(out), prompt_list), last_logits(direct, prompt_list)):
        if quant == "q4f32_1":
            assert np.array_equal(a, b)
        else:  # the folder holds norms in float16; a direct build converts them to float32 once
            assert np.abs(a - b).max() <= 1e-2 * np.abs(b).max() and a.argmax() == b.argmax()
    clash = CliRunner().invoke(main, ["compile", str(weights), "-o", str(tmp_path / "x"), "--quant", "q8f16_1"])
    assert clash.exit_code == 1 and f"holds {quant} weights" in clash.stderr


def test_fp_embeddings_keeps_embedding_and_head_float(trained, tmp_path):
    out = quantize_model(
        str(trained), CompileOptions(quant="q4f32_1", output=tmp_path / "w", quiet=True, quantize_embeddings=False)
    )
    names = json.loads((out / "llmc-config.json").read_text())["weights"]
    assert "model.embed_tokens.weight" in names and "lm_head.weight" in names
    assert "model.layers.0.self_attn.qkv_proj.q_weight" in names


def test_interrupted_quantize_leaves_nothing_and_rerun_succeeds(trained, tmp_path, monkeypatch):
    real = llmc.quant.group.GroupQuant._quantize_rows
    calls = []

    def flaky(self, weight):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(self, weight)

    monkeypatch.setattr(llmc.quant.group.GroupQuant, "_quantize_rows", flaky)
    with pytest.raises(KeyboardInterrupt):
        quantize_model(str(trained), CompileOptions(quant="q4f16_1", output=tmp_path / "w", quiet=True))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(llmc.quant.group.GroupQuant, "_quantize_rows", real)
    out = quantize_model(str(trained), CompileOptions(quant="q4f16_1", output=tmp_path / "w", quiet=True))
    assert (out / "llmc-config.json").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_unknown_scheme_lists_known_ones(trained, tmp_path):
    result = CliRunner().invoke(main, ["quantize", str(trained), "--quant", "q2f99", "-o", str(tmp_path / "w")])
    assert result.exit_code == 1 and "q2f99" in result.stderr and "q4f16_1" in result.stderr
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------------- perplexity
EVAL_TEXT = "The quick brown fox jumps over the lazy dog. def add(a, b):\n    return a + b\n" * 6


def test_eval_perplexity_equals_transformers(trained, trained_builds, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from llmc.runtime.perplexity import log_softmax_nll, window_slices
    from llmc.runtime.session import Session

    text_file = tmp_path / "text.txt"
    text_file.write_text(EVAL_TEXT)
    result = CliRunner().invoke(
        main, ["eval", str(trained_builds["q0f32"]), "--text", str(text_file), "--window", "40", "--json"]
    )
    assert result.exit_code == 0, result.output
    ours = json.loads(result.stdout)
    ids = Session(trained_builds["q0f32"]).tokenizer.encode(EVAL_TEXT)
    model = AutoModelForCausalLM.from_pretrained(trained, dtype=torch.float32).eval()
    nll = []
    for part in window_slices(len(ids), 40):
        window = ids[part]
        with torch.no_grad():
            logits = model(torch.tensor([window[:-1]])).logits[0].numpy()
        nll.extend(log_softmax_nll(logits, np.asarray(window[1:])))
    assert ours["tokens"] == len(nll) == len(ids) - len(window_slices(len(ids), 40))
    assert ours["perplexity"] == pytest.approx(float(np.exp(np.mean(nll))), rel=1e-4)
    assert ours["perplexity"] < 10, "the trained tiny model should know its training text"


@pytest.mark.slow  # two perplexity runs of their own (~60 s); eval itself: test_eval_perplexity_equals_transformers
def test_quantize_eval_reports_both_perplexities(trained, tmp_path):
    text_file = tmp_path / "text.txt"
    text_file.write_text(EVAL_TEXT)
    result = CliRunner().invoke(
        main,
        [
            "quantize",
            str(trained),
            "--quant",
            "q4f16_1",
            "-o",
            str(tmp_path / "w"),
            "--quiet",
            "--eval",
            str(text_file),
            "--window",
            "40",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["tokens"] > 50 and out["text"] == str(text_file)
    assert out["q0f32_perplexity"] <= out["perplexity"] * 1.05
    assert out["perplexity"] <= out["q0f32_perplexity"] * 1.25
