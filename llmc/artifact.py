"""The artifact folder: written under a temp name, renamed into place only when complete.

Layout: ``llmc-config.json``, tokenizer files, ``tensor-cache.json`` + ``params_shard_*.bin``
(TVM's tensor-cache format, which TVM's runtime and WebLLM read) and the model library.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from llmc.artifact_checks import check_config_schema, read_json
from llmc.errors import ArtifactError, CheckpointError, LlmcError

CONFIG_FILE = "llmc-config.json"
TENSOR_CACHE_FILE = "tensor-cache.json"
BUILD_INFO_FILE = "build-info.json"  # timings: not part of the artifact's identity
SHARD_CAP_BYTES = 32 << 20
FORMAT_VERSION = 1


@contextlib.contextmanager
def atomic_output_dir(out_dir: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside ``out_dir``; on success it replaces ``out_dir``, on failure it is removed.

    A lock beside ``out_dir`` makes a second writer fail at once; files and folders are fsync'ed before
    the final rename, so a crash after "wrote" cannot leave a half-written artifact under the real name.
    """
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out_dir):
        if out_dir.exists() and not force:
            raise ArtifactError(f"{out_dir}: already exists. Pass --force to overwrite it, or choose another -o.")
        remove_abandoned_temp_dirs(out_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{os.getpid()}-", dir=out_dir.parent))
        try:
            yield tmp
            tmp.chmod(0o755)  # mkdtemp makes it private; an artifact is meant to be shared
            _fsync_tree(tmp)
            if out_dir.exists():
                trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
                os.replace(out_dir, trash / "old")
                os.replace(tmp, out_dir)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(tmp, out_dir)
            _fsync_path(out_dir.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def disk_errors(out_dir: Path):
    """Turn a full disk into a clear error (the atomic folder is already gone)."""
    try:
        yield
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise LlmcError(
                f"{out_dir}: no space left on the device while writing; nothing was kept. Free space and re-run."
            ) from err
        raise


@contextlib.contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """An exclusive lock on ``.NAME.lock`` beside ``out_dir``; removed when released."""
    import fcntl

    lock = out_dir.parent / f".{out_dir.name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not lock.exists() or os.stat(lock).st_ino != os.fstat(fd).st_ino:
                raise BlockingIOError  # the holder removed it as we opened it: someone else owns the name now
        except BlockingIOError:
            raise ArtifactError(
                f"{out_dir}: another llmc is writing this folder (lock {lock.name}). "
                "Wait for it to finish or choose another -o."
            ) from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(lock)
    finally:
        os.close(fd)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            _fsync_path(Path(root) / name)
        _fsync_path(Path(root))


def remove_abandoned_temp_dirs(out_dir: Path) -> list[Path]:
    """Delete temp folders for ``out_dir`` left by runs that were killed (their owning process is gone)."""
    removed = []
    for candidate in out_dir.parent.glob(f".{out_dir.name}.tmp-*-*"):
        owner = candidate.name[len(f".{out_dir.name}.tmp-") :].split("-", 1)[0]
        if owner.isdigit() and not _process_alive(int(owner)):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TensorCacheWriter:
    """Append tensors one at a time into ~32 MB shards; ``finish`` writes ``tensor-cache.json``."""

    def __init__(self, folder: Path, shard_cap: int = SHARD_CAP_BYTES, source: str | None = None):
        """``source``: the checkpoint the tensors come from, named when one holds NaN or infinity."""
        self.folder, self.shard_cap, self.source = folder, shard_cap, source
        self.shards: list[dict] = []
        self._file = None
        self._md5 = None
        self.total_bytes = 0

    def _open_shard(self) -> None:
        self._close_shard()
        path = f"params_shard_{len(self.shards)}.bin"
        self._file = open(self.folder / path, "wb")  # noqa: SIM115 - stays open across add() calls
        self._md5 = hashlib.md5()
        self.shards.append({"dataPath": path, "format": "raw-shard", "nbytes": 0, "records": []})

    def _close_shard(self) -> None:
        if self._file is not None:
            self._file.close()
            self.shards[-1]["md5sum"] = self._md5.hexdigest()
            self._file = None

    def add(self, name: str, array: np.ndarray) -> None:
        data = np.ascontiguousarray(array)
        check_finite(name, data, self.source)
        nbytes = data.nbytes
        if self._file is None or (self.shards[-1]["nbytes"] and self.shards[-1]["nbytes"] + nbytes > self.shard_cap):
            self._open_shard()
        shard = self.shards[-1]
        shard["records"].append(
            {
                "name": name,
                "shape": list(data.shape),
                "dtype": str(data.dtype),
                "format": "raw",
                "nbytes": nbytes,
                "byteOffset": shard["nbytes"],
            }
        )
        buffer = memoryview(data.reshape(-1).view(np.uint8))
        self._file.write(buffer)
        self._md5.update(buffer)
        shard["nbytes"] += nbytes
        self.total_bytes += nbytes

    def finish(self, metadata: dict) -> None:
        self._close_shard()
        meta = {"ParamSize": sum(len(s["records"]) for s in self.shards), "ParamBytes": self.total_bytes, **metadata}
        (self.folder / TENSOR_CACHE_FILE).write_text(json.dumps({"metadata": meta, "records": self.shards}, indent=1))


def check_finite(name: str, data: np.ndarray, source: str | None, chunk: int = 1 << 22) -> None:
    """Refuse a float weight holding NaN or infinity (checked in bounded chunks)."""
    if data.dtype.kind != "f" and data.dtype.name != "bfloat16":
        return
    flat = data.reshape(-1)
    for start in range(0, flat.size, chunk):
        part = flat[start : start + chunk]
        if not np.isfinite(part.astype(np.float32, copy=False)).all():
            where = f"{source}: " if source else ""
            raise CheckpointError(
                f"{where}weight {name} holds NaN or infinity after conversion. The checkpoint is corrupt "
                "(or its values overflow this quantization's scale dtype)."
            )


def read_tensor_cache(folder: Path) -> Iterator[tuple[str, np.ndarray]]:
    """The arrays of a folder's tensor cache, in stored order (memory-mapped, one shard at a time)."""
    index = json.loads((folder / TENSOR_CACHE_FILE).read_text())
    for shard in index["records"]:
        data = np.memmap(folder / shard["dataPath"], dtype=np.uint8, mode="r")
        for rec in shard["records"]:
            raw = data[rec["byteOffset"] : rec["byteOffset"] + rec["nbytes"]]
            yield rec["name"], raw.view(rec["dtype"]).reshape(rec["shape"])


def write_config(folder: Path, config: dict) -> None:
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False))


def write_build_info(folder: Path, fields: dict) -> None:
    """Merge ``fields`` into ``build-info.json`` (never through a hard link into a weights folder)."""
    file = folder / BUILD_INFO_FILE
    info = json.loads(file.read_text()) if file.exists() else {}
    file.unlink(missing_ok=True)
    file.write_text(json.dumps({**info, **fields}, indent=2))


def read_config(folder: Path) -> dict:
    """Read an artifact's ``llmc-config.json`` with errors that say what to do; its schema is checked."""
    folder = Path(folder)
    file = folder / CONFIG_FILE
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: no such artifact folder. Create one with `llmc compile MODEL -o {folder}`.")
    if not file.exists():
        raise ArtifactError(f"{file}: missing; {folder} is not a complete llmc artifact. Re-run `llmc compile`.")
    config = read_json(file, "Re-run `llmc compile`.")
    if not isinstance(config, dict):
        raise ArtifactError(f"{file}: expected a JSON object. Re-run `llmc compile`.")
    if config.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{file}: artifact format {config.get('format_version')} is not {FORMAT_VERSION}; "
            "recompile it with this llmc."
        )
    check_config_schema(file, config)
    return config


def is_compiled(folder: Path) -> bool:
    """Whether ``folder`` is an artifact with a library (not a checkpoint, preset or weights folder)."""
    folder = Path(folder)
    return (folder / CONFIG_FILE).exists() and read_config(folder).get("stage") == "compiled"


def require_compiled(path: Path) -> None:
    """A model (a .gguf, a checkpoint, a preset, quantized weights) given where a compiled artifact is needed
    gets an error that says so and how to compile it."""
    compile_hint = f"Compile it first: `llmc compile {path} --target llvm -o dist/model`, then `llmc run dist/model`."
    if path.is_file():
        kind = "a GGUF model file" if path.suffix == ".gguf" else "a file"
        raise ArtifactError(f"{path}: {kind}, not a compiled artifact folder. {compile_hint}")
    if path.is_dir() and not (path / CONFIG_FILE).exists():
        if (path / "config.json").exists() or list(path.glob("*.safetensors")):
            raise ArtifactError(f"{path}: a model checkpoint folder, not a compiled artifact. {compile_hint}")
        raise ArtifactError(f"{path}: not an llmc artifact (no {CONFIG_FILE}). {compile_hint}")
    if not path.exists():
        from llmc.assets import PRESETS_DIR

        if (PRESETS_DIR / f"{path}.json").exists():
            raise ArtifactError(f"{path}: a model preset, not a compiled artifact folder. {compile_hint}")
        return  # read_config says: no such artifact folder
    if read_config(path).get("stage") != "compiled":
        raise ArtifactError(
            f"{path}: quantized weights without a model library. "
            f"Compile them: `llmc compile {path} --target llvm -o dist/model`."
        )
