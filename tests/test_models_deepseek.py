"""DeepSeek-V2 / -V3 (multi-head latent attention) against transformers, and the latent KV cache.

The four family checks of test_models_families.py (prefill at three lengths, teacher-forced decode, batch
prefill + batch decode, greedy tokens) on the tiny ``deepseek_v2`` (q_proj, interleaved yarn rope, group-limited
softmax routing) and ``deepseek_v3`` (q LoRA, sigmoid routing with a correction bias, norm_topk_prob) checkpoints
of ``FAMILY_MODELS``; then what is MLA's own: the cache holds one latent head per token, W_UK / W_UV are absorbed
rather than expanded, and what llmc cannot build is refused by name.
"""

from __future__ import annotations

import json

import pytest
from support.checkpoints import FAMILY_MODELS
from test_models_families import (  # noqa: F401 - the imported tests run here with this file's fixture
    open_family,
    test_batch_prefill_and_batch_decode,
    test_greedy_tokens_match_transformers,
    test_prefill_then_decode,
    test_window_and_chunk_cover_the_test,
)

from llmc.models import MODELS

MLA_FAMILIES = ["deepseek_v2", "deepseek_v3"]


@pytest.fixture(scope="module", params=MLA_FAMILIES)
def family(request, compiled, family_checkpoints):
    yield from open_family(request.param, compiled, family_checkpoints)


def _cache_geometry(mod) -> dict[str, int]:
    """The head counts and widths TVM's paged KV cache is created with, read from the built module."""
    from tvm import relax

    func = mod["create_paged_kv_cache"]
    calls = [
        binding.value
        for block in func.body.blocks
        for binding in block.bindings
        if isinstance(binding.value, relax.Call)
        and binding.value.args
        and isinstance(binding.value.args[0], relax.ExternFunc)
        and binding.value.args[0].global_symbol == "vm.builtin.paged_attention_kv_cache_create"
    ]
    assert len(calls) == 1
    # (sizes, layer partition, q heads, kv heads, qk head dim, v head dim, ...): TIRPagedKVCache's argument order
    q_heads, kv_heads, qk_dim, v_dim = (int(getattr(arg.value, "value", arg.value)) for arg in calls[0].args[3:7])
    return {"q_heads": q_heads, "kv_heads": kv_heads, "qk_dim": qk_dim, "v_dim": v_dim}


def _tiny_config(name: str, **changes):
    """The parsed config of ``FAMILY_MODELS[name]`` (the sizes tests/support/checkpoints.py gives it)."""
    hf = {k: v for k, v in FAMILY_MODELS[name].items() if k != "arch"}
    hf.update(model_type=name, vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2, **changes)
    return MODELS[name].parse_config(hf, name)


@pytest.mark.parametrize("name", MLA_FAMILIES)
def test_the_cache_holds_one_latent_head_per_token(name, compiled, family_checkpoints):
    """Per token and layer the cache stores k_pe + c_kv (rope + kv_lora_rank floats, as key and as value), not
    heads x (qk_head_dim + v_head_dim) expanded keys and values."""
    from llmc.compiler.targets import get_target
    from llmc.kernels.dispatch import dispatch_kernels
    from llmc.memory import kv_layer_bytes

    spec = FAMILY_MODELS[name]
    latent = spec["kv_lora_rank"] + spec["qk_rope_head_dim"]
    expanded = spec["num_attention_heads"] * (spec["qk_nope_head_dim"] + spec["qk_rope_head_dim"] + spec["v_head_dim"])
    hf = json.loads((family_checkpoints[name] / "config.json").read_text())
    module = MODELS[name].module_class(MODELS[name].parse_config(hf, name))
    target = get_target("llvm").tvm_target()
    mod, _ = dispatch_kernels(module.export_tvm(spec=module.get_default_spec())[0], target)  # as the compiler does
    geometry = _cache_geometry(mod)
    assert geometry == {"q_heads": spec["num_attention_heads"], "kv_heads": 1, "qk_dim": latent, "v_dim": latent}
    config = json.loads((compiled(name, "q0f32") / "llmc-config.json").read_text())
    assert config["model"]["num_key_value_heads"] == 1 and config["model"]["head_dim"] == latent
    tokens = 160  # 10 pages + TVM's extra one, each 16 slots of key + value
    assert kv_layer_bytes(config["model"], "float32", tokens) == 11 * 16 * 2 * latent * 4
    assert 2 * latent < expanded  # the test's sizes make the difference visible


@pytest.mark.parametrize("name", MLA_FAMILIES)
def test_kv_b_proj_is_absorbed_not_expanded(name):
    """The module has no kv_b_proj matmul on the cache's side: W_UK / W_UV are per-head parameters applied to the
    query and to the attention output (the latent never becomes per-head keys)."""
    family, spec, config = MODELS[name], FAMILY_MODELS[name], _tiny_config(name)
    module = family.module_class(config)
    params = dict(module.named_parameters())
    heads, nope, v, lora = (
        spec["num_attention_heads"],
        spec["qk_nope_head_dim"],
        spec["v_head_dim"],
        spec["kv_lora_rank"],
    )
    assert tuple(params["model.layers.0.self_attn.w_uk"].shape) == (heads, nope, lora)
    assert tuple(params["model.layers.0.self_attn.w_uv"].shape) == (heads, lora, v)
    assert not any("kv_b_proj" in p for p in params)
    sources = family.weight_sources(config)
    assert sources["model.layers.1.self_attn.w_uk"].names == ["model.layers.1.self_attn.kv_b_proj.weight"]


@pytest.mark.parametrize("name", MLA_FAMILIES)
def test_tensor_parallelism_is_refused_by_name(name):
    from llmc.compiler.shard import check_shards
    from llmc.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"--tensor-parallel-shards.*not {name}"):
        check_shards(MODELS[name], _tiny_config(name), 2, name)


@pytest.mark.parametrize(
    ("name", "bad", "message"),
    [
        ("deepseek_v2", {"topk_method": "noaux_tc"}, "topk_method 'noaux_tc' is not supported for deepseek_v2"),
        ("deepseek_v3", {"n_group": 3}, "n_group 3 must divide n_routed_experts 8"),
        ("deepseek_v3", {"num_experts_per_tok": 5}, "num_experts_per_tok 5 is more than the 1 chosen groups"),
        ("deepseek_v2", {"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
    ],
)
def test_configs_refuse_what_they_cannot_run(name, bad, message):
    from llmc.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        _tiny_config(name, **bad)
