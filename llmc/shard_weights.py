"""The weights of a tensor-parallel artifact: every parameter cut into its shards, converted, and stored in TVM's
pre-sharded tensor-cache layout (``param_<i>_shard-<k>-of-<N>``, each shard's records in files of its own), so a
disco worker reads only its own files (``runtime.disco.ShardLoaderLoadAllPresharded``)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from tqdm import tqdm

from llmc.artifact import TENSOR_CACHE_FILE, TensorCacheWriter, write_build_info
from llmc.checkpoint.tokenizer_files import write_tokenizer_files
from llmc.compiler.shard import gathers_lm_head, preshard_name, shard_arrays
from llmc.errors import CheckpointError, ConfigError
from llmc.models.base import WeightSource
from llmc.plan import ModelPlan
from llmc.source import ResolvedSource
from llmc.weights import model_fields


def tensor_parallel_fields(plan: ModelPlan, param_names: list[str], random_weights: bool) -> dict:
    """The llmc-config.json fields of a sharded artifact: ``params`` are the stored names every shard loads
    (shard-major), ``tensor_parallel`` says how the model was cut."""
    shards = plan.shards
    stored = [preshard_name(i, k, shards) for k in range(shards) for i in range(len(param_names))]
    return {
        **({} if random_weights else {"params": stored}),
        "tensor_parallel": {
            "shards": shards,
            "param_names": param_names,
            "lm_head": "gathered" if gathers_lm_head(plan.config, shards) else "replicated",
        },
    }


def _read(reader, name: str, source: WeightSource):
    arrays = []
    for hf_name, shape in zip(source.names, source.shapes, strict=True):
        array = reader.get(hf_name)
        if tuple(array.shape) != tuple(shape):
            raise CheckpointError(
                f"{reader.describe(hf_name)}: tensor {hf_name} has shape {tuple(array.shape)}, "
                f"expected {tuple(shape)} from config.json. Do the weights match the config?"
            )
        arrays.append(array)
    return source.make(arrays)


def write_sharded_weights(
    source: ResolvedSource, reader, plan: ModelPlan, param_names: list[str], folder: Path, quiet: bool
) -> dict:
    """Read each full parameter, cut it into ``plan.shards`` slices, convert each with the plan's scheme and
    store shard k's tensors in files of its own; returns the config fields that describe them."""
    if plan.scheme.keeps_raw:
        raise ConfigError(
            f"--quant {plan.scheme.name} keeps a file's own blocks, which tensor parallelism cannot cut; "
            "pick a float or group scheme (e.g. --quant q0f16) with --tensor-parallel-shards."
        )
    started = time.time()
    shards, config = plan.shards, plan.config
    index = {name: i for i, name in enumerate(param_names)}
    sources = plan.family.weight_sources(config)
    full = plan.family.module_class(config, plan.sizes)  # the unsharded module: each parameter's name and full shape
    parts = [folder / f".tp{k}" for k in range(shards)]
    writers = []
    for part in parts:
        part.mkdir()
        writers.append(TensorCacheWriter(part, source=str(source.path)))
    params = list(full.named_parameters())
    with tqdm(total=len(params), desc=f"convert {plan.scheme.name} x{shards}", disable=quiet or None) as bar:
        for name, param in params:
            shape = tuple(int(d) for d in param.shape)
            array = _read(reader, name, sources.get(name, WeightSource([name], [shape])))
            for k, piece in enumerate(shard_arrays(name, array, config, shards)):
                for out_name, out in plan.scheme.convert(name, piece, plan.quantized, plan.dtype, plan.isa is not None):
                    writers[k].add(preshard_name(index[out_name], k, shards), out)
            bar.update(1)
    records = _merge(folder, parts, writers, {"quantization": plan.scheme.name, "model_type": config.model_type})
    write_build_info(folder, {"convert_seconds": round(time.time() - started, 2)})
    return {
        **model_fields(source, plan),
        "weights": [rec["name"] for shard in records for rec in shard["records"]],
        "param_bytes": sum(w.total_bytes for w in writers),
        "bits_per_param": plan.scheme.bits_per_param,
        "tokenizer": write_tokenizer_files(reader, folder),
    }


def _merge(folder: Path, parts: list[Path], writers: list[TensorCacheWriter], metadata: dict) -> list[dict]:
    """Move every shard's files into ``folder`` (numbered on) and write one ``tensor-cache.json`` listing them."""
    records = []
    for part, writer in zip(parts, writers, strict=True):
        writer.finish(metadata)
        for shard in writer.shards:
            data_path = f"params_shard_{len(records)}.bin"
            (part / shard["dataPath"]).rename(folder / data_path)
            records.append({**shard, "dataPath": data_path})
        shutil.rmtree(part)
    count = sum(len(shard["records"]) for shard in records)
    meta = {"ParamSize": count, "ParamBytes": sum(w.total_bytes for w in writers), **metadata}
    (folder / TENSOR_CACHE_FILE).write_text(json.dumps({"metadata": meta, "records": records}, indent=1))
    return records
