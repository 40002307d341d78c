"""The weights of a weights or artifact folder: converted from a checkpoint, linked from a weights folder
or rewritten in a target's layout, and the ``llmc-config.json`` fields that describe them."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

import llmc
from llmc.artifact import (
    BUILD_INFO_FILE,
    CONFIG_FILE,
    FORMAT_VERSION,
    TENSOR_CACHE_FILE,
    TensorCacheWriter,
    read_tensor_cache,
    write_build_info,
)
from llmc.checkpoint.tokenizer_files import write_tokenizer_files
from llmc.convert import convert_weights
from llmc.errors import ArtifactError
from llmc.plan import ModelPlan
from llmc.source import ResolvedSource


def model_fields(source: ResolvedSource, plan: ModelPlan) -> dict:
    """The llmc-config.json fields every weights or artifact folder carries."""
    return {
        "format_version": FORMAT_VERSION,
        "llmc_version": llmc.__version__,
        "source": {"spec": source.spec, "format": source.format, "path": str(source.path)},
        "model": asdict(plan.config),
        "quantization": plan.scheme.name,
        "quantize_embeddings": plan.quantize_embeddings,
        "dtype": plan.dtype or plan.scheme.model_dtype,
        "int_dot": plan.isa,
        **plan.sizes.record(),
        **plan.scheme.record(),
    }


def describe_random_weights(source: ResolvedSource, plan: ModelPlan, named_params) -> dict:
    """Config fields for an artifact without weights: shapes and dtypes to draw them from at load time."""
    specs = [[name, [int(d) for d in p.shape], p.dtype] for name, p in named_params]
    return {
        **model_fields(source, plan),
        "random_weights": True,
        "param_specs": specs,
        "bits_per_param": plan.scheme.bits_per_param,
        "tokenizer": {"has_tokenizer": False, "eos_token_ids": []},
    }


def write_weights(source: ResolvedSource, reader, plan: ModelPlan, target, folder: Path, quiet: bool) -> dict:
    """Converted weights + tokenizer into ``folder``; returns the config fields that describe them."""
    started = time.time()
    writer = TensorCacheWriter(folder, source=str(source.path))
    convert_weights(reader, plan, target, writer, quiet)
    writer.finish({"quantization": plan.scheme.name, "model_type": plan.config.model_type})
    fields = {
        **model_fields(source, plan),
        "weights": [rec["name"] for shard in writer.shards for rec in shard["records"]],
        "param_bytes": writer.total_bytes,
        "bits_per_param": plan.scheme.bits_per_param,
        "tokenizer": write_tokenizer_files(reader, folder),
    }
    write_build_info(folder, {"convert_seconds": round(time.time() - started, 2)})  # outside the identity
    return fields


def stored_layout_fits(stored: dict, plan: ModelPlan) -> bool:
    """Whether a weights folder's arrays are already what the module for this target loads."""
    return stored.get("int_dot") == plan.isa and stored.get("dtype", plan.scheme.model_dtype) == plan.dtype


def relayout_weights(src: Path, dst: Path, plan: ModelPlan, quiet: bool) -> dict:
    """Rewrite a weights folder's tensor cache into ``dst`` in the target's layout (CPU repack, float32)."""
    writer = TensorCacheWriter(dst)
    with tqdm(desc=f"relayout {plan.scheme.name}", unit="tensor", disable=quiet or None) as bar:
        for out_name, out in plan.scheme.relayout_stream(read_tensor_cache(src), plan.dtype, plan.isa is not None):
            writer.add(out_name, out)
            bar.update(1)
    writer.finish({"quantization": plan.scheme.name, "model_type": plan.config.model_type})
    return {
        "param_bytes": writer.total_bytes,
        "weights": [rec["name"] for shard in writer.shards for rec in shard["records"]],  # names change with layout
    }


def link_weights(src: Path, dst: Path, weights: bool = True) -> None:
    """Hard-link (or copy) the weight and tokenizer files of a weights folder into ``dst``
    (``weights=False``: tokenizer files only, the weights are rewritten)."""
    for file in sorted(src.iterdir()):
        if file.name in (CONFIG_FILE, BUILD_INFO_FILE) or not file.is_file() or file.suffix in (".so", ".tar", ".wasm"):
            continue
        if not weights and (file.name == TENSOR_CACHE_FILE or file.name.startswith("params_shard_")):
            continue
        try:
            os.link(file, dst / file.name)
        except OSError:
            shutil.copy2(file, dst / file.name)


def check_weights_match(folder: Path, stored: list[str], expected: list[str]) -> None:
    """A weights folder holds every parameter the module for this target loads."""
    missing = sorted(set(expected) - set(stored))
    if missing:
        raise ArtifactError(
            f"{folder}: weights lack {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}; "
            "they were converted by another llmc version. Re-run `llmc quantize`."
        )
