"""GPT-OSS against transformers: attention sinks, a sliding layer masked by llmc's kernels, biased experts.

The four family checks of test_models_families.py (prefill at three lengths, teacher-forced decode, batch prefill +
batch decode, greedy tokens) on the tiny ``gpt_oss`` checkpoint of ``FAMILY_MODELS``: its sliding window (8) is
shorter than the prefill chunk (24), so windows are masked inside a chunk's ragged attention and over cached pages;
its SwiGLU limit (0.5) clamps most gate/up values. Then what is GPT-OSS's own: the cache's control heads, GPU targets
refused by name, configs refused by field.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.checkpoints import FAMILY_MODELS, hf_logits
from support.mxfp4 import hf_with_decoded_experts, write_mxfp4_checkpoint
from test_models_families import (  # noqa: F401 - the imported tests run here with this file's fixture
    DECODE_STEPS,
    FP32,
    PROMPT_LENGTHS,
    assert_close,
    open_family,
    q4_dequantized_hf,
    random_ids,
    test_batch_prefill_and_batch_decode,
    test_greedy_tokens_match_transformers,
    test_prefill_then_decode,
)

from llmc.errors import ConfigError
from llmc.models import MODELS
from llmc.runtime.engine import Engine

INT8 = 3e-2  # of max|logit| (measured: 0.6-1.6e-2 here; int8 activations)


@pytest.fixture(scope="module")
def family(compiled, family_checkpoints):
    yield from open_family("gpt_oss", compiled, family_checkpoints)


def _tiny_config(**changes):
    hf = {k: v for k, v in FAMILY_MODELS["gpt_oss"].items() if k != "arch"}
    hf.update(model_type="gpt_oss", vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2, **changes)
    return MODELS["gpt_oss"].parse_config(hf, "gpt_oss")


def test_windows_are_shorter_than_the_chunk(family):
    """The long prompt crosses the window, and a prefill chunk holds more than a window (no chunk bound)."""
    _, engine, hf = family
    assert hf.config.sliding_window < engine.prefill_chunk < PROMPT_LENGTHS[-1]


def test_forked_prefixes_match_transformers(family):
    """A child forked mid-page from a longer parent (the prefix cache's forks): its prefill runs over two block
    depths, and a batch decode of parent and child runs a decode kernel per depth, the child's own key only in the
    last one; the sink must enter each softmax once and the window must hold across depths."""
    _, engine, hf = family
    engine.reset()
    parent = random_ids(engine.vocab_size, 34 + DECODE_STEPS, seed=200)
    child = parent[:21] + random_ids(engine.vocab_size, 9 + DECODE_STEPS, seed=201)
    references = [hf_logits(hf, parent), hf_logits(hf, child)]
    engine.add_sequence(0)
    engine.prefill(0, parent[:34])
    engine.fork_sequence(0, 1, 21)
    assert_close(engine.prefill(1, child[21:30]), references[1][29], FP32, "forked child prefill")
    for step in range(DECODE_STEPS):
        logits = engine.batch_decode([0, 1], [parent[34 + step], child[30 + step]])
        assert_close(logits[0], references[0][34 + step], FP32, f"parent decode {step}")
        assert_close(logits[1], references[1][30 + step], FP32, f"forked child decode {step}")
    engine.remove_sequence(1)
    engine.remove_sequence(0)


def test_the_cache_gets_one_control_head_per_kv_group(family_checkpoints):
    """TVM's cache is built with heads + kv_heads query heads, every layer full (the kernels mask the window)."""
    from test_models_deepseek import _cache_geometry

    from llmc.compiler.targets import get_target
    from llmc.kernels.dispatch import dispatch_kernels

    spec = FAMILY_MODELS["gpt_oss"]
    hf = json.loads((family_checkpoints["gpt_oss"] / "config.json").read_text())
    module = MODELS["gpt_oss"].module_class(MODELS["gpt_oss"].parse_config(hf, "gpt_oss"))
    request = module.kv_cache_request()
    assert [spec.sinks for spec in request.layers] == [True, True]
    assert [spec.kind for spec in request.layers] == ["mha_sliding", "mha"]
    mod, _ = dispatch_kernels(module.export_tvm(spec=module.get_default_spec())[0], get_target("llvm").tvm_target())
    heads, kv = spec["num_attention_heads"], spec["num_key_value_heads"]
    geometry = _cache_geometry(mod)
    assert geometry == {"q_heads": heads + kv, "kv_heads": kv, "qk_dim": spec["head_dim"], "v_dim": spec["head_dim"]}
    assert "mha_sliding" not in mod["create_paged_kv_cache"].script()


def test_gpu_cache_gets_the_sink_kernels():
    """GPU targets build TVM's kernels with llmc's sink and window patch (llmc.kernels.gpu_sinks) over the same
    control heads, every layer full; the numbers are checked on lavapipe (`make test-vulkan`)."""
    import tvm

    from llmc.kernels.dispatch import cache_kinds, dispatch_kernels

    module = MODELS["gpt_oss"].module_class(_tiny_config())
    mod, _ = module.export_tvm(spec=module.get_default_spec())
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
    mod, requests = dispatch_kernels(mod, target)
    assert cache_kinds(requests[0], target) == ["mha", "mha"]
    for name in ("batch_prefill_ragged_kv", "batch_prefill_paged_kv", "batch_decode_paged_kv"):
        script = mod[name].script()
        assert "T.float32(-100000.0)" in script, name  # the window's dropped keys
        assert "T.float32(1.4426950408889634), T.float32(-50000.0))" in script, name  # the sink start


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"layer_types": ["sliding_attention", "chunked_attention"]}, "layer_types has chunked_attention"),
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0}}, "rope type 'linear' is not supported"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
        ({"num_experts_per_tok": 5}, "num_experts_per_tok 5 is more than num_local_experts 4"),
        ({"head_dim": 2}, "head_dim 2 is too narrow for llmc's attention sinks"),
        ({"sliding_window": None}, "sliding_window is None"),
        ({"swiglu_limit": 0}, "swiglu_limit is 0"),
    ],
)
def test_configs_refuse_what_they_cannot_run(bad, message):
    with pytest.raises(ConfigError, match=message):
        _tiny_config(**bad)


@pytest.mark.slow  # one more build (~60 s): the default run keeps this file near a minute
def test_q4f16_integer_path_matches_transformers(compiled, family_checkpoints):
    """q4f16_1 on the CPU integer path (the default CPU build): the experts run grouped (assignments sorted by expert,
    each expert's biases added to its rows) against transformers on llmc's decoded weights; int8 activations make
    the bound looser than the float path's (``test_q4f16_equals_transformers_on_llmc_dequantized_weights``, slow)."""
    hf = q4_dequantized_hf(family_checkpoints["gpt_oss"])
    engine = Engine(compiled("gpt_oss", "q4f16_1"))
    for seq_id, length in enumerate(PROMPT_LENGTHS):
        ids = random_ids(engine.vocab_size, length + 2, seed=60 + seq_id)
        reference = hf_logits(hf, ids)
        engine.add_sequence(seq_id)
        assert_close(engine.prefill(seq_id, ids[:length]), reference[length - 1], INT8, f"q4f16_1 prefill {length}")
        for step in range(2):
            logits = engine.decode(seq_id, ids[length + step])
            assert_close(logits, reference[length + step], INT8, f"q4f16_1 decode {step} after {length}")
        engine.remove_sequence(seq_id)


@pytest.fixture(scope="module")
def mxfp4_checkpoint(family_checkpoints, tmp_path_factory):
    """The tiny checkpoint with its expert stacks stored as MXFP4 (quantization_config as the released models')."""
    return write_mxfp4_checkpoint(family_checkpoints["gpt_oss"], tmp_path_factory.mktemp("gptoss-mxfp4") / "checkpoint")


def test_mxfp4_experts_decode_as_transformers_does(mxfp4_checkpoint):
    """llmc's reader gives the expert stacks transformers' own MXFP4 decoder gives, bit for bit."""
    import torch
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    from llmc.checkpoint import open_checkpoint
    from llmc.source import resolve

    reader = open_checkpoint(resolve(str(mxfp4_checkpoint)))
    names = [n for n in reader.names() if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]
    assert len(names) == 4 and not [n for n in reader.names() if n.endswith(("_blocks", "_scales"))]
    raw = reader.reader
    for name in names:
        blocks, scales = (torch.from_numpy(np.array(raw.get(name + s))) for s in ("_blocks", "_scales"))
        theirs = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32).numpy()
        ours = reader.get(name)
        assert ours.dtype == np.float32 and np.array_equal(ours.view(np.uint32), theirs.view(np.uint32)), name


@pytest.mark.slow  # a build of its own (~40 s): make test-all
def test_mxfp4_checkpoint_compiles_and_equals_transformers_on_its_decoded_experts(mxfp4_checkpoint, tmp_path):
    """The MXFP4 folder compiles (float32 here) and its logits equal transformers' model holding the decoded
    expert stacks (transformers' decoder) in place of the float ones."""
    from llmc.compile import CompileOptions, compile_model

    options = CompileOptions(quant="q0f32", output=tmp_path / "out", quiet=True, context_window=64, prefill_chunk=24)
    engine = Engine(compile_model(str(mxfp4_checkpoint), options))
    hf = hf_with_decoded_experts(mxfp4_checkpoint, tmp_path / "float-config")
    ids = random_ids(engine.vocab_size, 30, seed=300)
    engine.add_sequence(0)
    assert_close(engine.prefill(0, ids), hf_logits(hf, ids)[-1], FP32, "MXFP4 gpt_oss prefill")
    engine.remove_sequence(0)


def test_mxfp4_blocks_are_offered_as_ggml_mxfp4_rows(mxfp4_checkpoint):
    """For ``--quant keep`` the reader offers each packed stack as ggml MXFP4 rows (output-major, as stored): gguf-py's
    own decoder gives the values transformers' decoder gives (its ``[E, in, out]`` stack, rows swapped back), and
    every other tensor is offered as F32 (kept float)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    from llmc.checkpoint import open_checkpoint
    from llmc.source import resolve

    reader = open_checkpoint(resolve(str(mxfp4_checkpoint)))
    types = reader.tensor_types()
    packed = [n for n, (kind, _) in types.items() if kind == "MXFP4"]
    assert len(packed) == 4 and {kind for kind, _ in types.values()} == {"MXFP4", "F32"}
    for name in packed:
        dense = reader.get(name)  # [E, in, out]
        assert types[name][1] == (dense.shape[0] * dense.shape[2], dense.shape[1])
        kind, raw = reader.get_raw(name)
        assert kind == "MXFP4" and raw.dtype == np.uint8 and raw.shape == (types[name][1][0], dense.shape[1] // 32 * 17)
        rows = np.asarray(dequantize(raw, GGMLQuantizationType.MXFP4), np.float32).reshape(types[name][1])
        assert np.array_equal(rows, np.swapaxes(dense, 1, 2).reshape(rows.shape)), name  # -0 == +0 here


def test_keep_on_a_float_checkpoint_is_one_clear_error(family_checkpoints, tmp_path):
    """``--quant keep`` on an HF folder with neither GGUF formats nor MXFP4 blocks: one ``llmc: error:`` line."""
    import subprocess
    import sys
    from pathlib import Path

    llmc = str(Path(sys.executable).parent / "llmc")
    command = [llmc, "compile", str(family_checkpoints["gpt_oss"]), "--quant", "keep", "-o", str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and lines[0].startswith("llmc: error:"), done.stderr
    assert "MXFP4" in lines[0] and "--quant keep" in lines[0], lines[0]


def test_mxfp4_checkpoints_are_kept_as_stored_by_default(mxfp4_checkpoint, family_checkpoints):
    """Without --quant an MXFP4 folder keeps its expert blocks (as AWQ/GPTQ/fp8 folders keep theirs); decoding them
    to float32 would hold gpt-oss-20b's experts in about 80 GB. A float folder still gets q0f32."""
    from llmc.compile import CompileOptions, plan_model

    assert plan_model(str(mxfp4_checkpoint), CompileOptions()).scheme.name == "keep"
    assert plan_model(str(family_checkpoints["gpt_oss"]), CompileOptions()).scheme.name == "q0f32"


@pytest.mark.slow  # a build of its own (~40 s) per kernel kind: make test-all
@pytest.mark.parametrize("kernels", ["float", "int8"])
def test_mxfp4_checkpoint_kept_as_stored_equals_transformers(mxfp4_checkpoint, kernels, tmp_path):
    """``--quant keep`` on the MXFP4 folder: the expert blocks stay 4-bit (ggml MXFP4 planes: 16 code bytes and an
    exponent byte per 32 weights; the CPU integer path's 5-bit codes and float32 scales), the other weights float,
    and the logits equal transformers' model holding the decoded experts (float kernels: to FP32; int8 activations:
    to INT8)."""
    from llmc.compile import CompileOptions, compile_model, quantize_model

    out = tmp_path / "out"
    options = CompileOptions(
        quant="keep", output=out, quiet=True, context_window=64, prefill_chunk=24, cpu_kernels=kernels
    )
    engine = Engine(compile_model(str(mxfp4_checkpoint), options))
    cache = json.loads((out / "tensor-cache.json").read_text())
    stored = {r["name"]: r for shard in cache["records"] for r in shard["records"]}
    config = json.loads((mxfp4_checkpoint / "config.json").read_text())
    experts, hidden, inter = config["num_local_experts"], config["hidden_size"], config["intermediate_size"]
    for stack, rows, cols in (("gate_up_proj", 2 * inter, hidden), ("down_proj", hidden, inter)):
        prefix = f"model.layers.0.mlp.experts.{stack}"
        assert f"{prefix}.weight" not in stored
        arrays = {n.rpartition(".")[2]: r for n, r in stored.items() if n.startswith(f"{prefix}.parts.0.")}
        if kernels == "float":
            words = -(-cols // 32 // 4)  # a row's exponent bytes, four to a word
            assert {n: (r["dtype"], r["shape"]) for n, r in arrays.items()} == {
                "e": ("uint32", [experts * rows, words]),
                "qs": ("uint32", [experts * rows, cols // 8]),
            }
            assert arrays["qs"]["nbytes"] == experts * rows * cols // 2  # 4 bits a weight
            assert arrays["e"]["nbytes"] < experts * rows * (cols // 32 + 4)  # a byte per 32, a row padded to words
        else:
            assert {n: r["dtype"] for n, r in arrays.items()} == {"q_weight": "uint8", "q_scale": "float32"}
    assert stored["model.layers.0.self_attn.qkv_proj.weight"]["dtype"] == "float32"
    hf = hf_with_decoded_experts(mxfp4_checkpoint, tmp_path / "float-config")
    ids = random_ids(engine.vocab_size, 30, seed=301)
    engine.add_sequence(0)
    tolerance = FP32 if kernels == "float" else INT8
    logits = engine.prefill(0, ids)
    assert_close(logits, hf_logits(hf, ids)[-1], tolerance, f"MXFP4 kept ({kernels}) prefill")
    engine.remove_sequence(0)
    if kernels == "int8":  # a weights folder holds the portable planes; compiling it repacks them as above
        folder = quantize_model(str(mxfp4_checkpoint), CompileOptions(quant="keep", output=tmp_path / "w", quiet=True))
        index = json.loads((folder / "tensor-cache.json").read_text())
        names = {r["name"] for shard in index["records"] for r in shard["records"]}
        assert "model.layers.0.mlp.experts.down_proj.parts.0.qs" in names, sorted(names)
        options = CompileOptions(output=tmp_path / "a", quiet=True, context_window=64, prefill_chunk=24)
        again = Engine(compile_model(str(folder), options))
        again.add_sequence(0)
        assert np.array_equal(again.prefill(0, ids), logits)
