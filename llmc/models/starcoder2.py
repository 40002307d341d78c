"""StarCoder2 (``starcoder2``): the Llama block with LayerNorm (with bias), a GELU MLP (``c_fc``/``c_proj``),
biases on every projection (``use_bias``), GQA and sliding-window attention on every layer. The module is
``llmc.models.neox``'s (sequential residual, full rotary).
"""

from __future__ import annotations

from llmc.models.base import GGUFSpec, WeightSource, sliding_layer_types
from llmc.models.neox import HFNames, NeoXConfig, gelu_kind, rope_fields, shape_fields, weight_map

FEATURES = "LayerNorm, GELU MLP, biases, GQA, sliding-window attention, tied embeddings"
NAMES = HFNames(embed="model.embed_tokens", final_norm="model.norm", mlp=("mlp.c_fc", "mlp.c_proj"))


def parse_config(hf: dict, source: str) -> NeoXConfig:
    shape = shape_fields(hf, source, "norm_epsilon")  # first: the sizes are checked before anything reads them
    layers = shape["num_hidden_layers"]
    bias = bool(hf.get("use_bias", True))
    layer_types = sliding_layer_types(hf, layers)
    return NeoXConfig(
        model_type="starcoder2",
        **shape,
        **rope_fields(hf, source),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        attention_bias=bias,
        o_proj_bias=bias,
        mlp_bias=bias,
        max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
        layer_types=layer_types,
        sliding_window=int(hf.get("sliding_window") or 0) if layer_types else 0,
        residual="sequential",
        gelu_tanh=gelu_kind(hf, source, "gelu_pytorch_tanh"),
    )


def weight_sources(c: NeoXConfig) -> dict[str, WeightSource]:
    return weight_map(c, NAMES)


# llama.cpp's ``starcoder2``: HF StarCoder2's tensors; its converter writes no sliding window (llama.cpp attends
# to the whole context), so neither does a GGUF build
GGUF = GGUFSpec(
    ("starcoder2",),
    "starcoder2",
    block_names={"ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"},
    config=lambda meta: {
        "norm_epsilon": meta("attention.layer_norm_epsilon", 1e-5),
        "use_bias": meta.has("blk.0.attn_output.bias"),
        "hidden_act": "gelu_pytorch_tanh",
    },
)
