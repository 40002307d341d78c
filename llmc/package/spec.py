"""CONFIG of ``llmc package``: the device, the models and their overrides, parsed and validated."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from llmc.errors import ConfigError
from llmc.memory import MIB, MemoryEstimate

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

    def summary(self) -> dict:
        """The ``llmc package --json`` object."""
        return {
            "output": str(self.output),
            "library": self.archive,
            "seconds": self.seconds,
            "warnings": self.warnings,
            "models": [
                {
                    "model_id": p.entry.model_id,
                    "model_lib": p.entry.system_lib_prefix,
                    "reused": p.reused,
                    "seconds": p.seconds,
                    "artifact": str(p.artifact),
                    "estimated_memory_bytes": p.memory.total_bytes,
                }
                for p in self.models
            ],
        }


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
            model_url=check_model_url(file, where, item.get("model_url")),
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


URL_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!&'()*+,;=%]+")


def check_model_url(file: Path, where: str, url) -> str | None:
    """An http(s) URL of RFC 3986 characters only: no quote, backslash, ``$``, space or control character can
    reach the Kotlin, Swift, C++ or JSON source it is pasted into (percent-encode such characters)."""
    from urllib.parse import urlsplit

    if url is None:
        return None
    if not isinstance(url, str) or len(url) > 2048 or not URL_CHARS.fullmatch(url):
        raise _fail(file, f"{where}.model_url {url!r} is not a URL (percent-encode quotes, spaces, $ and \\).")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # e.g. an unclosed [IPv6 literal
        host = None
    if host is None or parts.scheme not in ("http", "https"):
        raise _fail(file, f"{where}.model_url {url!r} must be an http:// or https:// URL with a host.")
    return url


def _model_path(config_file: Path, model: str) -> str:
    """Relative model paths are read from CONFIG's folder when they exist there."""
    candidate = config_file.parent / model
    if not model.startswith("hf://") and not Path(model).is_absolute() and candidate.exists():
        return str(candidate.resolve())
    return model
