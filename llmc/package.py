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
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import llmc
from llmc.artifact import CONFIG_FILE, TENSOR_CACHE_FILE, atomic_output_dir, read_config
from llmc.errors import ConfigError, LlmcError
from llmc.memory import MIB, MemoryEstimate, estimate

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
APP_CONFIG_FILE = "llmc-app-config.json"
ARCHIVE_NAME = "libllmc_models.a"
DEFAULT_QUANT = "q4f16_1"
DEFAULT_CACHE = Path("~/.cache/llmc/package")


@dataclass(frozen=True)
class Device:
    """A phone platform: the targets it accepts and the app template it gets."""

    name: str
    targets: tuple[str, ...]  # the first is the default
    template: str
    native_dir: str  # where templates/common (llmc's C++ engine on TVM's runtime) goes in the project
    darwin: bool  # Mach-O objects (ar format, force_load) vs ELF


DEVICES = {
    "android": Device("android", ("android", "android:adreno"), "android", "app/src/main/cpp", darwin=False),
    "iphone": Device("iphone", ("iphone",), "ios", "Sources/LLMCRuntime", darwin=True),
}
TOP_KEYS = {"device", "target", "models", "memory_budget_mb", "app_name", "app_id", "description"}
MODEL_KEYS = {
    "model",
    "model_id",
    "quant",
    "context_window",
    "prefill_chunk",
    "max_batch_size",
    "bundle_weights",
    "model_url",
    "fp_embeddings",
}
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
APP_ID = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+")
WEIGHT_FILES = ("params_shard_",)


@dataclass
class ModelEntry:
    """One model of a package, as CONFIG declares it."""

    model: str
    model_id: str
    quant: str = DEFAULT_QUANT
    context_window: int | None = None
    prefill_chunk: int | None = None
    max_batch_size: int = 1  # a phone app serves one conversation
    bundle_weights: bool = True
    model_url: str | None = None
    fp_embeddings: bool = False
    system_lib_prefix: str = ""

    def overrides(self) -> dict:
        return {
            "context_window": self.context_window,
            "prefill_chunk": self.prefill_chunk,
            "max_batch_size": self.max_batch_size,
            "fp_embeddings": self.fp_embeddings,
        }


@dataclass
class PackageSpec:
    """A parsed, validated CONFIG."""

    file: Path
    device: Device
    target: str
    models: list[ModelEntry]
    memory_budget_bytes: int | None = None
    app_name: str = "LlmcChat"
    app_id: str = "ai.llmc.chat"


@dataclass
class PackagedModel:
    entry: ModelEntry
    artifact: Path
    config: dict
    memory: MemoryEstimate
    reused: bool
    seconds: float


@dataclass
class PackageResult:
    output: Path
    models: list[PackagedModel]
    archive: str | None  # the static archive's path inside output, None when objects are left per model
    archiver: str | None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


# ---------------------------------------------------------------------- CONFIG
def _fail(file: Path, message: str) -> ConfigError:
    return ConfigError(f"{file}: {message}")


def _positive_int(file: Path, where: str, value, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(file, f"{where} must be a positive integer, not {value!r}.")
    return value


def load_spec(file: Path) -> PackageSpec:
    """Read and check CONFIG; every problem is reported before anything is compiled."""
    from llmc.compiler.targets import default_system_lib_prefix
    from llmc.quant import QUANTS

    file = Path(file)
    if not file.is_file():
        raise ConfigError(f"{file}: no such package config. See configs/package/android-example.json for one.")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise _fail(file, f"not valid JSON ({err}).") from err
    if not isinstance(data, dict):
        raise _fail(file, "must hold a JSON object with 'device' and 'models'.")
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise _fail(file, f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(TOP_KEYS))}.")
    device_name = data.get("device")
    if device_name not in DEVICES:
        raise _fail(file, f"unknown device {device_name!r}; use one of: {', '.join(DEVICES)}.")
    device = DEVICES[device_name]
    target = data.get("target", device.targets[0])
    if target not in device.targets:
        raise _fail(file, f"target {target!r} does not run on {device.name}; use one of: {', '.join(device.targets)}.")
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise _fail(file, '\'models\' must be a non-empty list of {"model": ..., "model_id": ...} objects.')
    budget_mb = data.get("memory_budget_mb")
    if budget_mb is not None and (
        isinstance(budget_mb, bool) or not isinstance(budget_mb, int | float) or budget_mb <= 0
    ):
        raise _fail(file, f"memory_budget_mb must be a positive number of MiB, not {budget_mb!r}.")
    app_id = data.get("app_id", "ai.llmc.chat")
    if not isinstance(app_id, str) or not APP_ID.fullmatch(app_id):
        raise _fail(file, f"app_id {app_id!r} must be a dotted identifier such as com.example.chat.")
    app_name = data.get("app_name", "LlmcChat")
    if not isinstance(app_name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", app_name):
        raise _fail(file, f"app_name {app_name!r} must be letters and digits, starting with a letter.")

    entries: list[ModelEntry] = []
    seen_ids: dict[str, int] = {}
    seen_prefixes: dict[str, str] = {}
    for index, item in enumerate(models):
        where = f"models[{index}]"
        if not isinstance(item, dict):
            raise _fail(file, f"{where} must be an object with 'model' and 'model_id'.")
        unknown = sorted(set(item) - MODEL_KEYS)
        if unknown:
            raise _fail(file, f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(MODEL_KEYS))}.")
        if not isinstance(item.get("model"), str) or not item["model"]:
            raise _fail(file, f"{where}: 'model' (a checkpoint folder, .gguf, hf://org/name or preset) is required.")
        model_id = item.get("model_id")
        if not isinstance(model_id, str) or not MODEL_ID.fullmatch(model_id):
            raise _fail(
                file,
                f"{where}: model_id {model_id!r} must be letters, digits, '.', '_' or '-' (at most 64 characters).",
            )
        if model_id in seen_ids:
            raise _fail(
                file, f"duplicate model_id {model_id!r} (models[{seen_ids[model_id]}] and {where}); make each unique."
            )
        seen_ids[model_id] = index
        quant = item.get("quant", DEFAULT_QUANT)
        if quant not in QUANTS:
            raise _fail(file, f"{where}: unknown quant {quant!r}; known: {', '.join(QUANTS)}.")
        for flag in ("bundle_weights", "fp_embeddings"):
            if not isinstance(item.get(flag, False), bool):
                raise _fail(file, f"{where}: {flag} must be true or false.")
        entry = ModelEntry(
            model=_model_path(file, item["model"]),
            model_id=model_id,
            quant=quant,
            context_window=_positive_int(file, f"{where}.context_window", item.get("context_window")),
            prefill_chunk=_positive_int(file, f"{where}.prefill_chunk", item.get("prefill_chunk")),
            max_batch_size=_positive_int(file, f"{where}.max_batch_size", item.get("max_batch_size", 1), False),
            bundle_weights=item.get("bundle_weights", True),
            model_url=item.get("model_url"),
            fp_embeddings=item.get("fp_embeddings", False),
        )
        if not entry.bundle_weights and not entry.model_url:
            raise _fail(file, f"{where}: bundle_weights is false, so give 'model_url' (where the app downloads them).")
        entry.system_lib_prefix = default_system_lib_prefix(model_id, quant)
        if entry.system_lib_prefix in seen_prefixes:
            raise _fail(
                file,
                f"model_ids {seen_prefixes[entry.system_lib_prefix]!r} and {model_id!r} with {quant} give the same "
                f"library symbol prefix {entry.system_lib_prefix!r}; rename one.",
            )
        seen_prefixes[entry.system_lib_prefix] = model_id
        entries.append(entry)
    return PackageSpec(
        file=file,
        device=device,
        target=target,
        models=entries,
        memory_budget_bytes=int(budget_mb * MIB) if budget_mb is not None else None,
        app_name=app_name,
        app_id=app_id,
    )


def _model_path(config_file: Path, model: str) -> str:
    """Relative model paths are read from CONFIG's folder when they exist there."""
    candidate = config_file.parent / model
    if not model.startswith("hf://") and not Path(model).is_absolute() and candidate.exists():
        return str(candidate.resolve())
    return model


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
    from llmc.compile import CompileOptions, compile_model

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
        (tmp / "README.md").write_text(_render_readme(spec, packaged, archive, archiver))
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
    from llmc.staticlib import extract_objects, make_archive

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
        entries.append(_app_model_entry(spec, p))
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


def _app_model_entry(spec: PackageSpec, p: PackagedModel) -> dict:
    fits = None if spec.memory_budget_bytes is None else p.memory.total_bytes <= spec.memory_budget_bytes
    return {
        "model_id": p.entry.model_id,
        "model_lib": p.entry.system_lib_prefix,
        "model_path": p.entry.model_id,
        "bundle_weights": p.entry.bundle_weights,
        "model_url": p.entry.model_url,
        "quantization": p.config["quantization"],
        "context_window": p.config["context_window"],
        "prefill_chunk": p.config["prefill_chunk"],
        "max_batch_size": p.config["max_batch_size"],
        "estimated_memory_bytes": p.memory.total_bytes,
        "memory": p.memory.as_dict(),
        "fits_memory_budget": fits,
    }


# ---------------------------------------------------------------------- templates
def _template_context(spec: PackageSpec, packaged: list[PackagedModel], archive: str | None) -> dict:
    return {
        "app_name": spec.app_name,
        "app_id": spec.app_id,
        "device": spec.device.name,
        "target": spec.target,
        "runtime_device": packaged[0].config["device"],
        "archive": archive,
        "archive_name": ARCHIVE_NAME,
        "app_config_file": APP_CONFIG_FILE,
        "tvm_version": packaged[0].config.get("tvm_version"),
        "llmc_version": llmc.__version__,
        "models": [_app_model_entry(spec, p) | {"symbol": _identifier(p.entry.model_id)} for p in packaged],
    }


def _identifier(model_id: str) -> str:
    parts = re.split(r"[^A-Za-z0-9]+", model_id)
    name = parts[0].lower() + "".join(part[:1].upper() + part[1:] for part in parts[1:])
    return name if name[:1].isalpha() else f"m{name}"


def render_app(spec: PackageSpec, packaged: list[PackagedModel], out: Path, archive: str | None) -> Path:
    """Render ``templates/<device>`` into ``out/<device>``: ``*.j2`` through jinja2, other files copied.

    ``__app_id__`` in a path becomes the app id as folders (``ai/llmc/chat``).
    """
    import jinja2

    source = TEMPLATES_DIR / spec.device.template
    if not source.is_dir():
        raise LlmcError(f"{source}: app template missing; reinstall llmc from a full clone.")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    context = _template_context(spec, packaged, archive)
    dest_root = out / spec.device.template
    for file in sorted(source.rglob("*")):
        if not file.is_file():
            continue
        relative = str(file.relative_to(source)).replace("__app_id__", spec.app_id.replace(".", "/"))
        dest = dest_root / relative.removesuffix(".j2")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if file.suffix == ".j2":
            template = env.get_template(file.relative_to(TEMPLATES_DIR).as_posix())
            dest.write_text(template.render(**context))
        else:
            shutil.copy2(file, dest)
    for file in sorted((TEMPLATES_DIR / "common").iterdir()):
        shutil.copy2(file, dest_root / spec.device.native_dir / file.name)
    return dest_root


def _render_readme(spec: PackageSpec, packaged: list[PackagedModel], archive: str | None, archiver: str | None) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)), undefined=jinja2.StrictUndefined)
    context = _template_context(spec, packaged, archive) | {
        "archiver": archiver,
        "memory": {p.entry.model_id: p.memory.describe() for p in packaged},
        "config_file": spec.file.name,
    }
    return env.get_template(f"bundle/README-{spec.device.template}.md.j2").render(**context) + "\n"
