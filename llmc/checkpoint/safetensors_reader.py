"""Hugging Face checkpoint folder: ``config.json`` + one or more ``.safetensors`` files.

The safetensors header is parsed here and the data memory-mapped, so each ``get`` touches one
tensor's bytes only; bf16 is read through ``ml_dtypes`` (numpy has no bfloat16).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from llmc.errors import CheckpointError, ConfigError

SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024


def read_config_json(folder: Path) -> dict:
    """Parse ``folder/config.json`` with errors that name the file."""
    file = folder / "config.json"
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder. Pass a checkpoint folder with config.json and *.safetensors.")
    if not file.exists():
        raise ConfigError(f"{file}: missing. A Hugging Face checkpoint folder needs config.json next to its weights.")
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{file}: not valid JSON ({err}). Re-download or fix the file.") from err
    if not isinstance(config, dict):
        raise ConfigError(f"{file}: expected a JSON object at the top level.")
    return config


class SafetensorsFile:
    """One ``.safetensors`` file: header parsed and checked against the file size, data memory-mapped."""

    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise self._corrupt("shorter than a safetensors header")
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > min(size - 8, MAX_HEADER_BYTES):
                raise self._corrupt("header length exceeds the file size (truncated or not safetensors)")
            try:
                header = json.loads(f.read(header_len))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise self._corrupt(f"header is not valid JSON ({err})") from err
        header.pop("__metadata__", None)
        self.data_start = 8 + header_len
        self.entries: dict[str, dict] = header
        data_len = size - self.data_start
        for name, entry in header.items():
            end = entry.get("data_offsets", [0, 0])[1]
            if end > data_len:
                raise self._corrupt(f"tensor {name} needs {end} data bytes but the file holds {data_len} (truncated)")
            if entry.get("dtype") not in SAFETENSORS_DTYPES:
                raise self._corrupt(f"tensor {name} has unsupported dtype {entry.get('dtype')}")
        self._mmap = np.memmap(path, dtype=np.uint8, mode="r") if size else None

    def _corrupt(self, why: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {why}. Re-download or re-save this file.")

    def get(self, name: str) -> np.ndarray:
        entry = self.entries[name]
        begin, end = entry["data_offsets"]
        dtype = np.dtype(SAFETENSORS_DTYPES[entry["dtype"]])
        raw = self._mmap[self.data_start + begin : self.data_start + end]
        count = int(np.prod(entry["shape"], dtype=np.int64))
        if raw.size != count * dtype.itemsize:
            raise self._corrupt(f"tensor {name}: {raw.size} bytes for shape {entry['shape']} {entry['dtype']}")
        return raw.view(dtype).reshape(entry["shape"])


class SafetensorsCheckpoint:
    """A checkpoint folder; a sharded one is described by ``model.safetensors.index.json``."""

    def __init__(self, folder: Path):
        self.path = folder
        self.config = read_config_json(folder)
        self._files: dict[Path, SafetensorsFile] = {}
        self._where: dict[str, Path] = {}
        index = folder / "model.safetensors.index.json"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise CheckpointError(f"{index}: malformed index ({err}). Re-download it.") from err
            for name, file in weight_map.items():
                self._where[name] = folder / file
            for file in sorted(set(self._where.values())):
                if not file.exists():
                    raise CheckpointError(f"{file}: listed in {index.name} but missing. Download every shard.")
        else:
            files = sorted(folder.glob("*.safetensors"))
            if not files:
                raise CheckpointError(
                    f"{folder}: no *.safetensors files (torch .bin checkpoints are not supported; "
                    "re-save with safe_serialization=True)."
                )
            for file in files:
                for name in self._open(file).entries:
                    self._where[name] = file
        for file in sorted(set(self._where.values())):
            self._open(file)  # validate every header up front: a truncated shard fails before any work

    def _open(self, file: Path) -> SafetensorsFile:
        if file not in self._files:
            self._files[file] = SafetensorsFile(file)
        return self._files[file]

    def names(self) -> list[str]:
        return list(self._where)

    def describe(self, name: str) -> str:
        return str(self._where.get(name, self.path))

    def get(self, name: str) -> np.ndarray:
        if name not in self._where:
            raise CheckpointError(
                f"{self.path}: tensor {name} is missing from the checkpoint. "
                "Is the download complete, and does config.json describe these weights?"
            )
        file = self._open(self._where[name])
        if name not in file.entries:
            raise CheckpointError(f"{file.path}: tensor {name} is listed in the index but not in the file.")
        return file.get(name)
