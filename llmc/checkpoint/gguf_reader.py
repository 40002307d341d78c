"""GGUF files through gguf-py, presented as a Hugging Face checkpoint.

Metadata becomes a config.json-style dict, tensor names become HF names, quantized blocks are
dequantized per tensor, ggml's reversed shapes are put back, and what llama.cpp's converter changed
is undone (the model family's ``GGUFSpec.fix_tensor``: Llama's Q/K row permutation, Gemma's norm
offset). Which tensor names and metadata an architecture has is the family's (``llmc.models``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from llmc.checkpoint.gguf_file import GGUFFormatError, read_gguf
from llmc.errors import CheckpointError, ConfigError

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")


def hf_name(gguf_name: str, block_names: dict[str, str] | None = None) -> str | None:
    """HF tensor name for a GGUF tensor name (None when there is no HF counterpart); ``block_names``
    are a family's names that differ from or add to llama.cpp's Llama naming."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _BLOCK_RE.match(gguf_name)
    names = {**_BLOCK_NAMES, **(block_names or {})}
    if match and match.group(2) in names:
        return f"model.layers.{match.group(1)}.{names[match.group(2)]}.{match.group(3)}"
    return None


def unpermute_qk(weight: np.ndarray, num_heads: int) -> np.ndarray:
    from llmc.models.llama import unpermute_qk as unpermute

    return unpermute(weight, num_heads)


class GGUFCheckpoint:
    """A ``.gguf`` file: HF-style config, HF tensor names, tokenizer metadata."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.metadata, self.tensors = read_gguf(path)
        except (GGUFFormatError, OSError) as err:
            raise CheckpointError(
                f"{path}: not a readable GGUF file ({err}). The file is corrupt or truncated: re-download it."
            ) from err
        from llmc.models import gguf_architectures, gguf_spec

        self.arch = self.metadata.get("general.architecture")
        self.spec = gguf_spec(self.arch)
        if self.spec is None:
            raise ConfigError(
                f"{path}: GGUF architecture {self.arch!r} is not supported; "
                f"supported: {', '.join(gguf_architectures())}."
            )
        if any(t.name == "rope_freqs.weight" for t in self.tensors):
            raise ConfigError(
                f"{path}: GGUF rope_freqs (Llama 3.1-style rope scaling) is not supported yet; "
                "compile the Hugging Face checkpoint instead."
            )
        names = {t.name: hf_name(t.name, self.spec.block_names) for t in self.tensors}
        self._tensors = {names[t.name]: t for t in self.tensors if names[t.name] is not None}
        self.config = self._config()
        self._experts = self._expert_slices()
        if self._experts:  # layers without expert tensors keep a dense MLP (Qwen3-MoE's mlp_only_layers)
            sparse = {int(name.split(".")[2]) for name in self._experts}
            self.config["mlp_only_layers"] = [i for i in range(self.config["num_hidden_layers"]) if i not in sparse]

    def _meta(self, key: str, default=None):
        return self.metadata.get(f"{self.arch}.{key}", default)

    def _config(self) -> dict:
        tokens = self.metadata.get("tokenizer.ggml.tokens") or []
        heads = self._meta("attention.head_count")
        hidden = self._meta("embedding_length")
        if heads is None or hidden is None:
            raise ConfigError(f"{self.path}: GGUF metadata lacks {self.arch}.attention.head_count / embedding_length.")
        config = {
            "model_type": self.spec.model_type,
            "hidden_size": hidden,
            "intermediate_size": self._meta("feed_forward_length"),
            "num_hidden_layers": self._meta("block_count"),
            "num_attention_heads": heads,
            "num_key_value_heads": self._meta("attention.head_count_kv", heads),
            "head_dim": self._meta("attention.key_length", hidden // heads),
            "rms_norm_eps": self._meta("attention.layer_norm_rms_epsilon", 1e-5),
            "rope_theta": self._meta("rope.freq_base", 10000.0),
            "max_position_embeddings": self._meta("context_length", 2048),
            "vocab_size": len(tokens) or self._meta("vocab_size"),
            "tie_word_embeddings": "lm_head.weight" not in self._tensors,
            "attention_bias": "model.layers.0.self_attn.o_proj.bias" in self._tensors,
            "bos_token_id": self.metadata.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": self.metadata.get("tokenizer.ggml.eos_token_id"),
        }
        # qwen2 (its model_type) has q/k/v biases and no o_proj bias, as in its config.json; HF's
        # attention_bias would add an o_proj bias the file does not have
        if self.spec.config is not None:
            config.update(self.spec.config(self._meta))
        return config

    def _expert_slices(self) -> dict[str, tuple]:
        """MoE files: each ``blk.N.ffn_{gate,up,down}_exps`` tensor ``[experts, rows, cols]`` offered as one
        HF-named ``[rows, cols]`` tensor per expert: ``{hf_name: (tensor, expert)}``."""
        slices: dict[str, tuple] = {}
        if self.spec.expert_name is None:
            return slices
        for tensor in self.tensors:
            match = _BLOCK_RE.match(tensor.name)
            kind = match and re.fullmatch(r"ffn_(gate|up|down)_exps", match.group(2))
            if not kind or len(tensor.shape) != 3:
                continue
            for expert in range(int(tensor.shape[2])):  # ggml's shape is reversed: experts last
                name = self.spec.expert_name(self.config["model_type"], int(match.group(1)), kind.group(1), expert)
                slices[name] = (tensor, expert)
        return slices

    def names(self) -> list[str]:
        return [*self._tensors, *self._experts]

    def describe(self, name: str) -> str:
        return str(self.path)

    def get(self, name: str) -> np.ndarray:
        from gguf.quants import dequantize

        if name in self._experts:
            tensor, expert = self._experts[name]
            shape = tuple(int(d) for d in reversed(tensor.shape[:2]))
            data = tensor.data[expert]
        else:
            tensor = self._tensors.get(name)
            if tensor is None:
                raise CheckpointError(f"{self.path}: tensor {name} is missing from the GGUF file.")
            shape = tuple(int(d) for d in reversed(tensor.shape))
            data = tensor.data
        try:
            array = self._dequantize_rows(data, tensor.tensor_type, dequantize).reshape(shape)
        except Exception as err:
            raise CheckpointError(
                f"{self.path}: cannot decode tensor {tensor.name} ({tensor.tensor_type.name}): {err}. "
                "The file may be corrupt."
            ) from err
        if self.spec.fix_tensor is not None:
            array = self.spec.fix_tensor(name, array, self.config)
        return array

    def tensor_types(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """``{hf_name: (GGML type name, numpy shape)}``: what ``--quant keep`` stores per tensor."""
        types = {
            name: (t.tensor_type.name, tuple(int(d) for d in reversed(t.shape))) for name, t in self._tensors.items()
        }
        for name, (t, _) in self._experts.items():
            types[name] = (t.tensor_type.name, tuple(int(d) for d in reversed(t.shape[:2])))
        return types

    def get_raw(self, name: str) -> tuple[str, np.ndarray]:
        """(GGML type name, the tensor's bytes as ``uint8 [rows, row bytes]``), rows in HF order (Q/K
        rows un-permuted as in ``get``); blocks are never split across rows, so rows move whole."""
        if name in self._experts:
            tensor, expert = self._experts[name]
            raw = np.asarray(tensor.data[expert]).view(np.uint8).reshape(int(tensor.shape[1]), -1)
            return tensor.tensor_type.name, raw
        tensor = self._tensors.get(name)
        if tensor is None:
            raise CheckpointError(f"{self.path}: tensor {name} is missing from the GGUF file.")
        rows = int(np.prod(tensor.shape[1:], dtype=np.int64)) if len(tensor.shape) > 1 else 1
        raw = np.asarray(tensor.data).view(np.uint8).reshape(rows, -1)
        if self.spec.fix_tensor is not None:  # quantized matrices only see row moves (Llama's Q/K un-permute)
            raw = self.spec.fix_tensor(name, raw, self.config)
        return tensor.tensor_type.name, raw

    @staticmethod
    def _dequantize_rows(data, tensor_type, dequantize, rows_per_chunk: int = 4096) -> np.ndarray:
        """Dequantize a row chunk at a time into one float32 array (bounded temporaries)."""
        if data.ndim < 2 or data.shape[0] <= rows_per_chunk:
            return np.asarray(dequantize(data, tensor_type), dtype=np.float32)
        first = np.asarray(dequantize(data[:rows_per_chunk], tensor_type), dtype=np.float32)
        out = np.empty((data.shape[0], *first.shape[1:]), dtype=np.float32)
        out[:rows_per_chunk] = first
        for start in range(rows_per_chunk, data.shape[0], rows_per_chunk):
            out[start : start + rows_per_chunk] = dequantize(data[start : start + rows_per_chunk], tensor_type)
        return out

    def tokenizer_metadata(self) -> dict:
        """Raw ``tokenizer.*`` metadata (vocabulary, merges, special ids, chat template)."""
        return {key: value for key, value in self.metadata.items() if key.startswith("tokenizer.")}
