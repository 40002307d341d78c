"""Types and ranges of a model's config fields, checked before anything divides by or allocates from them.

``check_hf_config`` looks at the standard Hugging Face keys of config.json (or the dict a GGUF reader
builds) when present; ``check_model_config`` at the parsed ``ModelConfig`` (head counts that divide).
"""

from __future__ import annotations

import math

from llmc.errors import ConfigError

POSITIVE_INT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
)
POSITIVE_FLOAT_FIELDS = ("rms_norm_eps", "rope_theta", "layer_norm_eps")
MAX_SIZE = 1 << 24  # no real size field is this large
# per-field bounds far above any released model (Llama 3.1 405B: 126 layers, 128 heads, hidden 16384):
# a corrupt count must not make the compiler build a million-layer module before it reads a weight
FIELD_MAX = {
    "num_hidden_layers": 1024,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "head_dim": 4096,
    "hidden_size": 1 << 17,
    "intermediate_size": 1 << 20,
    "vocab_size": 1 << 22,
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_hf_config(config: dict, source: str) -> None:
    """Refuse zero, negative, non-integer or absurd sizes and non-finite epsilons with the field's name."""
    if not isinstance(config.get("model_type", ""), str):
        raise ConfigError(f"{source}: config field model_type is {config['model_type']!r}; expected a string.")
    for key in POSITIVE_INT_FIELDS:
        value = config.get(key)
        if value is None:
            continue
        limit = FIELD_MAX.get(key, MAX_SIZE)
        if not _is_int(value) or not 1 <= value <= limit:
            raise ConfigError(f"{source}: config field {key} is {value!r}; expected an integer from 1 to {limit}.")
    for key in POSITIVE_FLOAT_FIELDS:
        value = config.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{source}: config field {key} is {value!r}; expected a positive finite number.")
    value = config.get("bos_token_id")  # pad_token_id is never fed to the model (some configs say -1)
    if value is not None and not (_is_int(value) and 0 <= value < (config.get("vocab_size") or MAX_SIZE)):
        raise ConfigError(f"{source}: config field bos_token_id is {value!r}, outside the vocabulary.")
    eos = config.get("eos_token_id")
    for value in eos if isinstance(eos, list) else [eos]:
        if value is not None and not (_is_int(value) and 0 <= value < (config.get("vocab_size") or MAX_SIZE)):
            raise ConfigError(f"{source}: config field eos_token_id is {eos!r}, outside the vocabulary.")


def check_model_config(config, source: str) -> None:
    """Relations between the parsed fields: KV heads divide the query heads, rotary head_dim is even."""
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    if heads % kv_heads:
        raise ConfigError(f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}.")
    if config.head_dim % 2:
        raise ConfigError(f"{source}: head_dim {config.head_dim} is odd; rotary embeddings need an even head_dim.")
    for key in POSITIVE_INT_FIELDS:
        value = getattr(config, key, None)
        if value is not None and (not _is_int(value) or value < 1):
            raise ConfigError(f"{source}: config field {key} is {value!r}; expected a positive integer.")
