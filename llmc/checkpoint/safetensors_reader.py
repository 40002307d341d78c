"""Hugging Face checkpoint folder: ``config.json`` + one or more ``.safetensors`` files.

The safetensors header is parsed here and the data memory-mapped, so each ``get`` touches one
tensor's bytes only; bf16 is read through ``ml_dtypes`` (numpy has no bfloat16).
"""

from __future__ import annotations

import json
import math
import re
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
    "F8_E4M3": ml_dtypes.float8_e4m3fn,  # fp8 checkpoints (llmc.checkpoint.quantized)
}
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_JSON_DEPTH = 8  # a header is {name: {dtype, shape: [...], data_offsets: [...]}}: depth 3


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
    """One ``.safetensors`` file: header parsed and checked against the file size, data memory-mapped.

    The header is untrusted: its length is bounded, its JSON depth is bounded, every entry needs a known
    dtype, a shape of non-negative integers and ``data_offsets`` [begin, end] with end - begin = dtype x
    shape; the ranges, sorted, must tile the data section exactly (no gaps, overlaps or trailing bytes).
    """

    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise self._corrupt("shorter than a safetensors header")
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > min(size - 8, MAX_HEADER_BYTES):
                raise self._corrupt(
                    f"header length {header_len} exceeds the file size or {MAX_HEADER_BYTES} bytes "
                    "(truncated or not safetensors)"
                )
            header = self._parse_header(f.read(header_len))
        self.data_start = 8 + header_len
        self.entries: dict[str, dict] = header
        self._check_entries(size - self.data_start)
        self._mmap = np.memmap(path, dtype=np.uint8, mode="r") if size > self.data_start else None

    def _parse_header(self, raw: bytes) -> dict:
        depth = max_json_depth(raw)
        if depth > MAX_JSON_DEPTH:
            raise self._corrupt(f"header JSON nests {depth} levels deep (at most {MAX_JSON_DEPTH})")
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_refuse_duplicate_keys)
        except _DuplicateKey as err:
            raise self._corrupt(f"header names {err.args[0]!r} twice") from err
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            raise self._corrupt(f"header is not valid JSON ({err})") from err
        if not isinstance(header, dict):
            raise self._corrupt("header is not a JSON object")
        metadata = header.pop("__metadata__", None)
        if metadata is not None and not (
            isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
        ):
            raise self._corrupt("header __metadata__ is not an object of strings")
        return header

    def _check_entries(self, data_len: int) -> None:
        ranges = []
        for name, entry in self.entries.items():
            if not isinstance(entry, dict):
                raise self._corrupt(f"tensor {name}: header entry is not an object")
            dtype_name, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
            if dtype_name not in SAFETENSORS_DTYPES:
                raise self._corrupt(f"tensor {name} has unsupported dtype {dtype_name!r}")
            if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
                raise self._corrupt(f"tensor {name} has shape {shape!r}; expected a list of non-negative integers")
            if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
                raise self._corrupt(f"tensor {name} has data_offsets {offsets!r}; expected [begin, end]")
            begin, end = offsets
            if not 0 <= begin <= end:
                raise self._corrupt(f"tensor {name} has data_offsets {offsets}: negative or reversed")
            if end > data_len:
                raise self._corrupt(f"tensor {name} needs {end} data bytes but the file holds {data_len} (truncated)")
            expected = math.prod(shape) * np.dtype(SAFETENSORS_DTYPES[dtype_name]).itemsize
            if end - begin != expected:
                raise self._corrupt(
                    f"tensor {name}: {end - begin} bytes for shape {shape} {dtype_name} (needs {expected})"
                )
            ranges.append((begin, end, name))
        ranges.sort()
        position = 0
        for begin, end, name in ranges:
            if begin != position:
                what = "overlaps the tensor before it" if begin < position else f"leaves a gap at byte {position}"
                raise self._corrupt(f"tensor {name} (data_offsets [{begin}, {end}]) {what}")
            position = end
        if position != data_len:
            raise self._corrupt(f"the data section holds {data_len} bytes but the tensors cover {position}")

    def _corrupt(self, why: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {why}. Re-download or re-save this file.")

    def get(self, name: str) -> np.ndarray:
        entry = self.entries[name]
        begin, end = entry["data_offsets"]
        dtype = np.dtype(SAFETENSORS_DTYPES[entry["dtype"]])
        if begin == end:
            return np.zeros(entry["shape"], dtype=dtype)
        raw = self._mmap[self.data_start + begin : self.data_start + end]
        return raw.view(dtype).reshape(entry["shape"])


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def max_json_depth(raw: bytes) -> int:
    """Deepest [ / { nesting of a JSON text, counted without parsing (strings removed first)."""
    skeleton = np.frombuffer(_JSON_STRING.sub(b"", raw), dtype=np.uint8)
    steps = (
        (skeleton == ord("[")).astype(np.int64)
        + (skeleton == ord("{"))
        - (skeleton == ord("]"))
        - (skeleton == ord("}"))
    )
    return int(np.cumsum(steps).max(initial=0))


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


class SafetensorsCheckpoint:
    """A checkpoint folder; a sharded one is described by ``model.safetensors.index.json``."""

    def __init__(self, folder: Path):
        self.path = folder
        self.config = read_config_json(folder)
        self._files: dict[Path, SafetensorsFile] = {}
        self._where: dict[str, Path] = {}
        index = folder / "model.safetensors.index.json"
        if index.exists():
            for name, file in self._read_index(index).items():
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
                    if name in self._where:
                        raise CheckpointError(f"{file}: tensor {name} is also in {self._where[name].name}.")
                    self._where[name] = file
        for file in sorted(set(self._where.values())):
            self._open(file)  # validate every header up front: a truncated shard fails before any work
        for name, file in self._where.items():
            if name not in self._files[file].entries:
                raise CheckpointError(f"{file}: tensor {name} is listed in the index but not in the file.")
        for file, opened in self._files.items():
            unlisted = [name for name in opened.entries if self._where.get(name) != file]
            if unlisted:
                raise CheckpointError(
                    f"{file}: holds tensor {unlisted[0]}, which {index.name} does not map to this file "
                    "(an incomplete or mismatched index). Re-download the index."
                )
        if not self._where:
            raise CheckpointError(f"{folder}: the checkpoint holds no tensors.")

    def _read_index(self, index: Path) -> dict[str, str]:
        """``weight_map`` of the index: names to shard file names inside this folder."""
        if index.stat().st_size > MAX_HEADER_BYTES:
            raise CheckpointError(f"{index}: larger than {MAX_HEADER_BYTES} bytes; not a safetensors index.")
        raw = index.read_bytes()
        try:
            if max_json_depth(raw) > MAX_JSON_DEPTH:
                raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
            weight_map = json.loads(raw.decode("utf-8"), object_pairs_hook=_refuse_duplicate_keys)["weight_map"]
        except _DuplicateKey as err:
            raise CheckpointError(f"{index}: names {err.args[0]!r} twice. Re-download it.") from err
        except (ValueError, KeyError, TypeError, RecursionError) as err:
            raise CheckpointError(f"{index}: malformed index ({err}). Re-download it.") from err
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: weight_map is not an object. Re-download it.")
        for name, file in weight_map.items():
            if not isinstance(file, str) or Path(file).name != file or not file.endswith(".safetensors"):
                raise CheckpointError(
                    f"{index}: tensor {name} maps to {file!r}; shards must be .safetensors files in this folder."
                )
        return weight_map

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
        return self._open(self._where[name]).get(name)
