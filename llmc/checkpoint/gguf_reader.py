"""GGUF files through gguf-py, presented as a Hugging Face checkpoint.

Metadata becomes a config.json-style dict, tensor names become HF names, quantized blocks are
dequantized per tensor, ggml's reversed shapes are put back, and what llama.cpp's converter changed
is undone (the model family's ``GGUFSpec.fix_tensor``: Llama's Q/K row permutation, Gemma's norm
offset). Which tensor names and metadata an architecture has is the family's (``llmc.models``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llmc.checkpoint.gguf_file import GGUFFormatError, read_gguf
from llmc.checkpoint.gguf_rope import rope_scaling_from_freqs
from llmc.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from llmc.models.base import GGUFSpec

_GLOBAL_NAMES = {  # llama.cpp's global tensors (``.weight`` / ``.bias``) -> HF module paths, Llama naming
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
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
_GLOBAL_RE = re.compile(r"^([a-z_]+)\.(weight|bias)$")
YARN_BETAS = ("beta_fast", "beta_slow")  # written only when config.json had them (else transformers' defaults)


def hf_name(gguf_name: str, spec: GGUFSpec | None = None) -> str | None:
    """HF tensor name for a GGUF tensor name (None when there is no HF counterpart); ``spec``: the family's
    names that differ from or add to llama.cpp's Llama naming (block and global tensors, layer prefix)."""
    match = _BLOCK_RE.match(gguf_name)
    if match:
        names = {**_BLOCK_NAMES, **(spec.block_names if spec else {})}
        prefix = spec.layer_prefix if spec else "model.layers"
        if match.group(2) in names:
            target = names[match.group(2)]  # "{suffix}" where the HF name is not "<module>.weight/bias"
            if "{suffix}" in target:
                return f"{prefix}.{match.group(1)}.{target.format(suffix=match.group(3))}"
            return f"{prefix}.{match.group(1)}.{target}.{match.group(3)}"
        return None
    match = _GLOBAL_RE.match(gguf_name)
    names = {**_GLOBAL_NAMES, **(spec.global_names if spec else {})}
    if match and match.group(1) in names:
        return f"{names[match.group(1)]}.{match.group(2)}"
    return None


class _Metadata:
    """``meta(key, default)``: the architecture's metadata ``{arch}.{key}``; ``meta.has(name)``: whether the
    file has GGUF tensor ``name``; ``meta.columns(name)``: its input width (ggml's first dimension)."""

    def __init__(self, arch: str, metadata: dict, tensors: dict):
        self.arch, self.metadata, self.tensors = arch, metadata, tensors

    def __call__(self, key: str, default=None):
        return self.metadata.get(f"{self.arch}.{key}", default)

    def has(self, name: str) -> bool:
        """Whether the file has tensor ``name`` (``blk.N.attn_{q,k,v}.*`` also as part of a fused ``attn_qkv``)."""
        return name in self.tensors or re.sub(r"\.attn_[qkv]\.", ".attn_qkv.", name) in self.tensors

    def columns(self, name: str) -> int | None:
        tensor = self.tensors.get(name)
        return int(tensor.shape[0]) if tensor is not None else None

    def yarn(self) -> dict | None:
        """The file's yarn rope scaling as config.json's ``rope_scaling`` (factor, original context, and the betas
        when written), None when the file has another or none; families add what llama.cpp does not store."""
        if self("rope.scaling.type") != "yarn":
            return None
        betas = {k: self(f"rope.scaling.yarn_{k}") for k in YARN_BETAS}
        return {
            "rope_type": "yarn",
            "factor": float(self("rope.scaling.factor")),
            "original_max_position_embeddings": self("rope.scaling.original_context_length"),
            **{k: float(v) for k, v in betas.items() if v is not None},
        }


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
        names = {t.name: hf_name(t.name, self.spec) for t in self.tensors}
        self._tensors = {names[t.name]: t for t in self.tensors if names[t.name] is not None}
        self._meta = _Metadata(self.arch, self.metadata, {t.name: t for t in self.tensors})
        self.config = self._config()
        self._experts = self._expert_slices()
        if self._experts:  # layers without expert tensors keep a dense MLP (Qwen3-MoE's mlp_only_layers)
            sparse = {int(name.split(".")[2]) for name in self._experts}
            self.config["mlp_only_layers"] = [i for i in range(self.config["num_hidden_layers"]) if i not in sparse]
        self._experts.update(self._row_slices())
        self._ranges = self._fused_qkv_ranges()

    def _config(self) -> dict:
        meta = self._meta
        tokens = self.metadata.get("tokenizer.ggml.tokens") or []
        heads = meta("attention.head_count")
        hidden = meta("embedding_length")
        if heads is None or hidden is None:
            raise ConfigError(f"{self.path}: GGUF metadata lacks {self.arch}.attention.head_count / embedding_length.")
        head_dim = meta("attention.key_length", hidden // heads)
        config = {
            "model_type": self.spec.model_type,
            "hidden_size": hidden,
            # the MLP width from its down projection's input (llama.cpp's Phi-2 converter writes 4 x hidden)
            "intermediate_size": meta.columns("blk.0.ffn_down.weight") or meta("feed_forward_length"),
            "num_hidden_layers": meta("block_count"),
            "num_attention_heads": heads,
            "num_key_value_heads": meta("attention.head_count_kv", heads),
            "head_dim": head_dim,
            "rms_norm_eps": meta("attention.layer_norm_rms_epsilon", 1e-5),
            "rope_theta": meta("rope.freq_base", 10000.0),
            "max_position_embeddings": meta("context_length", 2048),
            "vocab_size": len(tokens) or meta("vocab_size"),
            "tie_word_embeddings": not meta.has("output.weight"),
            "attention_bias": meta.has("blk.0.attn_output.bias"),
            "mlp_bias": meta.has("blk.0.ffn_down.bias"),
            "bos_token_id": self.metadata.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": self.metadata.get("tokenizer.ggml.eos_token_id"),
        }
        rotary = meta("rope.dimension_count")
        valid = isinstance(rotary, int) and not isinstance(rotary, bool) and not rotary % 2 and 0 < rotary <= head_dim
        if rotary is not None and not valid:
            raise CheckpointError(
                f"{self.path}: GGUF metadata {self.arch}.rope.dimension_count is {rotary!r}; expected an even "
                f"integer up to the head width {head_dim}. The file is damaged; convert the model again."
            )
        if rotary:  # (families with a partial default read 1.0 as "all of the head")
            config["partial_rotary_factor"] = rotary / head_dim
        if meta("rope.scaling.type") == "linear" and meta("rope.scaling.factor"):
            config["rope_scaling"] = {"rope_type": "linear", "factor": float(meta("rope.scaling.factor"))}
        freqs = meta.tensors.get("rope_freqs.weight")
        if freqs is not None:  # Llama 3.1-style scaling, stored as one divisor per frequency
            from gguf.quants import dequantize

            divisors = dequantize(freqs.data, freqs.tensor_type)
            # llama.cpp's converter makes one divisor per pair of the head width (== the rotary width for Llama)
            width = 2 * divisors.size if 2 * divisors.size in (rotary, head_dim) else rotary or head_dim
            scaling = rope_scaling_from_freqs(divisors, float(config["rope_theta"]), width, self.path)
            if scaling:
                config["rope_scaling"] = scaling
        # qwen2 (its model_type) has q/k/v biases and no o_proj bias, as in its config.json; HF's
        # attention_bias would add an o_proj bias the file does not have
        if self.spec.config is not None:
            config.update(self.spec.config(meta))
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

    def _row_slices(self) -> dict[str, tuple]:
        """A family's ``GGUFSpec.row_names``: a ``blk.N.KIND`` tensor that llama.cpp's converter stacked from one
        HF tensor per row (StableLM's per-head QK-norm weights) offered as those tensors: ``{hf_name: (tensor,
        row)}``."""
        slices: dict[str, tuple] = {}
        prefix = self.spec.layer_prefix
        for tensor in self.tensors:
            match = _BLOCK_RE.match(tensor.name)
            if not match or match.group(2) not in self.spec.row_names or len(tensor.shape) < 2:
                continue
            suffix = self.spec.row_names[match.group(2)]
            for row in range(int(tensor.shape[-1])):  # ggml's shape is reversed: the stacked rows last
                slices[f"{prefix}.{match.group(1)}.{suffix.format(j=row)}.{match.group(3)}"] = (tensor, row)
        return slices

    def _fused_qkv_ranges(self) -> dict[str, tuple]:
        """``blk.N.attn_qkv`` (llama.cpp's ``--fuse-qkv``, older Phi-2 files) offered as the family's q, k and v
        tensors, by rows: ``{hf_name: (tensor, first row, end row)}``; the family fuses them again as it wants."""
        if "attn_qkv" in self.spec.block_names:
            return {}  # the family reads the fused tensor itself (GPT-NeoX, Phi-3)
        c = self.config
        q_rows, kv_rows = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
        bounds = {"q": (0, q_rows), "k": (q_rows, q_rows + kv_rows), "v": (q_rows + kv_rows, q_rows + 2 * kv_rows)}
        ranges: dict[str, tuple] = {}
        for tensor in self.tensors:
            match = _BLOCK_RE.match(tensor.name)
            if not match or match.group(2) != "attn_qkv":
                continue
            if int(tensor.shape[-1]) != q_rows + 2 * kv_rows:
                raise CheckpointError(
                    f"{self.path}: {tensor.name} has {int(tensor.shape[-1])} rows, expected {q_rows + 2 * kv_rows} "
                    "(q, k and v heads from the metadata). The file may be corrupt."
                )
            for part, (start, end) in bounds.items():
                name = hf_name(f"blk.{match.group(1)}.attn_{part}.{match.group(3)}", self.spec)
                ranges[name] = (tensor, start, end)
        return ranges

    def names(self) -> list[str]:
        return [*self._tensors, *self._experts, *self._ranges]

    def describe(self, name: str) -> str:
        return str(self.path)

    def get(self, name: str) -> np.ndarray:
        from gguf.quants import dequantize

        if name in self._experts:
            tensor, expert = self._experts[name]
            shape = tuple(int(d) for d in reversed(tensor.shape[:-1]))
            data = tensor.data[expert]
        elif name in self._ranges:
            tensor, start, end = self._ranges[name]
            shape = (end - start, *(int(d) for d in reversed(tensor.shape[:-1])))
            data = tensor.data[start:end]
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
            types[name] = (t.tensor_type.name, tuple(int(d) for d in reversed(t.shape[:-1])))
        for name, (t, start, end) in self._ranges.items():
            types[name] = (t.tensor_type.name, (end - start, *(int(d) for d in reversed(t.shape[:-1]))))
        return types

    def get_raw(self, name: str) -> tuple[str, np.ndarray]:
        """(GGML type name, the tensor's bytes as ``uint8 [rows, row bytes]``), rows in HF order (Q/K
        rows un-permuted as in ``get``); blocks are never split across rows, so rows move whole."""
        if name in self._experts:
            tensor, expert = self._experts[name]
            rows = int(np.prod(tensor.shape[1:-1], dtype=np.int64))
            raw = np.asarray(tensor.data[expert]).view(np.uint8).reshape(rows, -1)
            return tensor.tensor_type.name, raw
        start, end = 0, None
        if name in self._ranges:
            tensor, start, end = self._ranges[name]
        else:
            tensor = self._tensors.get(name)
        if tensor is None:
            raise CheckpointError(f"{self.path}: tensor {name} is missing from the GGUF file.")
        rows = int(np.prod(tensor.shape[1:], dtype=np.int64)) if len(tensor.shape) > 1 else 1
        raw = np.asarray(tensor.data).view(np.uint8).reshape(rows, -1)[start:end]
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
