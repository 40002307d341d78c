"""Weight conversion: stream every parameter of a checkpoint through a quantization scheme into a tensor cache."""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from tqdm import tqdm

from llmc.artifact import TensorCacheWriter
from llmc.errors import CheckpointError
from llmc.models.base import WeightSource

if TYPE_CHECKING:
    from llmc.plan import ModelPlan

CONVERT_THREADS = 2


def _convert_one(reader, name: str, source: WeightSource, plan: ModelPlan):
    if name in plan.quantized and plan.scheme.keeps_raw:  # --quant keep: the file's own blocks
        parts = [reader.get_raw(n) for n in source.names]
        if source.transform is not None:  # GGUF block rows moved as the float rows would be
            from llmc.quant.keep import move_rows

            parts = move_rows(name, source.transform, parts)
        return plan.scheme.convert_raw(name, parts, plan.isa is not None)
    arrays = []
    for hf_name, shape in zip(source.names, source.shapes):
        array = reader.get(hf_name)
        if tuple(array.shape) != tuple(shape):
            raise CheckpointError(
                f"{reader.describe(hf_name)}: tensor {hf_name} has shape {tuple(array.shape)}, "
                f"expected {tuple(shape)} from config.json. Do the weights match the config?"
            )
        arrays.append(array)
    return plan.scheme.convert(name, source.make(arrays), plan.quantized, plan.dtype, plan.isa is not None)


def convert_weights(reader, plan: ModelPlan, target, writer: TensorCacheWriter, quiet: bool) -> None:
    """Stream every parameter: read, check shape, convert (2 threads, 2 tensors ahead), store in order."""
    sources = plan.family.weight_sources(plan.config)
    params = [(name, tuple(int(d) for d in p.shape)) for name, p in plan.float_module(target).named_parameters()]
    with (
        ThreadPoolExecutor(CONVERT_THREADS) as pool,
        tqdm(total=len(params), desc=f"convert {plan.scheme.name}", unit="tensor", disable=quiet or None) as bar,
    ):
        pending: deque = deque()
        for name, expected in params:
            source = sources.get(name, WeightSource([name], [expected]))
            pending.append(pool.submit(_convert_one, reader, name, source, plan))
            if len(pending) > CONVERT_THREADS:
                _store(pending.popleft().result(), writer, bar)
        while pending:
            _store(pending.popleft().result(), writer, bar)


def _store(converted: list, writer: TensorCacheWriter, bar) -> None:
    for out_name, array in converted:
        writer.add(out_name, array)
    bar.update(1)
