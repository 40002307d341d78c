"""Llama 4 (text) against transformers' Llama4ForCausalLM, and what llmc refuses for it.

The four family checks of test_models_families.py (prefill at three lengths, teacher-forced decode, batch prefill +
batch decode, greedy tokens) on the tiny ``llama4_text`` checkpoint of ``FAMILY_MODELS`` (a RoPE layer with QK-norm,
chunked attention and a dense MLP; a NoPE layer with temperature tuning and a MoE with a shared expert), all within
one chunk; then chunked attention masked beyond one chunk, the multimodal config's tensor names, and the refusals.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from support.checkpoints import FAMILY_MODELS, TINY_CONTEXT_WINDOW
from test_models_families import (  # noqa: F401 - the imported tests run here with this file's fixture
    PROMPT_LENGTHS,
    open_family,
    test_batch_prefill_and_batch_decode,
    test_greedy_tokens_match_transformers,
    test_prefill_then_decode,
    test_window_and_chunk_cover_the_test,
)

from llmc.errors import ConfigError
from llmc.models import MODELS
from llmc.plan import CompileOptions, apply_sizes

NAME = "llama4_text"
VISION = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=28,
              patch_size=14, vision_output_dim=32, projector_input_dim=32, projector_output_dim=32)  # fmt: skip


@pytest.fixture(scope="module")
def family(compiled, family_checkpoints):
    yield from open_family(NAME, compiled, family_checkpoints)


def _text_config(**changes) -> dict:
    """The config.json fields of ``FAMILY_MODELS["llama4_text"]`` (the sizes tests/support/checkpoints.py gives it)."""
    hf = {k: v for k, v in FAMILY_MODELS[NAME].items() if k not in ("arch", "config_class")}
    hf.update(model_type=NAME, vocab_size=64, hidden_size=64, num_hidden_layers=2, max_position_embeddings=256)
    return {**hf, **changes}


def test_the_tiny_model_exercises_every_llama4_part():
    config = MODELS[NAME].parse_config(_text_config(), NAME)
    assert config.nope_layers == [1] and config.chunked_layers == [0] and config.moe_layers == [1]
    assert config.qk_norm and config.attn_temperature_tuning and config.moe_top_k == 2
    assert config.attention_chunk_size >= max(PROMPT_LENGTHS) + 8  # the test lengths stay within one chunk
    assert config.floor_scale < min(PROMPT_LENGTHS[1:])  # temperature tuning changes the longer prompts


def test_a_context_beyond_one_chunk_masks_the_chunks():
    """Within one chunk the module is Llama's; a longer context window flags the chunked layers' control heads."""
    config = MODELS[NAME].parse_config(_text_config(attention_chunk_size=64), NAME)
    assert apply_sizes(config, CompileOptions(), {}).context_window == 256  # no cap: min(256, 4096)
    for window, masked in ((64, False), (128, True)):
        sizes = apply_sizes(config, CompileOptions(context_window=window), {})
        module = MODELS[NAME].module_class(config, sizes)
        assert config.masks_chunks(sizes) is masked
        assert [spec.chunk for spec in module.attention_specs()] == ([64, 0] if masked else [0, 0])
        assert [layer.self_attn.control for layer in module.model.layers] == [masked, masked]
    unchunked = MODELS[NAME].parse_config(_text_config(attention_chunk_size=None), NAME)
    assert unchunked.chunked_layers == []
    assert not unchunked.masks_chunks(apply_sizes(unchunked, CompileOptions(context_window=256), {}))
    assert FAMILY_MODELS[NAME]["attention_chunk_size"] == TINY_CONTEXT_WINDOW  # the family checks: one chunk


def test_chunked_attention_beyond_one_chunk_matches_transformers(tmp_path):
    """A 16-token chunk in a 128-token build: prefill chunks (24 tokens) that cross chunk boundaries in the ragged
    and the paged kernels, decode steps across a boundary, and a child forked mid-chunk whose prefill and batch
    decode run a kernel per block depth, against transformers' chunked attention mask."""
    from support.checkpoints import hf_logits, make_checkpoint
    from test_models_families import FP32, assert_close, load_hf, random_ids

    from llmc.compile import compile_model
    from llmc.runtime.engine import Engine

    checkpoint = make_checkpoint(tmp_path / "ckpt", NAME, seed=41, overrides={"attention_chunk_size": 16})
    options = CompileOptions(output=tmp_path / "out", context_window=128, prefill_chunk=24, quiet=True)
    engine, hf = Engine(compile_model(str(checkpoint), options)), load_hf(checkpoint)
    parent = random_ids(engine.vocab_size, 50, seed=5)
    child = parent[:21] + random_ids(engine.vocab_size, 29, seed=6)
    references = [hf_logits(hf, parent), hf_logits(hf, child)]
    engine.add_sequence(0)
    assert_close(engine.prefill(0, parent[:44]), references[0][43], FP32, "prefill over 3 chunks")
    engine.fork_sequence(0, 1, 21)
    assert_close(engine.prefill(1, child[21:44]), references[1][43], FP32, "forked child prefill")
    for step in range(6):  # positions 44..49: across the boundary at 48
        logits = engine.batch_decode([0, 1], [parent[44 + step], child[44 + step]])
        assert_close(logits[0], references[0][44 + step], FP32, f"parent decode {step}")
        assert_close(logits[1], references[1][44 + step], FP32, f"child decode {step}")


def test_the_multimodal_config_reads_its_text_part_and_tensor_names():
    """A ``llama4`` config.json (text_config + vision_config) gives the text model's config, with the tensors of
    transformers' Llama4ForConditionalGeneration (``language_model.*``) as weight sources, shapes included."""
    import torch
    import transformers

    text = _text_config()
    text.pop("model_type")
    hf_config = transformers.Llama4Config(text_config=text, vision_config=VISION)
    with torch.device("meta"):
        model = transformers.Llama4ForConditionalGeneration(hf_config)
    shapes = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    family = MODELS["llama4"]
    config = family.parse_config(hf_config.to_dict(), "llama4")
    plain = MODELS[NAME].parse_config({**text, "model_type": NAME}, NAME)
    assert config.weight_prefix == "language_model.model." and config.head_name == "language_model.lm_head.weight"
    assert replace(config, weight_prefix=plain.weight_prefix, head_name=plain.head_name) == plain
    module = family.module_class(config)
    sources = family.weight_sources(config)
    params = dict(module.named_parameters())
    assert set(sources) == set(params)  # every parameter named, under the text model's prefix
    for source in sources.values():
        for name, shape in zip(source.names, source.shapes):
            assert shapes.get(name) == tuple(shape), name


@pytest.mark.slow
def test_a_multimodal_checkpoint_compiles_to_its_text_model(tmp_path):
    """A tiny Llama4ForConditionalGeneration checkpoint (``llama4`` config.json, ``language_model.*`` tensors beside a
    vision tower) compiles and prefills as transformers' model does on text alone."""
    import torch
    import transformers
    from support.checkpoints import hf_logits, make_tokenizer, randomize
    from test_models_families import FP32, assert_close, random_ids

    from llmc.compile import CompileOptions, compile_model
    from llmc.runtime.engine import Engine

    folder = tmp_path / "llama4-multimodal"
    folder.mkdir()
    text = {**_text_config(vocab_size=make_tokenizer(folder), rms_norm_eps=1e-5, eos_token_id=2), "bos_token_id": None}
    text.pop("model_type")
    config = transformers.Llama4Config(text_config=text, vision_config=VISION)
    torch.manual_seed(0)
    model = transformers.Llama4ForConditionalGeneration(config).eval()
    randomize(model, 0)
    model.save_pretrained(folder)
    options = CompileOptions(output=tmp_path / "out", context_window=128, prefill_chunk=24, quiet=True)
    engine = Engine(compile_model(str(folder), options))
    for seq_id, length in enumerate(PROMPT_LENGTHS):
        ids = random_ids(engine.vocab_size, length, seed=20 + seq_id)
        engine.add_sequence(seq_id)
        assert_close(
            engine.prefill(seq_id, ids), hf_logits(model, ids)[-1], FP32, f"llama4 multimodal prefill {length}"
        )
        engine.remove_sequence(seq_id)


@pytest.mark.slow
def test_without_nope_layers_the_cache_rotates(tmp_path):
    """Every layer with RoPE (no_rope_layers all 1): the KV cache applies the llama3 rope, after the module's
    QK-norm (a rotation keeps each head's norm), and the result is still transformers'."""
    from support.checkpoints import hf_logits, make_checkpoint
    from test_models_families import FP32, assert_close, load_hf, random_ids

    from llmc.compile import CompileOptions, compile_model
    from llmc.runtime.engine import Engine

    checkpoint = make_checkpoint(tmp_path / "llama4-rope", NAME, seed=3, overrides={"no_rope_layers": [1, 1]})
    config = MODELS[NAME].parse_config(_text_config(no_rope_layers=[1, 1]), NAME)
    module = MODELS[NAME].module_class(config)
    assert not module.rope_in_model and [s.rope for s in module.attention_specs()] == ["cache", "cache"]
    options = CompileOptions(output=tmp_path / "out", context_window=128, prefill_chunk=24, quiet=True)
    engine, hf = Engine(compile_model(str(checkpoint), options)), load_hf(checkpoint)
    for seq_id, length in enumerate(PROMPT_LENGTHS):
        ids = random_ids(engine.vocab_size, length, seed=30 + seq_id)
        engine.add_sequence(seq_id)
        assert_close(engine.prefill(seq_id, ids), hf_logits(hf, ids)[-1], FP32, f"llama4 cache rope prefill {length}")
        engine.remove_sequence(seq_id)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported for llama4"),
        ({"rope_parameters": {"rope_type": "mrope", "rope_theta": 1e4}}, "rope scaling type 'mrope' is not supported"),
        ({"num_experts_per_tok": 5}, "0 < num_experts_per_tok <= num_local_experts; got 4 and 5"),
        ({"layer_types": ["sliding_attention", "full_attention"]}, r"layer_types \['sliding_attention'\] are not"),
        ({"no_rope_layers": [1]}, "no_rope_layers must list one entry for each of the 2 layers"),
        ({"moe_layers": [2]}, "moe_layers must list layer indices below 2"),
        ({"attention_chunk_size": 0}, "attention_chunk_size is 0; expected a positive integer"),
    ],
)
def test_configs_refuse_what_they_cannot_run(changes, message):
    with pytest.raises(ConfigError, match=message):
        MODELS[NAME].parse_config(_text_config(**changes), NAME)


def test_a_multimodal_config_without_text_config_is_refused():
    with pytest.raises(ConfigError, match="a llama4 config.json needs its text_config"):
        MODELS["llama4"].parse_config({"model_type": "llama4", "vision_config": {}}, "llama4")


def _hf_on_llmc_q4_weights(path):
    """transformers' model with every matrix llmc quantizes (not the router) replaced by llmc's q4f16_1 round trip."""
    import numpy as np
    import torch
    from test_models_families import load_hf

    from llmc.quant import get_quant

    group = get_quant("q4f16_1").group

    def trip(weight: np.ndarray) -> np.ndarray:  # [out, in], groups along in
        packed, scale = group.quantize(weight)
        return group.dequantize(packed, scale, weight.shape[1])

    hf = load_hf(path)
    with torch.no_grad():
        for module in hf.modules():
            if type(module).__name__ == "Llama4TextExperts":  # input-major [E, in, out] stacks
                for stack in (module.gate_up_proj, module.down_proj):
                    stack.copy_(torch.from_numpy(np.stack([trip(w.T).T for w in stack.numpy()])))
            elif isinstance(module, torch.nn.Linear | torch.nn.Embedding) and type(module).__name__ != "Llama4Router":
                module.weight.copy_(torch.from_numpy(trip(module.weight.numpy())))
    return hf


@pytest.mark.slow  # its own q4f16_1 build (~60 s); the grouped int8 MoE path runs by default for qwen3_moe
def test_moe_on_the_cpu_integer_layout(compiled, family_checkpoints):
    """The default CPU build runs the experts grouped (expert-sorted rows, each assignment's input scaled by its
    router score beforehand): close to transformers on llmc's decoded q4f16_1 weights. The int8 activations of the
    integer path make 2-3% of max|logit| here; the experts run on unscaled inputs made 18-22%. (The float layout
    equals it within 1e-6; test_q4f16_equals_transformers_on_llmc_dequantized_weights checks that under --run slow.)"""
    from support.checkpoints import hf_logits
    from test_models_families import assert_close, random_ids

    from llmc.runtime.engine import Engine

    engine = Engine(compiled(NAME, "q4f16_1"))
    hf = _hf_on_llmc_q4_weights(family_checkpoints[NAME])
    for seq_id, length in enumerate(PROMPT_LENGTHS[1:]):
        ids = random_ids(engine.vocab_size, length, seed=9 + seq_id)
        engine.add_sequence(seq_id)
        assert_close(engine.prefill(seq_id, ids), hf_logits(hf, ids)[-1], 5e-2, f"llama4 q4f16_1 int8 prefill {length}")
        engine.remove_sequence(seq_id)
