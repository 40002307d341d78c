"""Model families by HF ``model_type``: one line per architecture.

A family owns its config class (from config.json and GGUF metadata), its Relax module, its weight
map (HF tensors -> module parameters, with per-tensor transforms), its GGUF tensor names and its
per-layer attention spec (``CausalLMBase.attention_specs``: the KV cache request, ``llmc.models.attention``).
Families take no target and choose no kernels: ``llmc.kernels.dispatch`` does, at build time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from llmc.errors import ConfigError
from llmc.models import (
    arcee,
    cohere,
    deepseek_gguf,
    deepseek_v2,
    ernie4_5,
    exaone4,
    gemma3,
    glm,
    gpt2,
    gpt_neox,
    gpt_oss,
    gpt_oss_gguf,
    granite,
    internlm3,
    llama,
    llama4,
    neox,
    olmo,
    olmo2,
    phi,
    seed_oss,
    smollm3,
    stablelm,
    starcoder2,
)
from llmc.models.base import GGUFSpec, ModelConfig


@dataclass(frozen=True)
class ModelFamily:
    """How to parse a config, build the Relax module and find each parameter's HF tensors."""

    name: str
    config_class: type[ModelConfig]
    parse_config: Callable[[dict, str], ModelConfig]
    module_class: type
    weight_sources: Callable
    features: str = ""
    gguf: GGUFSpec | None = None


def _llama(
    name: str,
    features: str,
    gguf: GGUFSpec | None = None,
    weights=llama.weight_sources,
    variant: llama.LlamaVariant | None = None,
) -> ModelFamily:
    """A Llama-shaped family; ``variant``: its switches when they live in a family file of their own."""
    parse = functools.partial(llama.parse_config, variant=variant) if variant else llama.parse_config
    return ModelFamily(name, llama.LlamaConfig, parse, llama.LlamaForCausalLM, weights, features, gguf)


def _gemma(name: str) -> ModelFamily:
    features = {
        "gemma2": "attention + final logit soft-capping, sliding/global layers, (1+w) RMSNorm, GELU-tanh",
    }.get(name, "QK-norm, (1+w) RMSNorm, GELU-tanh, sliding/global layers with local rope base")
    return ModelFamily(
        name,
        gemma3.Gemma3Config,
        gemma3.parse_config,
        gemma3.Gemma3ForCausalLM,
        gemma3.weight_sources,
        features,
        {"gemma3_text": gemma3.GGUF_GEMMA3, "gemma2": gemma3.GGUF_GEMMA2}.get(name),
    )


def _neox(family) -> ModelFamily:
    """A family of ``llmc.models.neox``'s module: its file holds the config reader, weight map and features."""
    name = family.__name__.rsplit(".", 1)[-1]
    features = f"{family.FEATURES}, {ROPE}"
    return ModelFamily(
        name, neox.NeoXConfig, family.parse_config, neox.NeoXForCausalLM, family.weight_sources, features, family.GGUF
    )


def _llama4(name: str) -> ModelFamily:
    features = f"{llama4.FEATURES}, {ROPE}"
    return ModelFamily(
        name,
        llama4.Llama4Config,
        llama4.parse_config,
        llama4.Llama4ForCausalLM,
        llama4.weight_sources,
        features,
        llama4.GGUF if name == "llama4_text" else None,  # (one spec reads llama.cpp's llama4 files)
    )


def _deepseek(name: str) -> ModelFamily:
    return ModelFamily(
        name,
        deepseek_v2.DeepseekConfig,
        deepseek_v2.parse_config,
        deepseek_v2.DeepseekForCausalLM,
        deepseek_v2.weight_sources,
        deepseek_v2.FEATURES[name],
        deepseek_gguf.GGUF if name == "deepseek_v2" else None,  # one spec reads both (deepseek2 files)
    )


ROPE = "rope default/linear/dynamic/yarn/longrope/llama3"
MODELS: dict[str, ModelFamily] = {
    "llama": _llama("llama", f"GQA, {ROPE}, tied embeddings", llama.GGUF_LLAMA),
    "qwen2": _llama("qwen2", f"q/k/v bias, {ROPE}", llama.GGUF_QWEN2),
    "qwen3": _llama("qwen3", f"QK-norm, explicit head_dim, {ROPE}", llama.GGUF_QWEN3),
    "mistral": _llama("mistral", f"sliding-window attention, {ROPE}", llama.GGUF_LLAMA),
    "phi3": _llama("phi3", f"fused qkv/gate_up, partial rotary, {ROPE}", llama.GGUF_PHI3, llama.fused_weight_sources),
    "mixtral": _llama(
        "mixtral",
        f"sparse MoE (softmax top-k routing, renormalized), sliding-window attention, {ROPE}",
        llama.GGUF_LLAMA,
    ),
    "qwen3_moe": _llama(
        "qwen3_moe",
        f"sparse MoE (softmax top-k routing, norm_topk_prob), dense mlp_only_layers, QK-norm, {ROPE}",
        llama.GGUF_QWEN3_MOE,
    ),
    "olmo2": _llama("olmo2", f"{olmo2.FEATURES}, {ROPE}", olmo2.GGUF, variant=olmo2.VARIANT),
    "gemma2": _gemma("gemma2"),
    "gemma3_text": _gemma("gemma3_text"),
    "gpt2": ModelFamily(
        "gpt2",
        gpt2.GPT2Config,
        gpt2.parse_config,
        gpt2.GPT2LMHeadModel,
        gpt2.weight_sources,
        "LayerNorm, learned absolute positions, Conv1D weights (transposed), tied head",
        gpt2.GGUF,
    ),
    "gemma3": _gemma("gemma3"),  # the multimodal config: its text part
    # LayerNorm / parallel-block families (llmc.models.neox's module)
    "phi": _neox(phi),
    "gpt_neox": _neox(gpt_neox),
    "stablelm": _neox(stablelm),
    "starcoder2": _neox(starcoder2),
    "cohere": _neox(cohere),
    # Llama-shaped families: their variant in a family file of their own
    "internlm3": _llama("internlm3", f"{internlm3.FEATURES}, {ROPE}", variant=internlm3.VARIANT),
    "seed_oss": _llama("seed_oss", f"{seed_oss.FEATURES}, {ROPE}", seed_oss.GGUF, variant=seed_oss.VARIANT),
    "granite": _llama("granite", f"{granite.FEATURES}, {ROPE}", granite.GGUF, variant=granite.VARIANT),
    "arcee": _llama("arcee", f"{arcee.FEATURES}, {ROPE}", arcee.GGUF, variant=arcee.VARIANT),
    "olmo": _llama("olmo", f"{olmo.FEATURES}, {ROPE}", olmo.GGUF, variant=olmo.VARIANT),
    "smollm3": _llama("smollm3", f"{smollm3.FEATURES}, {ROPE}", smollm3.GGUF, variant=smollm3.VARIANT),
    "ernie4_5": _llama("ernie4_5", f"{ernie4_5.FEATURES}, {ROPE}", ernie4_5.GGUF, variant=ernie4_5.VARIANT),
    "glm": _llama("glm", f"{glm.FEATURES}, {ROPE}", glm.GGUF, variant=glm.VARIANT),
    "exaone4": _llama("exaone4", f"{exaone4.FEATURES}, {ROPE}", exaone4.GGUF, variant=exaone4.VARIANT),
    # multi-head latent attention families (llmc.models.deepseek_v2's module)
    "deepseek_v2": _deepseek("deepseek_v2"),
    "deepseek_v3": _deepseek("deepseek_v3"),
    # Llama 4 (llmc.models.llama4's module): the text model, and the multimodal config's text part
    "llama4_text": _llama4("llama4_text"),
    "llama4": _llama4("llama4"),
    # attention sinks through control query heads (llmc's CPU kernels), biased experts with a clamped SwiGLU
    "gpt_oss": ModelFamily(
        "gpt_oss",
        gpt_oss.GptOssConfig,
        gpt_oss.parse_config,
        gpt_oss.GptOssForCausalLM,
        gpt_oss.weight_sources,
        gpt_oss.FEATURES,
        gpt_oss_gguf.GGUF,
    ),
}


def family_for(hf_config: dict, source: str) -> ModelFamily:
    """The family for a config.json's ``model_type``, or a ConfigError listing the supported ones."""
    model_type = hf_config.get("model_type")
    if model_type not in MODELS:
        raise ConfigError(
            f"{source}: model_type {model_type!r} is not supported. Supported: {', '.join(sorted(MODELS))}."
        )
    return MODELS[model_type]


def gguf_spec(architecture: str | None) -> GGUFSpec | None:
    """The GGUF naming of a ``general.architecture`` (None when no family reads it)."""
    for family in MODELS.values():
        if family.gguf is not None and architecture in family.gguf.architectures:
            return family.gguf
    return None


def gguf_architectures() -> list[str]:
    return sorted({a for f in MODELS.values() if f.gguf is not None for a in f.gguf.architectures})
