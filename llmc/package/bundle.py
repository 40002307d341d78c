"""``llmc package CONFIG -o DIR``: phone app bundles (Android, iPhone) of one or more compiled models.

CONFIG (JSON, see ``configs/package/``) names the device and the models. Each model is compiled for
the device's target with its own system-lib prefix (reused from a cache when the content hash of
its inputs is unchanged); DIR then gets::

    lib/            the models' objects merged into libllmc_models.a (or per-model objects)
    bundle/         llmc-app-config.json + one folder per model_id (llmc-config.json, tokenizer, weights)
    android/ | ios/ the app project rendered from templates/android or templates/ios
    README.md       next steps for the phone developer
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import llmc
from llmc.artifact import CONFIG_FILE, TENSOR_CACHE_FILE, atomic_output_dir, read_config
from llmc.errors import ConfigError, LlmcError
from llmc.memory import MIB, estimate
from llmc.package.app import app_model_entry, render_app, render_readme
from llmc.package.spec import (
    APP_CONFIG_FILE,
    ARCHIVE_NAME,
    DEFAULT_CACHE,
    WEIGHT_FILES,
    ModelEntry,
    PackagedModel,
    PackageResult,
    PackageSpec,
    load_spec,
)


# ---------------------------------------------------------------------- input hash
class FileHashes:
    """sha256 of files, remembered by (path, size, mtime_ns) in the cache folder."""

    def __init__(self, cache_dir: Path):
        self.file = cache_dir / "file-hashes.json"
        try:
            self.known = json.loads(self.file.read_text())
        except (OSError, json.JSONDecodeError):
            self.known = {}

    def sha256(self, path: Path) -> str:
        stat = path.stat()
        key = str(path.resolve())
        stamp = [stat.st_size, stat.st_mtime_ns]
        hit = self.known.get(key)
        if hit and hit[:2] == stamp:
            return hit[2]
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        self.known[key] = [*stamp, digest.hexdigest()]
        return digest.hexdigest()

    def save(self) -> None:
        tmp = self.file.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.known))
        os.replace(tmp, self.file)


def _source_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.parts))


def _llmc_code_hash() -> str:
    """Hash of llmc's own sources: a changed compiler invalidates cached builds, not only a new version."""
    digest = hashlib.sha256()
    root = Path(llmc.__file__).resolve().parent
    for file in sorted(root.rglob("*.py")):
        digest.update(str(file.relative_to(root)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def input_hash(entry: ModelEntry, target: str, hashes: FileHashes) -> str:
    """Content hash of everything a compile of ``entry`` depends on."""
    from importlib.metadata import version

    from llmc.source import resolve

    source = resolve(entry.model)
    if source.format == "config":
        raise LlmcError(
            f"model {entry.model_id}: {entry.model} is an architecture-only preset without weights; "
            "package a checkpoint, a .gguf or a weights preset such as smollm2-135m."
        )
    files = [
        (str(f.relative_to(source.path)) if source.path.is_dir() else f.name, hashes.sha256(f))
        for f in _source_files(source.path)
    ]
    key = {
        "llmc": llmc.__version__,
        "llmc_code": _llmc_code_hash(),
        "tvm": version("apache-tvm"),
        "target": target,
        "quant": entry.quant,
        "prefix": entry.system_lib_prefix,
        "overrides": entry.overrides(),
        "preset": source.preset,
        "files": files,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------- build
def _compile_or_reuse(
    entry: ModelEntry, target: str, cache_dir: Path, key: str, quiet: bool, log: Callable[[str], None]
) -> tuple[Path, bool]:
    from llmc.compile import compile_model
    from llmc.plan import CompileOptions

    artifact = cache_dir / f"{entry.model_id}-{target.replace(':', '-')}-{key[:16]}"
    if (artifact / CONFIG_FILE).exists():
        try:
            if read_config(artifact).get("stage") == "compiled":
                log(f"{entry.model_id}: up to date, reusing {artifact}")
                return artifact, True
        except LlmcError:
            pass
    log(f"{entry.model_id}: compiling {entry.model} ({entry.quant}) for {target}")
    options = CompileOptions(
        target=target,
        quant=entry.quant,
        output=artifact,
        context_window=entry.context_window,
        prefill_chunk=entry.prefill_chunk,
        max_batch_size=entry.max_batch_size,
        quantize_embeddings=not entry.fp_embeddings,
        force=True,
        quiet=quiet,
        system_lib_prefix=entry.system_lib_prefix,
    )
    return compile_model(entry.model, options), False


def build_package(
    config_file: Path,
    output: Path,
    force: bool = False,
    cache_dir: Path | None = None,
    quiet: bool = False,
    log: Callable[[str], None] = print,
) -> PackageResult:
    """Compile (or reuse) every model of CONFIG and write the bundle folder ``output`` atomically."""
    started = time.time()
    spec = load_spec(config_file)
    output = Path(output)
    if output.exists() and not force:
        raise LlmcError(f"{output}: already exists. Pass --force to replace it, or choose another -o.")
    cache_dir = Path(cache_dir or os.environ.get("LLMC_CACHE_DIR") or DEFAULT_CACHE).expanduser() / "artifacts"
    cache_dir.mkdir(parents=True, exist_ok=True)
    hashes = FileHashes(cache_dir)
    keys = []
    for index, entry in enumerate(spec.models):  # every MODEL resolves before anything is compiled
        try:
            keys.append(input_hash(entry, spec.target, hashes))
        except LlmcError as err:
            raise ConfigError(f"{spec.file}: models[{index}] ({entry.model_id}): {err}") from err
    hashes.save()
    packaged: list[PackagedModel] = []
    for entry, key in zip(spec.models, keys):
        t0 = time.time()
        artifact, reused = _compile_or_reuse(entry, spec.target, cache_dir, key, quiet, log)
        config = read_config(artifact)
        memory = estimate(config)  # one sequence of the context window, as the app's engine allocates
        packaged.append(PackagedModel(entry, artifact, config, memory, reused, round(time.time() - t0, 2)))
    warnings = _budget_warnings(spec, packaged)

    with atomic_output_dir(output, force) as tmp:
        archive, archiver = _write_libs(spec, packaged, tmp / "lib")
        _write_bundle(spec, packaged, tmp / "bundle", archive)
        render_app(spec, packaged, tmp, archive)
        (tmp / "README.md").write_text(render_readme(spec, packaged, archive, archiver))
    return PackageResult(output, packaged, archive, archiver, warnings, round(time.time() - started, 2))


def _budget_warnings(spec: PackageSpec, packaged: list[PackagedModel]) -> list[str]:
    if spec.memory_budget_bytes is None:
        return []
    return [
        f"model {p.entry.model_id} needs an estimated {p.memory.describe()}, over the memory budget of "
        f"{spec.memory_budget_bytes / MIB:.4g} MiB in {spec.file}; lower its context_window or use a smaller quant."
        for p in packaged
        if p.memory.total_bytes > spec.memory_budget_bytes
    ]


def _write_libs(spec: PackageSpec, packaged: list[PackagedModel], lib: Path) -> tuple[str | None, str | None]:
    """One static archive of every model's objects when an archiver is installed, else objects per model."""
    from llmc.package.staticlib import extract_objects, make_archive

    objects_dir = lib / "objects"
    objects = []
    for p in packaged:
        library = p.artifact / p.config["library"]
        objects += extract_objects(library, p.entry.system_lib_prefix, objects_dir / p.entry.model_id)
    archiver = make_archive(objects, lib / ARCHIVE_NAME, spec.device.darwin)
    if archiver is None:
        return None, None
    shutil.rmtree(objects_dir)
    return f"lib/{ARCHIVE_NAME}", archiver


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _write_bundle(spec: PackageSpec, packaged: list[PackagedModel], bundle: Path, archive: str | None) -> None:
    bundle.mkdir(parents=True)
    entries = []
    for p in packaged:
        folder = bundle / p.entry.model_id
        folder.mkdir()
        for file in sorted(p.artifact.iterdir()):
            if not file.is_file() or file.stem == Path(p.config["library"]).stem:  # the library, its kernel source
                continue
            is_weight = file.name.startswith(WEIGHT_FILES) or file.name == TENSOR_CACHE_FILE
            if is_weight and not p.entry.bundle_weights:
                continue
            _link_or_copy(file, folder / file.name)
        entries.append(app_model_entry(spec, p))
    app_config = {
        "app_name": spec.app_name,
        "app_id": spec.app_id,
        "device": spec.device.name,
        "target": spec.target,
        "runtime_device": packaged[0].config["device"],
        "tvm_version": packaged[0].config.get("tvm_version"),
        "llmc_version": llmc.__version__,
        "model_library": archive,
        "memory_budget_bytes": spec.memory_budget_bytes,
        "models": entries,
    }
    (bundle / APP_CONFIG_FILE).write_text(json.dumps(app_config, indent=2))
