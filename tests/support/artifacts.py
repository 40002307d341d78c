"""Hand-laid artifact folders: the ``model`` section of an llmc-config.json the runtime's schema accepts."""

from __future__ import annotations


def fake_model_section(vocab_size: int = 320, hidden_size: int = 64) -> dict:
    """A complete ``model`` section of llmc-config.json (the schema the runtime checks), for tests that
    lay out an artifact folder by hand."""
    return {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": hidden_size // 4,
        "max_position_embeddings": 256,
        "context_window": 128,
        "prefill_chunk": 24,
        "max_batch_size": 1,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
    }
