"""``llmc quantize`` and ``llmc compile``: MODEL -> weights folder -> artifact folder, each written atomically.

A weights folder (``llmc quantize``) holds converted weights, tokenizer and ``llmc-config.json``;
``llmc compile`` accepts one as MODEL and only builds the library, linking the weights in.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

import llmc
from llmc.artifact import (
    BUILD_INFO_FILE,
    CONFIG_FILE,
    FORMAT_VERSION,
    TENSOR_CACHE_FILE,
    TensorCacheWriter,
    atomic_output_dir,
    read_config,
    read_tensor_cache,
    write_build_info,
    write_config,
)
from llmc.artifact_checks import library_fingerprint
from llmc.checkpoint import open_checkpoint
from llmc.checkpoint.config_checks import check_hf_config, check_model_config
from llmc.checkpoint.tokenizer_files import write_tokenizer_files
from llmc.convert import convert_weights
from llmc.errors import ArtifactError, ConfigError, LlmcError
from llmc.models import MODELS, ModelFamily, family_for
from llmc.models.base import ModelConfig
from llmc.quant import KEEP_QUANT, QuantScheme, get_quant
from llmc.source import ResolvedSource, resolve

DEFAULT_CONTEXT_WINDOW = 4096
DEFAULT_PREFILL_CHUNK = 512
DEFAULT_MAX_BATCH = 8
DEFAULT_QUANT = "q0f32"


@dataclass
class CompileOptions:
    """Everything ``llmc compile`` / ``llmc quantize`` take besides MODEL."""

    target: str = "llvm"
    quant: str | None = None  # default: the weights folder's scheme, else q0f32
    output: Path | None = None
    context_window: int | None = None
    prefill_chunk: int | None = None
    max_batch_size: int = DEFAULT_MAX_BATCH
    quantize_embeddings: bool = True
    random_weights: bool = False  # no weights: the runtime draws them from a seed (benchmarks)
    force: bool = False
    quiet: bool = False
    debug_dump: Path | None = None
    opt_level: int = 2  # llmc.compiler.pipeline: O0 (no fusion/schedules) .. O3 (+ CUDA graphs)
    system_lib_prefix: str | None = None  # phone targets: symbol prefix [default: from model name + quant]
    cpu_matmul: str = "int8"  # x86 CPUs: "int8" (integer dot products, llmc.quant.int_dot) or "float" (exact)


@dataclass
class ModelPlan:
    """What to build: family, architecture config and weight format."""

    family: ModelFamily
    config: ModelConfig
    scheme: QuantScheme
    quantize_embeddings: bool
    int_dot: bool = True  # llmc's CPU kernels (integer matmuls, attention, SiLU) where the target allows
    quantized: set[str] = field(default_factory=set)
    dtype: str | None = None  # compute dtype, set by module(): float32 on CPUs
    isa: str | None = None  # CPU integer-dot instruction set, set by module(); None: float path

    def compute_dtype(self, target, portable: bool = False) -> str:
        """The scheme's dtype for a weights folder (``portable``), else what ``target`` computes in."""
        return self.scheme.model_dtype if portable else self.scheme.compute_dtype(target)

    def float_module(self, target, portable: bool = False):
        module = self.family.module_class(self.config)
        if not self.int_dot:  # the reference path: TVM's own kernels throughout
            module.use_tvm_cpu_kernels()
        dtype = self.compute_dtype(target, portable)
        if dtype != "float32":
            module.to(dtype)
        return module

    def module(self, target, portable: bool = False):
        """The Relax module to export: float layers cast, then swapped for quantized ones.

        ``portable``: the target-independent weight format of a weights folder (scheme dtype, no repack).
        """
        module = self.float_module(target, portable)
        self.dtype = self.compute_dtype(target, portable)
        self.isa = None if portable or not self.int_dot else self.scheme.int_dot_isa(target)
        self.quantized = self.scheme.quantize_module(module, self.quantize_embeddings, self.isa, self.dtype)
        return module


def default_output(model: str, quant: str, target: str | None) -> Path:
    stem = Path(model.rstrip("/")).name.removesuffix(".gguf") or "model"
    return Path("dist") / (f"{stem}-{quant}-{target}" if target else f"{stem}-{quant}")


def apply_sizes(config: ModelConfig, options: CompileOptions, preset: dict) -> None:
    """Context window / prefill chunk / batch bounds: flags, then preset, then defaults."""
    window = (
        options.context_window
        or preset.get("context_window")
        or min(config.max_position_embeddings, DEFAULT_CONTEXT_WINDOW)
    )
    chunk = options.prefill_chunk or preset.get("prefill_chunk") or DEFAULT_PREFILL_CHUNK
    if window < 16:
        raise ConfigError(f"--context-window {window} is too small (minimum 16).")
    if chunk < 1:
        raise ConfigError(f"--prefill-chunk {chunk} must be positive.")
    if options.max_batch_size < 1:
        raise ConfigError(f"--max-batch-size {options.max_batch_size} must be positive.")
    # a sliding-window model's chunk stays within its window (attention within a chunk has no window)
    config.context_window, config.prefill_chunk = window, min(chunk, window, config.max_prefill_chunk() or chunk)
    config.max_batch_size = options.max_batch_size


def plan_from_config(hf_config: dict, source: ResolvedSource, options: CompileOptions, reader=None) -> ModelPlan:
    """The plan for a model's ``config.json`` (dict): family, parsed config with sizes, scheme
    (``--quant keep``, the default for GGUF files: bound to ``reader``'s tensor formats)."""
    label = str(source.path / "config.json") if source.format == "hf" else str(source.path)
    check_hf_config(hf_config, label)
    family = family_for(hf_config, str(source.path))
    config = family.parse_config(hf_config, str(source.path))
    check_model_config(config, label)
    apply_sizes(config, options, source.preset)
    scheme = get_quant(options.quant or default_quant(source))
    if hasattr(scheme, "prepare"):  # per-parameter schemes (keep, GGML encoders): bound to this checkpoint
        scheme = scheme.prepare(reader, family.weight_sources(config), source.path)
    return ModelPlan(family, config, scheme, options.quantize_embeddings, _int_dot(options))


def default_quant(source: ResolvedSource) -> str:
    """``keep`` for GGUF files (their own formats, lossless), else q0f32."""
    return KEEP_QUANT if source.format == "gguf" else DEFAULT_QUANT


def _int_dot(options: CompileOptions) -> bool:
    if options.cpu_matmul not in ("int8", "float"):
        raise ConfigError(f"--cpu-matmul {options.cpu_matmul!r}: use int8 or float.")
    return options.cpu_matmul == "int8"


def plan_model(model: str, options: CompileOptions) -> ModelPlan:
    """The plan ``compile_model`` makes for MODEL (a checkpoint, .gguf or preset), without reading weights."""
    source = resolve(model)
    reader = open_checkpoint(source)
    return plan_from_config(reader.config, source, options, reader)


def _model_fields(source: ResolvedSource, plan: ModelPlan) -> dict:
    """The llmc-config.json fields every weights or artifact folder carries."""
    return {
        "format_version": FORMAT_VERSION,
        "llmc_version": llmc.__version__,
        "source": {"spec": source.spec, "format": source.format, "path": str(source.path)},
        "model": asdict(plan.config),
        "quantization": plan.scheme.name,
        "quantize_embeddings": plan.quantize_embeddings,
        "dtype": plan.dtype or plan.scheme.model_dtype,
        "int_dot": plan.isa,
        "context_window": plan.config.context_window,
        "prefill_chunk": plan.config.prefill_chunk,
        "max_batch_size": plan.config.max_batch_size,
        **(plan.scheme.record() if hasattr(plan.scheme, "record") else {}),
    }


def _describe_random_weights(source: ResolvedSource, plan: ModelPlan, named_params) -> dict:
    """Config fields for an artifact without weights: shapes and dtypes to draw them from at load time."""
    specs = [[name, [int(d) for d in p.shape], p.dtype] for name, p in named_params]
    return {
        **_model_fields(source, plan),
        "random_weights": True,
        "param_specs": specs,
        "bits_per_param": plan.scheme.bits_per_param,
        "tokenizer": {"has_tokenizer": False, "eos_token_ids": []},
    }


def _write_weights(source: ResolvedSource, reader, plan: ModelPlan, target, folder: Path, quiet: bool) -> dict:
    """Converted weights + tokenizer into ``folder``; returns the config fields that describe them."""
    started = time.time()
    writer = TensorCacheWriter(folder, source=str(source.path))
    convert_weights(reader, plan, target, writer, quiet)
    writer.finish({"quantization": plan.scheme.name, "model_type": plan.config.model_type})
    fields = {
        **_model_fields(source, plan),
        "weights": [rec["name"] for shard in writer.shards for rec in shard["records"]],
        "param_bytes": writer.total_bytes,
        "bits_per_param": plan.scheme.bits_per_param,
        "tokenizer": write_tokenizer_files(reader, folder),
    }
    write_build_info(folder, {"convert_seconds": round(time.time() - started, 2)})  # outside the identity
    return fields


@contextlib.contextmanager
def _disk_errors(out_dir: Path):
    """Turn a full disk into a clear error (the atomic folder is already gone)."""
    try:
        yield
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise LlmcError(
                f"{out_dir}: no space left on the device while writing; nothing was kept. Free space and re-run."
            ) from err
        raise


def quantize_model(model: str, options: CompileOptions) -> Path:
    """Convert MODEL's weights to ``options.quant``: a weights folder that ``compile`` accepts."""
    from llmc.compiler.targets import get_target

    source = resolve(model)
    scheme = get_quant(options.quant or default_quant(source))
    if source.format == "llmc":
        raise ConfigError(f"{source.path}: already converted weights; quantize the original checkpoint instead.")
    reader = open_checkpoint(source)
    plan = plan_from_config(reader.config, source, options, reader)
    target = get_target("llvm").tvm_target()  # any target: only the module's parameter list is used
    plan.module(target, portable=True)
    out_dir = options.output or default_output(model, scheme.name, None)
    with interrupt_flag(), _disk_errors(out_dir), atomic_output_dir(out_dir, options.force) as tmp:
        write_config(tmp, {**_write_weights(source, reader, plan, target, tmp, options.quiet), "stage": "weights"})
    return Path(out_dir)


# ---------------------------------------------------------------------- compile
def _plan_from_weights(folder: Path, options: CompileOptions) -> tuple[ModelPlan, dict]:
    stored = read_config(folder)
    if options.quant and options.quant != stored["quantization"]:
        raise ConfigError(
            f"{folder}: holds {stored['quantization']} weights; drop --quant or pass --quant {stored['quantization']} "
            "(to re-quantize, start from the original checkpoint)."
        )
    model = dict(stored["model"])
    if model["model_type"] not in MODELS:
        raise ConfigError(f"{folder}: model_type {model['model_type']!r} is not supported by this llmc.")
    config = MODELS[model["model_type"]].config_class(**model)
    if options.context_window is None:
        options.context_window = stored["context_window"]
    if options.prefill_chunk is None:
        options.prefill_chunk = stored["prefill_chunk"]
    apply_sizes(config, options, {})
    scheme = get_quant(stored["quantization"])
    if hasattr(scheme, "with_stored"):  # keep: the per-tensor formats recorded at conversion
        scheme = scheme.with_stored(stored)
    plan = ModelPlan(
        MODELS[config.model_type],
        config,
        scheme,
        stored.get("quantize_embeddings", True),
        _int_dot(options),
    )
    return plan, stored


def _stored_layout_fits(stored: dict, plan: ModelPlan) -> bool:
    """Whether a weights folder's arrays are already what the module for this target loads."""
    return stored.get("int_dot") == plan.isa and stored.get("dtype", plan.scheme.model_dtype) == plan.dtype


def _relayout_weights(src: Path, dst: Path, plan: ModelPlan, quiet: bool) -> dict:
    """Rewrite a weights folder's tensor cache into ``dst`` in the target's layout (CPU repack, float32)."""
    writer = TensorCacheWriter(dst)
    with tqdm(desc=f"relayout {plan.scheme.name}", unit="tensor", disable=quiet or None) as bar:
        for out_name, out in plan.scheme.relayout_stream(read_tensor_cache(src), plan.dtype, plan.isa is not None):
            writer.add(out_name, out)
            bar.update(1)
    writer.finish({"quantization": plan.scheme.name, "model_type": plan.config.model_type})
    return {
        "param_bytes": writer.total_bytes,
        "weights": [rec["name"] for shard in writer.shards for rec in shard["records"]],  # names change with layout
    }


def _link_weights(src: Path, dst: Path, weights: bool = True) -> None:
    """Hard-link (or copy) the weight and tokenizer files of a weights folder into ``dst``
    (``weights=False``: tokenizer files only, the weights are rewritten)."""
    for file in sorted(src.iterdir()):
        if file.name in (CONFIG_FILE, BUILD_INFO_FILE) or not file.is_file() or file.suffix in (".so", ".tar", ".wasm"):
            continue
        if not weights and (file.name == TENSOR_CACHE_FILE or file.name.startswith("params_shard_")):
            continue
        try:
            os.link(file, dst / file.name)
        except OSError:
            shutil.copy2(file, dst / file.name)


def compile_model(model: str, options: CompileOptions) -> Path:
    """MODEL (checkpoint or weights folder) -> artifact folder with the library for ``options.target``."""
    from llmc.compiler.build import build_module, compile_library
    from llmc.compiler.memory_plan import record_static_plan
    from llmc.compiler.targets import get_target

    preset_target = get_target(options.target)
    if options.quant:
        get_quant(options.quant)
    _system_lib_prefix(preset_target, options, model, "")  # bad --system-lib-prefix: fail before any work
    source = resolve(model)
    target = preset_target.tvm_target()
    random_weights = options.random_weights or source.format == "config"
    if source.format == "llmc":
        plan, stored = _plan_from_weights(source.path, options)
    elif random_weights:
        reader = None if source.format == "config" else open_checkpoint(source)
        hf_config = source.preset["config"] if reader is None else reader.config
        plan, stored = plan_from_config(hf_config, source, options, reader), None
    else:
        reader = open_checkpoint(source)
        plan, stored = plan_from_config(reader.config, source, options, reader), None
    mod, named_params = build_module(plan.module(target), target)
    if stored is not None:
        expected = [plan.scheme.portable_name(name) for name, _ in named_params]
        _check_weights_match(source.path, stored["weights"], expected)
    out_dir = options.output or default_output(model, plan.scheme.name, preset_target.name)
    prefix = _system_lib_prefix(preset_target, options, model, plan.scheme.name)

    started = time.time()
    with interrupt_flag(), _disk_errors(out_dir), atomic_output_dir(out_dir, options.force) as tmp:
        if random_weights:
            weights = _describe_random_weights(source, plan, named_params)
        elif stored is None:
            weights = _write_weights(source, reader, plan, target, tmp, options.quiet)
        else:
            fits = _stored_layout_fits(stored, plan)
            _link_weights(source.path, tmp, weights=fits)
            if not fits:  # e.g. fp16 / standard-layout weights for a CPU
                stored = {**stored, **_relayout_weights(source.path, tmp, plan, options.quiet)}
            weights = {
                **stored,
                "dtype": plan.dtype,
                "int_dot": plan.isa,
                "model": asdict(plan.config),
                "context_window": plan.config.context_window,
                "prefill_chunk": plan.config.prefill_chunk,
                "max_batch_size": plan.config.max_batch_size,
            }
            weights.pop("stage", None)
        library = f"model-{preset_target.name.replace(':', '-').replace('+', '-')}{preset_target.library_suffix}"
        with record_static_plan() as static_plan:  # activation bytes per function, for memory estimates
            _build_with_progress(compile_library, mod, preset_target, tmp / library, options, prefix)
        fingerprint = library_fingerprint(tmp / library) if (tmp / library).is_file() else {}
        write_config(
            tmp,
            {
                **weights,
                "stage": "compiled",
                "tvm_version": _tvm_version(),
                "target": preset_target.name,
                "device": preset_target.device,
                **({"cuda_archs": list(preset_target.cuda_archs)} if preset_target.device == "cuda" else {}),
                "library": library,
                **fingerprint,
                "runs_on": preset_target.backend.runs_on(preset_target, library),
                "system_lib_prefix": prefix,
                "params": [name for name, _ in named_params],
                "opt_level": options.opt_level,
                "static_plan_bytes": static_plan,
            },
        )
        write_build_info(tmp, {"compile_seconds": round(time.time() - started, 2)})  # outside the identity
    return Path(out_dir)


@contextlib.contextmanager
def compile_temporary(model: str, options: CompileOptions) -> Iterator[tuple[Path, float]]:
    """MODEL compiled into a temporary folder (``options.output`` is ignored), removed on exit;
    yields the artifact and the compile seconds."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="llmc-") as tmp:
        started = time.time()
        artifact = compile_model(model, replace(options, output=Path(tmp) / "model"))
        yield artifact, round(time.time() - started, 2)


def _check_weights_match(folder: Path, stored: list[str], expected: list[str]) -> None:
    missing = sorted(set(expected) - set(stored))
    if missing:
        raise ArtifactError(
            f"{folder}: weights lack {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}; "
            "they were converted by another llmc version. Re-run `llmc quantize`."
        )


def _system_lib_prefix(preset_target, options: CompileOptions, model: str, quant: str) -> str | None:
    """The symbol prefix of a system-lib (phone) build: ``--system-lib-prefix`` or one from model + quant."""
    from llmc.compiler.targets import check_system_lib_prefix, default_system_lib_prefix

    if not preset_target.system_lib:
        if options.system_lib_prefix is not None:
            raise ConfigError(
                f"--system-lib-prefix applies to static-library targets (android, android:adreno, iphone), "
                f"not {preset_target.name}; drop it."
            )
        return None
    if options.system_lib_prefix is not None:
        return check_system_lib_prefix(options.system_lib_prefix)
    name = Path(model.rstrip("/")).name.removesuffix(".gguf") or "model"
    return default_system_lib_prefix(name, quant)


def _build_with_progress(
    compile_library, mod, preset_target, library: Path, options: CompileOptions, prefix: str | None
) -> None:
    with (
        tqdm(total=1, desc=f"build {preset_target.name}", unit="library", disable=options.quiet or None) as bar,
        interrupt_flag() as interrupted,
    ):
        try:
            compile_library(mod, preset_target, library, options.debug_dump, options.opt_level, prefix)
        except LlmcError:
            raise
        except Exception as err:  # TVM's errors carry long C++ traces; keep the first line
            if interrupted or "KeyboardInterrupt" in str(err):  # a signal TVM turned into its own error
                raise KeyboardInterrupt from err
            first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
            raise LlmcError(
                f"TVM failed to build the library for target {preset_target.name}: {first}. "
                "Re-run with --verbose for the full trace."
            ) from err
        bar.update(1)


@contextlib.contextmanager
def interrupt_flag() -> Iterator[list]:
    """SIGINT and SIGTERM raise KeyboardInterrupt (so the atomic folder is removed and the CLI says
    "interrupted"); the yielded list becomes non-empty once one arrived, for errors TVM wraps it in."""
    import signal
    import threading

    received: list = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _tvm_version() -> str:
    import tvm

    return tvm.__version__
