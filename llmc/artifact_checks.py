"""Self-verification of an artifact folder before anything from it is loaded.

``check_config_schema``: ``llmc-config.json`` fields of the right types and ranges, every path in it
(``library``) a file inside the folder. ``verify_artifact``: ``tensor-cache.json`` records in bounds
and matching the shards' sizes, ``dataPath`` confined to the folder, the library's size and ELF
header checked (a truncated ``.so`` would crash ``dlopen`` with SIGBUS) and, on the first load of
these exact files or with ``force``, every shard's md5 and the library's sha256 compared with what
the compiler recorded. The "verified" record lives in the user's cache, keyed by the files' paths,
sizes, inodes and modification times, so the hashing cost is paid once per artifact copy.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from llmc.checkpoint.config_checks import POSITIVE_INT_FIELDS
from llmc.errors import ArtifactError
from llmc.memory import recorded_eviction

MAX_JSON_BYTES = 64 << 20
ELF_MAGIC = b"\x7fELF"
_HASH_CHUNK = 8 << 20


def read_json(file: Path, fix: str):
    """A size-bounded JSON file with an ArtifactError naming it when it is not valid."""
    try:
        if file.stat().st_size > MAX_JSON_BYTES:
            raise ArtifactError(f"{file}: larger than {MAX_JSON_BYTES >> 20} MiB; not an llmc file. {fix}")
        return json.loads(file.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError
        raise ArtifactError(f"{file}: not valid JSON ({err}). {fix}") from err


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(file: Path, where: str, value) -> None:
    if not _is_int(value) or value < 1:
        raise ArtifactError(f"{file}: {where} is {value!r}; expected a positive integer. Re-run `llmc compile`.")


def contained_file(folder: Path, name, file: Path, field: str) -> Path:
    """``folder/name`` when ``name`` is a plain file name whose target stays inside ``folder``."""
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise ArtifactError(
            f"{file}: {field} {name!r} is not a file name inside the artifact folder; refusing to load it."
        )
    path = folder / name
    if not path.resolve().is_relative_to(folder.resolve()):
        raise ArtifactError(f"{file}: {field} {name!r} points outside {folder}; refusing to load it.")
    return path


def check_config_schema(file: Path, config: dict) -> None:
    """Types and ranges of the fields the runtime reads (a tampered config fails here, not in TVM)."""
    folder = file.parent
    model = config.get("model")
    if not isinstance(model, dict):
        raise ArtifactError(f"{file}: 'model' is missing or not an object. Re-run `llmc compile`.")
    _check_model_section(file, model)
    for key in ("context_window", "prefill_chunk", "max_batch_size"):
        _positive_int(file, key, config.get(key))
    _check_eviction(file, config)
    if config.get("stage") not in ("weights", "compiled"):
        raise ArtifactError(
            f"{file}: 'stage' is {config.get('stage')!r}, not weights or compiled. Re-run `llmc compile`."
        )
    if not _known_dtype(config.get("dtype")) or not isinstance(config.get("quantize_embeddings", True), bool):
        raise ArtifactError(f"{file}: 'dtype' or 'quantize_embeddings' is malformed. Re-run `llmc compile`.")
    if not (config.get("int_dot") is None or isinstance(config.get("int_dot"), str)):
        raise ArtifactError(f"{file}: 'int_dot' is {config.get('int_dot')!r}. Re-run `llmc compile`.")
    if not config.get("random_weights"):
        weights = config.get("weights")
        if not (isinstance(weights, list) and all(isinstance(w, str) for w in weights)):
            raise ArtifactError(f"{file}: 'weights' is not a list of names. Re-run `llmc compile`.")
    if not isinstance(config.get("quantization"), str):
        raise ArtifactError(f"{file}: 'quantization' is missing or not a string. Re-run `llmc compile`.")
    if config.get("stage") == "compiled":
        contained_file(folder, config.get("library"), file, "library")
        for key in ("library_bytes",):
            if key in config:
                _positive_int(file, key, config[key])
        if not isinstance(config.get("library_sha256", ""), str):
            raise ArtifactError(f"{file}: 'library_sha256' is not a string. Re-run `llmc compile`.")
        params = config.get("params")
        if not (isinstance(params, list) and all(isinstance(p, str) for p in params)):
            raise ArtifactError(f"{file}: 'params' is not a list of names. Re-run `llmc compile`.")
        _check_runs_on(file, config.get("runs_on"))
    tokenizer = config.get("tokenizer", {})
    if not isinstance(tokenizer, dict):
        raise ArtifactError(f"{file}: 'tokenizer' is not an object. Re-run `llmc compile`.")
    vocab = model["vocab_size"]
    bos = tokenizer.get("bos_token_id")
    eos = tokenizer.get("eos_token_ids", [])
    for token_id in ([bos] if bos is not None else []) + (eos if isinstance(eos, list) else [eos]):
        if not _is_int(token_id) or not 0 <= token_id < vocab:
            raise ArtifactError(
                f"{file}: token id {token_id!r} in 'tokenizer' is outside the vocabulary of {vocab}. "
                "Re-run `llmc compile`."
            )
    if config.get("random_weights"):
        specs = config.get("param_specs")
        if not isinstance(specs, list) or not all(_valid_spec(spec) for spec in specs):
            raise ArtifactError(f"{file}: 'param_specs' is malformed. Re-run `llmc compile`.")


def _check_runs_on(file: Path, runs_on) -> None:
    """``runs_on``: where the library loads, and for x86 CPU code the extensions it needs."""
    if runs_on is None:  # written before the compiler recorded it
        return
    cpu = runs_on.get("cpu") if isinstance(runs_on, dict) else None
    valid = (
        isinstance(runs_on, dict)
        and isinstance(runs_on.get("here"), bool)
        and isinstance(runs_on.get("message", ""), str)
        and isinstance(runs_on.get("requires") or "", str)
        and (
            cpu is None
            or (
                isinstance(cpu, dict)
                and isinstance(cpu.get("mcpu"), str)
                and _string_list(cpu.get("extensions"))
                and _string_list(cpu.get("mattr", []))
            )
        )
    )
    if not valid:
        raise ArtifactError(f"{file}: 'runs_on' is malformed. Re-run `llmc compile`.")


def _string_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


MODEL_INT_FIELDS = POSITIVE_INT_FIELDS
MODEL_FLOAT_FIELDS = ("rms_norm_eps", "rope_theta")
MODEL_BOOL_FIELDS = ("tie_word_embeddings", "attention_bias", "o_proj_bias", "mlp_bias", "sliding_eviction")


def _check_model_section(file: Path, model: dict) -> None:
    """The ``model`` section (``ModelConfig``): core fields present with their types; families may add more."""
    if not isinstance(model.get("model_type"), str):
        raise ArtifactError(f"{file}: model.model_type is {model.get('model_type')!r}. Re-run `llmc compile`.")
    for key in MODEL_INT_FIELDS:
        _positive_int(file, f"model.{key}", model.get(key))
    for key in MODEL_FLOAT_FIELDS:
        value = model.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise ArtifactError(f"{file}: model.{key} is {value!r}; expected a positive number. Re-run `llmc compile`.")
    for key in MODEL_BOOL_FIELDS:
        if not isinstance(model.get(key, False), bool):
            raise ArtifactError(
                f"{file}: model.{key} is {model[key]!r}; expected true or false. Re-run `llmc compile`."
            )
    if not isinstance(model.get("rope_scaling", {}), dict):
        raise ArtifactError(f"{file}: model.rope_scaling is not an object. Re-run `llmc compile`.")
    if model["num_attention_heads"] % model["num_key_value_heads"]:
        raise ArtifactError(f"{file}: model.num_attention_heads is not a multiple of num_key_value_heads.")


def _check_eviction(file: Path, config: dict) -> None:
    """An evicting cache (``sliding_eviction``; older llmc wrote it under ``model``): the runtime slides each
    sequence by the sliding window, which must hold a prefill chunk. ``sliding_cache`` is a flag too."""
    model = config["model"]
    evicts = recorded_eviction(config)
    for key, value in (("sliding_eviction", evicts), ("sliding_cache", config.get("sliding_cache", False))):
        if not isinstance(value, bool):
            raise ArtifactError(f"{file}: '{key}' is {value!r}; expected true or false. Re-run `llmc compile`.")
    window, chunk = model.get("sliding_window"), config["prefill_chunk"]
    if evicts and (isinstance(window, bool) or not isinstance(window, int) or window <= chunk):
        raise ArtifactError(
            f"{file}: model.sliding_window is {window!r}; an evicting cache needs a window longer than the "
            f"prefill chunk ({chunk}). Re-run `llmc compile`."
        )


def _valid_spec(spec) -> bool:
    if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str) and isinstance(spec[1], list)):
        return False
    return all(_is_int(d) and 0 <= d < 1 << 40 for d in spec[1]) and _known_dtype(spec[2])


_DTYPES = {"float32", "float16", "bfloat16", "uint32", "uint8", "int8", "int32", "int64", "float64", "uint16"}


def _known_dtype(dtype) -> bool:
    return isinstance(dtype, str) and dtype in _DTYPES


def _dtype_bytes(dtype: str) -> int:
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


def read_shards(folder: Path, params: list[str] | None = None, stored: list[str] | None = None) -> list[dict]:
    """The shards of ``tensor-cache.json``, every record checked against its shard's bytes; ``params``: names
    the library loads (all must be there), ``stored``: the names llmc-config.json lists (exactly these)."""
    file = folder / "tensor-cache.json"
    fix = "Re-run `llmc compile`."
    if not file.exists():
        raise ArtifactError(f"{file}: missing; the artifact has no weights. {fix}")
    index = read_json(file, fix)
    shards = index.get("records") if isinstance(index, dict) else None
    if not isinstance(shards, list):
        raise ArtifactError(f"{file}: no 'records' list. {fix}")
    names: set[str] = set()
    paths: set[str] = set()
    for number, shard in enumerate(shards):
        if not isinstance(shard, dict) or not isinstance(shard.get("records"), list):
            raise ArtifactError(f"{file}: shard #{number} is malformed. {fix}")
        path = contained_file(folder, shard.get("dataPath"), file, f"shard #{number} dataPath")
        if shard["dataPath"] in paths:
            raise ArtifactError(f"{file}: shard file {shard['dataPath']} is listed twice. {fix}")
        paths.add(shard["dataPath"])
        _positive_or_zero(file, f"shard {shard['dataPath']} nbytes", shard.get("nbytes"))
        if not path.is_file():
            raise ArtifactError(f"{path}: missing; the artifact's weights are incomplete. {fix}")
        size = path.stat().st_size
        if size != shard["nbytes"]:
            raise ArtifactError(
                f"{path}: {size} bytes, but tensor-cache.json records {shard['nbytes']} (truncated or replaced). {fix}"
            )
        if not isinstance(shard.get("md5sum"), str):
            raise ArtifactError(f"{file}: shard {shard['dataPath']} has no md5sum. {fix}")
        ranges = []
        for rec in shard["records"]:
            name = _check_record(file, shard["dataPath"], rec, fix)
            if name in names:
                raise ArtifactError(f"{file}: tensor {name} is stored twice. {fix}")
            names.add(name)
            ranges.append((rec["byteOffset"], rec["byteOffset"] + rec["nbytes"], name))
        ranges.sort()
        for (_, end, name), (begin, _, other) in zip(ranges, ranges[1:]):
            if begin < end:
                raise ArtifactError(f"{file}: tensors {name} and {other} overlap in {shard['dataPath']}. {fix}")
        if ranges and ranges[-1][1] > size:
            raise ArtifactError(f"{file}: tensor {ranges[-1][2]} lies past the end of {shard['dataPath']}. {fix}")
    if stored is not None and names != set(stored):
        odd = sorted(names.symmetric_difference(stored))
        raise ArtifactError(f"{file}: its tensors differ from llmc-config.json's 'weights' ({odd[0]}). {fix}")
    missing = sorted(set(params or []) - names)
    if missing:
        raise ArtifactError(f"{file}: lacks weights {', '.join(missing[:3])}. {fix}")
    return shards


def _positive_or_zero(file: Path, where: str, value) -> None:
    if not _is_int(value) or value < 0:
        raise ArtifactError(f"{file}: {where} is {value!r}; expected a byte count. Re-run `llmc compile`.")


def _check_record(file: Path, shard: str, rec, fix: str) -> str:
    if not isinstance(rec, dict) or not isinstance(rec.get("name"), str):
        raise ArtifactError(f"{file}: a record of {shard} is malformed. {fix}")
    name = rec["name"]
    shape, dtype = rec.get("shape"), rec.get("dtype")
    if not (isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape)) or not _known_dtype(dtype):
        raise ArtifactError(f"{file}: tensor {name} has shape {shape!r} dtype {dtype!r}. {fix}")
    _positive_or_zero(file, f"tensor {name} byteOffset", rec.get("byteOffset"))
    _positive_or_zero(file, f"tensor {name} nbytes", rec.get("nbytes"))
    if rec["nbytes"] != math.prod(shape) * _dtype_bytes(dtype):
        raise ArtifactError(f"{file}: tensor {name}: {rec['nbytes']} bytes for shape {shape} {dtype}. {fix}")
    return name


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def library_fingerprint(path: Path) -> dict:
    """What the compiler records about the library it wrote: size and sha256."""
    return {"library_bytes": path.stat().st_size, "library_sha256": file_digest(path, "sha256")}


def check_library(folder: Path, config: dict) -> Path:
    """The library file: contained, complete (size, ELF header for .so); hashed by ``verify_artifact``."""
    file = folder / "llmc-config.json"
    library = contained_file(folder, config.get("library"), file, "library")
    if not library.is_file():
        raise ArtifactError(f"{library}: missing; the artifact is incomplete. Re-run `llmc compile`.")
    size = library.stat().st_size
    expected = config.get("library_bytes")
    if expected is not None and size != expected:
        raise ArtifactError(
            f"{library}: {size} bytes, but llmc-config.json records {expected} (truncated or replaced). "
            "Re-run `llmc compile`."
        )
    if library.suffix == ".so":
        with open(library, "rb") as f:
            if f.read(4) != ELF_MAGIC:
                raise ArtifactError(f"{library}: not an ELF shared library (corrupt). Re-run `llmc compile`.")
    return library


def verify_artifact(folder: Path, config: dict, force: bool = False) -> dict:
    """Check sizes, paths and (first load of these files, or ``force``) checksums; a summary dict."""
    folder = Path(folder)
    library = check_library(folder, config) if config.get("stage") == "compiled" else None
    shards = [] if config.get("random_weights") else read_shards(folder, config.get("params"), config.get("weights"))
    files = [folder / shard["dataPath"] for shard in shards] + ([library] if library else [])
    record = _verified_record(folder, files)
    hashed = force or record is None or not record.exists()
    if hashed:
        for shard in shards:
            actual = file_digest(folder / shard["dataPath"], "md5")
            if actual != shard["md5sum"]:
                raise ArtifactError(
                    f"{folder / shard['dataPath']}: checksum mismatch (md5 {actual}, tensor-cache.json records "
                    f"{shard['md5sum']}); the weights are corrupt. Re-run `llmc compile`."
                )
        sha256 = config.get("library_sha256")
        if library is not None and sha256 and file_digest(library, "sha256") != sha256:
            raise ArtifactError(
                f"{library}: sha256 differs from llmc-config.json's; the library is corrupt or replaced. "
                "Re-run `llmc compile`."
            )
        _remember(record)
    return {
        "shards": len(shards),
        "weight_bytes": sum(shard["nbytes"] for shard in shards),
        "library": library.name if library else None,
        "hashed": hashed,
    }


def _verified_record(folder: Path, files: list[Path]) -> Path | None:
    """The cache file that says these exact files (path, size, inode, mtime) were hashed and matched."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmc" / "verified"
    identity = [str(folder.resolve())]
    for path in files:
        info = path.stat()
        identity.append(f"{path.name}:{info.st_size}:{info.st_ino}:{info.st_mtime_ns}:{info.st_ctime_ns}")
    return cache / hashlib.sha256("\n".join(identity).encode()).hexdigest()


def _remember(record: Path | None) -> None:
    if record is None:
        return
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.touch()
    except OSError:
        pass  # an unwritable cache only means hashing again next time
