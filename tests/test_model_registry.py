"""The model registry: every family builds its Relax module from a tiny config without a target and exports
the functions the runtime calls; ``llmc/models/`` never looks at a target and holds no TIR kernels (those
live in ``llmc/kernels/``, picked by target in ``llmc.kernels.dispatch``)."""

from __future__ import annotations

import ast
from dataclasses import asdict
from pathlib import Path

import pytest
import tvm
from tvm import relax

import llmc.models
from llmc.models import MODELS
from llmc.models.attention import REQUEST_FUNC, KVCacheRequest
from llmc.models.base import BuildSizes

EXPORTED = {"embed", "prefill", "decode", "batch_prefill", "batch_decode", "batch_verify", "create_paged_kv_cache"}
BASE = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
MLA = dict(
    BASE, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, first_k_dense_replace=1,
    n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=1,
)  # fmt: skip
GEMMA = dict(BASE, head_dim=8, sliding_window=16, query_pre_attn_scalar=8)
# one tiny config.json per registered model_type (a new family adds its line here)
TINY = {
    "llama": dict(BASE, model_type="llama"),
    "qwen2": dict(BASE, model_type="qwen2"),
    "qwen3": dict(BASE, model_type="qwen3", head_dim=16),
    "mistral": dict(BASE, model_type="mistral", sliding_window=16),
    "phi3": dict(BASE, model_type="phi3", partial_rotary_factor=0.5),
    "mixtral": dict(BASE, model_type="mixtral", num_local_experts=4, num_experts_per_tok=2),
    "qwen3_moe": dict(
        BASE,
        model_type="qwen3_moe",
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        mlp_only_layers=[1],
    ),
    "olmo2": dict(BASE, model_type="olmo2"),
    "gemma2": dict(GEMMA, model_type="gemma2", attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
    "gemma3_text": dict(GEMMA, model_type="gemma3_text"),
    "gemma3": dict(model_type="gemma3", text_config=dict(GEMMA, model_type="gemma3_text")),
    "gpt2": dict(model_type="gpt2", vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=128),
    # LayerNorm / parallel-block families (llmc/models/neox.py)
    "phi": dict(BASE, model_type="phi", num_key_value_heads=4, qk_layernorm=True),
    "gpt_neox": dict(BASE, model_type="gpt_neox", num_key_value_heads=4, rotary_pct=0.25, use_parallel_residual=False),
    "stablelm": dict(BASE, model_type="stablelm", qk_layernorm=True, use_parallel_residual=True, use_qkv_bias=True),
    "starcoder2": dict(BASE, model_type="starcoder2", sliding_window=16),
    "cohere": dict(BASE, model_type="cohere", use_qk_norm=True, rope_scaling={"rope_type": "linear", "factor": 2.0}),
    # Llama-shaped families (their own config.json key names where they have them)
    "internlm3": dict(BASE, model_type="internlm3", qkv_bias=True, bias=True),
    "seed_oss": dict(BASE, model_type="seed_oss", attention_bias=True, attention_out_bias=False),
    "granite": dict(BASE, model_type="granite", embedding_multiplier=12.0, residual_multiplier=0.2, logits_scaling=8.0),
    "arcee": dict(BASE, model_type="arcee", hidden_act="relu2"),
    "olmo": dict(BASE, model_type="olmo", clip_qkv=8.0),
    "smollm3": dict(BASE, model_type="smollm3", no_rope_layers=[0, 1]),
    "ernie4_5": dict(BASE, model_type="ernie4_5", use_bias=True),
    "glm": dict(BASE, model_type="glm", head_dim=8, partial_rotary_factor=0.5, attention_bias=True),
    "exaone4": dict(BASE, model_type="exaone4", sliding_window=16, layer_types=["sliding_attention", "full_attention"]),
    # multi-head latent attention families (llmc/models/deepseek_v2.py)
    "deepseek_v2": dict(MLA, model_type="deepseek_v2", q_lora_rank=None),
    "deepseek_v3": dict(MLA, model_type="deepseek_v3", q_lora_rank=16, n_group=2, topk_group=1),
    # Llama 4 (llmc/models/llama4.py): a RoPE layer with a dense MLP, a NoPE layer with a MoE
    "llama4_text": dict(
        BASE,
        model_type="llama4_text",
        intermediate_size_mlp=64,
        num_local_experts=4,
        no_rope_layer_interval=2,
        interleave_moe_layer_step=2,
        attention_chunk_size=64,
    ),  # fmt: skip
    "llama4": dict(
        model_type="llama4",
        text_config=dict(BASE, model_type="llama4_text", intermediate_size_mlp=64, num_local_experts=4),
        vision_config={},
    ),
    "gpt_oss": dict(BASE, model_type="gpt_oss", num_local_experts=4, num_experts_per_tok=2, sliding_window=16),
}
MODELS_DIR = Path(llmc.models.__file__).parent
# imports that bring TIR kernels (TVMScript) or a kernel choice into a model file; TIR expressions inside TE
# computes (``from tvm import te, tirx``) are model math and allowed
KERNEL_IMPORTS = ("tvm.script", "tvm.tir", "tvm.s_tir", "tvm.target", "llmc.kernels", "llmc.compiler")
# the expert sort is target-free; the quant scheme's expert layout (grouped experts), not a target, selects it
ALLOWED_IMPORTS = ("llmc.kernels.moe_sort",)


def _request(mod) -> KVCacheRequest:
    func = mod["create_paged_kv_cache"]
    calls = [
        binding.value
        for block in func.body.blocks
        for binding in block.bindings
        if isinstance(binding.value, relax.Call) and isinstance(binding.value.args[0], relax.ExternFunc)
    ]
    assert [call.args[0].global_symbol for call in calls] == [REQUEST_FUNC]
    return KVCacheRequest.from_json(calls[0].args[2].value)


@pytest.mark.parametrize("model_type", sorted(MODELS))
def test_family_exports_without_a_target(model_type):
    assert model_type in TINY, f"add a tiny config.json for {model_type!r} to TINY"
    family = MODELS[model_type]
    config = family.parse_config(dict(TINY[model_type]), f"tiny {model_type}")
    module = family.module_class(config, BuildSizes(context_window=64, prefill_chunk=8))
    mod, params = module.export_tvm(spec=module.get_default_spec())
    functions = {gv.name_hint for gv, func in mod.functions_items() if isinstance(func, relax.Function)}
    assert functions == EXPORTED
    assert params
    cache_kernels = ("paged_kv", "kv_cache", "merge_state", "tree_attn", "fused_rope", "ragged_kv")
    kernels = [
        gv.name_hint
        for gv, f in mod.functions_items()
        if isinstance(f, tvm.tirx.PrimFunc) and any(k in gv.name_hint for k in cache_kernels)
    ]
    assert not kernels  # no KV cache kernels before the compiler picks them for a target
    request = _request(mod)
    assert len(request.layers) == config.num_hidden_layers
    assert request.layers[0].num_q_heads == config.num_attention_heads
    assert [spec.kind for spec in request.layers] == config.attention_kinds()
    softcap = getattr(config, "attn_logit_softcapping", 0.0)
    assert {spec.softcap for spec in request.layers} == {softcap}
    assert not module.sliding_eviction  # a build output: set by the compiler for a target
    assert not {"context_window", "prefill_chunk", "max_batch_size"} & set(asdict(config))  # BuildSizes


def test_the_request_survives_json():
    family = MODELS["mistral"]
    module = family.module_class(family.parse_config(dict(TINY["mistral"]), "tiny"))
    request = module.kv_cache_request()
    assert KVCacheRequest.from_json(request.to_json()) == request
    assert request.evictable_window() == 16  # every layer one window, the cache applies RoPE


def _imports(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def _mentions_target(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        name = (
            node.id
            if isinstance(node, ast.Name)
            else node.attr
            if isinstance(node, ast.Attribute)
            else node.arg
            if isinstance(node, ast.arg)
            else None
        )
        if name is not None and "target" in name.lower():
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("path", sorted(MODELS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_models_never_look_at_the_target_nor_carry_kernels(path):
    tree = ast.parse(path.read_text(), str(path))
    assert not _mentions_target(tree), f"{path.name} mentions a target at lines {_mentions_target(tree)}"
    kernel_imports = [
        name
        for name in _imports(tree)
        if name.startswith(KERNEL_IMPORTS) and not name.startswith(ALLOWED_IMPORTS)
        if name not in ("tvm", "tvm.tirx")  # ``from tvm import tirx``: expressions in TE computes
    ]
    assert not kernel_imports, f"{path.name} imports kernel code: {kernel_imports}"
    prim_funcs = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for decorator in node.decorator_list
        if "prim_func" in ast.unparse(decorator) or "macro" in ast.unparse(decorator)
    ]
    assert not prim_funcs, f"{path.name} defines TIR kernels at lines {prim_funcs}"


@pytest.mark.parametrize("target_name", ["llvm", "webgpu"])
def test_dispatch_picks_kernels_by_target(target_name):
    """The compiler side: the request becomes the target's cache; CPUs get llmc's attention and fused SiLU."""
    from llmc.compiler.targets import get_target
    from llmc.kernels.dispatch import dispatch_kernels

    family = MODELS["llama"]
    module = family.module_class(family.parse_config(dict(TINY["llama"]), "tiny"))
    mod, _ = module.export_tvm(spec=module.get_default_spec())
    mod, requests = dispatch_kernels(mod, get_target(target_name).tvm_target())
    assert len(requests) == 1 and requests[0] == module.kv_cache_request()
    names = {gv.name_hint for gv, _ in mod.functions_items()}
    text = mod["decode"].script()
    if target_name == "llvm":
        assert "silu_multiply" in names and "R.nn.silu" not in text
        assert "batch_decode_paged_kv" in names and "batch_decode_paged_kv_cpu" not in names  # llmc's, not TVM's
    else:
        assert "silu_multiply" not in names and "R.nn.silu" in text
        assert not any(name.endswith("_cpu") for name in names)
    assert REQUEST_FUNC not in mod["create_paged_kv_cache"].script()


@pytest.mark.parametrize(("model_type", "ropes"), [("smollm3", ["none", "model"]), ("exaone4", ["model", "none"])])
def test_nope_layers_get_no_rope(model_type, ropes):
    """TVM's cache rotates every layer or none: with NoPE layers the module rotates the others itself, the
    cache none (its RoPE is off when the first layer's is not the cache's)."""
    family = MODELS[model_type]
    module = family.module_class(family.parse_config(dict(TINY[model_type]), "tiny"))
    request = module.kv_cache_request()
    assert [spec.rope for spec in request.layers] == ropes
    assert request.rope_scaling == {} and request.evictable_window() == 0
    assert [layer.self_attn.rope is None for layer in module.model.layers] == [r == "none" for r in ropes]


@pytest.mark.parametrize(
    ("model_type", "bad", "message"),
    [
        ("llama", {"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported for a gated"),
        ("arcee", {"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported for an ungated"),
        ("smollm3", {"no_rope_layers": [1]}, "no_rope_layers must list a 0/1 flag for each of the 2 layers"),
        ("smollm3", {"no_rope_layers": None, "no_rope_layer_interval": 0}, "no_rope_layer_interval is 0"),
        ("granite", {"logits_scaling": 0}, "logits_scaling is 0; expected a positive number"),
    ],
)
def test_llama_variant_configs_refuse_what_they_cannot_run(model_type, bad, message):
    from llmc.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"tiny {model_type}: {message}"):
        MODELS[model_type].parse_config({**TINY[model_type], **bad}, f"tiny {model_type}")
