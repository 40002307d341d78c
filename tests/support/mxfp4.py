"""MXFP4 checkpoints written to the released GPT-OSS layout (numpy), and transformers holding their decoded experts
(transformers' own decoder): tests/test_models_gptoss.py and tests/test_gguf_families.py use them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

PACKED = ("experts.gate_up_proj", "experts.down_proj")


def mxfp4_encode(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An expert stack ``[E, in, out]`` as MXFP4's ``_blocks`` ``[E, out, in/32, 16]`` and ``_scales``
    ``[E, out, in/32]``: per 32 inputs a power-of-two scale that brings the largest magnitude within e2m1's 6, each
    value rounded to the nearest e2m1 code, two codes per byte (the low nibble first)."""
    from llmc.checkpoint.mxfp4 import E2M1, E8M0_BIAS

    rows = np.swapaxes(dense, 1, 2).astype(np.float32)  # [E, out, in]
    groups = rows.reshape(*rows.shape[:2], -1, 32)
    exponent = np.ceil(np.log2(np.maximum(np.abs(groups).max(-1), 1e-30) / 6.0)).astype(np.int32)
    scaled = groups / np.ldexp(np.float32(1), exponent)[..., None]
    codes = np.abs(scaled[..., None] - E2M1).argmin(-1).astype(np.uint8)  # nearest value (+0 before -0)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks, (exponent + E8M0_BIAS).astype(np.uint8)


def write_mxfp4_checkpoint(source: Path, folder: Path) -> Path:
    """``source`` (a float gpt_oss checkpoint) copied to ``folder`` with its expert stacks as MXFP4."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(source, folder)
    for shard in folder.glob("*.safetensors"):
        tensors = load_file(shard)
        for name in [n for n in tensors if n.endswith(PACKED)]:
            tensors[name + "_blocks"], tensors[name + "_scales"] = mxfp4_encode(tensors.pop(name))
        save_file(tensors, shard, metadata={"format": "pt"})
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    for name in [n for n in index["weight_map"] if n.endswith(PACKED)]:
        shard = index["weight_map"].pop(name)
        index["weight_map"].update({name + "_blocks": shard, name + "_scales": shard})
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "lm_head"],
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def hf_with_decoded_experts(folder: Path, scratch: Path):
    """transformers' GptOssForCausalLM (float32) holding ``folder``'s weights, its MXFP4 experts decoded by
    transformers' ``convert_moe_packed_tensors``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    from llmc.checkpoint.safetensors_reader import SafetensorsCheckpoint

    config = json.loads((folder / "config.json").read_text())
    config.pop("quantization_config")
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "config.json").write_text(json.dumps(config))
    hf = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(scratch), dtype=torch.float32).eval()
    raw, state = SafetensorsCheckpoint(folder), {}
    for name in raw.names():
        array = torch.from_numpy(np.array(raw.get(name)))
        if name.endswith("_blocks"):
            base = name[: -len("_blocks")]
            scales = torch.from_numpy(np.array(raw.get(base + "_scales")))
            state[base] = convert_moe_packed_tensors(array, scales, dtype=torch.float32)
        elif not name.endswith("_scales"):
            state[name] = array
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return hf
