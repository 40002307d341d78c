"""Streaming checkpoint readers: each yields one tensor at a time under Hugging Face names.

A reader exposes ``config`` (a config.json-style dict), ``names()`` and ``get(name)``; peak memory
stays near the largest tensor because data is memory-mapped and converted per request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class CheckpointReader(Protocol):
    """What the model mapping needs from a checkpoint."""

    path: Path
    config: dict

    def names(self) -> list[str]: ...

    def get(self, name: str) -> np.ndarray: ...

    def describe(self, name: str) -> str:
        """Where a tensor lives (file name), for error messages."""
        ...


def open_checkpoint(source) -> CheckpointReader:
    """Open the reader matching a resolved source (see ``llmc.source``)."""
    if source.format == "gguf":
        from llmc.checkpoint.gguf_reader import GGUFCheckpoint

        return GGUFCheckpoint(source.path)
    from llmc.checkpoint.quantized import open_quantized
    from llmc.checkpoint.safetensors_reader import SafetensorsCheckpoint

    # AWQ / GPTQ / fp8 checkpoints (config.json's quantization_config): quantized weights under float names
    return open_quantized(SafetensorsCheckpoint(source.path), str(source.path / "config.json"))
