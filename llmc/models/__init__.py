"""Model families by HF ``model_type``: one line per architecture."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llmc.errors import ConfigError
from llmc.models import llama


@dataclass(frozen=True)
class ModelFamily:
    """How to parse a config, build the Relax module and find each parameter's HF tensors."""

    name: str
    parse_config: Callable
    module_class: type
    weight_sources: Callable


LLAMA = ModelFamily("llama", llama.parse_config, llama.LlamaForCausalLM, llama.weight_sources)

MODELS: dict[str, ModelFamily] = {
    "llama": LLAMA,
    "qwen2": LLAMA,
}


def family_for(hf_config: dict, source: str) -> ModelFamily:
    """The family for a config.json's ``model_type``, or a ConfigError listing the supported ones."""
    model_type = hf_config.get("model_type")
    if model_type not in MODELS:
        raise ConfigError(
            f"{source}: model_type {model_type!r} is not supported. Supported: {', '.join(sorted(MODELS))}."
        )
    return MODELS[model_type]
