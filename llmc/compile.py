"""``llmc quantize`` and ``llmc compile``: MODEL -> weights folder -> artifact folder, each written atomically.

A weights folder (``llmc quantize``) holds converted weights, tokenizer and ``llmc-config.json``;
``llmc compile`` accepts one as MODEL and only builds the library, linking the weights in. This module
orchestrates: the plan comes from ``llmc.plan``, the weights from ``llmc.weights``, the library from
``llmc.compiler.build``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

from tqdm import tqdm

from llmc.artifact import atomic_output_dir, disk_errors, read_config, write_build_info, write_config
from llmc.artifact_checks import library_fingerprint
from llmc.checkpoint import open_checkpoint
from llmc.compiler.tvm_errors import tvm_build_errors
from llmc.errors import ConfigError
from llmc.interrupts import interrupt_flag
from llmc.plan import CompileOptions, ModelPlan, plan_from_config, plan_from_weights, plan_model
from llmc.quant import get_quant
from llmc.shard_weights import tensor_parallel_fields, write_sharded_weights
from llmc.source import resolve
from llmc.weights import (
    check_weights_match,
    describe_random_weights,
    link_weights,
    relayout_weights,
    stored_layout_fits,
    write_weights,
)

# CompileOptions, ModelPlan and plan_model live in llmc.plan; importable from here as before
__all__ = [
    "CompileOptions",
    "ModelPlan",
    "compile_model",
    "compile_temporary",
    "default_output",
    "plan_from_config",
    "plan_model",
    "quantize_model",
    "quantize_report",
]


def default_output(model: str, quant: str, target: str | None) -> Path:
    stem = Path(model.rstrip("/")).name.removesuffix(".gguf") or "model"
    return Path("dist") / (f"{stem}-{quant}-{target}" if target else f"{stem}-{quant}")


def quantize_model(model: str, options: CompileOptions) -> Path:
    """Convert MODEL's weights to ``options.quant``: a weights folder that ``compile`` accepts."""
    from llmc.compiler.targets import get_target

    source = resolve(model)
    if options.quant:
        get_quant(options.quant)  # an unknown name fails first
    if source.format == "llmc":
        raise ConfigError(f"{source.path}: already converted weights; quantize the original checkpoint instead.")
    reader = open_checkpoint(source)
    plan = plan_from_config(reader.config, source, options, reader)
    target = get_target("llvm").tvm_target()  # any target: only the module's parameter list is used
    plan.module(target, portable=True)
    out_dir = options.output or default_output(model, plan.scheme.name, None)
    with interrupt_flag(), disk_errors(out_dir), atomic_output_dir(out_dir, options.force) as tmp:
        write_config(tmp, {**write_weights(source, reader, plan, target, tmp, options.quiet), "stage": "weights"})
    return Path(out_dir)


def quantize_report(model: str, options: CompileOptions) -> dict:
    """``quantize_model`` with ``options.quant`` set, then what ``llmc quantize`` reports: the folder, the
    scheme, bits per parameter, bytes of weights and the seconds taken."""
    scheme = get_quant(options.quant)
    started = time.time()
    out_dir = quantize_model(model, options)
    stored = read_config(out_dir)
    return {
        "output": str(out_dir),
        "quantization": scheme.name,
        "bits_per_param": stored.get("bits_per_param", scheme.bits_per_param),  # per-tensor schemes: as bound
        "bytes": stored["param_bytes"],
        "seconds": round(time.time() - started, 2),
    }


def compile_model(model: str, options: CompileOptions) -> Path:
    """MODEL (checkpoint or weights folder) -> artifact folder with the library for ``options.target``."""
    with _no_empty_default_parent(options.output):
        return _compile(model, options)


@contextlib.contextmanager
def _no_empty_default_parent(output: Path | None) -> Iterator[None]:
    """Without ``-o`` the artifact goes to dist/<model>-<quant>-<target>: a failed compile removes a dist/ it
    created (only when empty)."""
    default_parent = None if output else Path("dist")
    parent_existed = default_parent is not None and default_parent.exists()
    try:
        yield
    except BaseException:
        if default_parent is not None and not parent_existed and default_parent.is_dir():
            with contextlib.suppress(OSError):
                default_parent.rmdir()
        raise


def _compile(model: str, options: CompileOptions) -> Path:
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
        plan, stored = plan_from_weights(source.path, options)
    elif random_weights:
        reader = None if source.format == "config" else open_checkpoint(source)
        hf_config = source.preset["config"] if reader is None else reader.config
        plan, stored = plan_from_config(hf_config, source, options, reader), None
    else:
        reader = open_checkpoint(source)
        plan, stored = plan_from_config(reader.config, source, options, reader), None
    module = plan.module(target)
    mod, named_params = build_module(module, target)
    names = [name for name, _ in named_params]
    if stored is not None:
        expected = [plan.scheme.portable_name(name) for name, _ in named_params]
        check_weights_match(source.path, stored["weights"], expected)
    out_dir = options.output or default_output(model, plan.scheme.name, preset_target.name)
    prefix = _system_lib_prefix(preset_target, options, model, plan.scheme.name)

    started = time.time()
    with interrupt_flag(), disk_errors(out_dir), atomic_output_dir(out_dir, options.force) as tmp:
        if random_weights:
            weights = describe_random_weights(source, plan, named_params)
        elif stored is None and plan.shards > 1:
            weights = write_sharded_weights(source, reader, plan, names, tmp, options.quiet)
        elif stored is None:
            weights = write_weights(source, reader, plan, target, tmp, options.quiet)
        else:
            fits = stored_layout_fits(stored, plan)
            link_weights(source.path, tmp, weights=fits)
            if not fits:  # e.g. fp16 / standard-layout weights for a CPU
                stored = {**stored, **relayout_weights(source.path, tmp, plan, options.quiet)}
            weights = {
                **stored,
                "dtype": plan.dtype,
                "int_dot": plan.isa,
                "model": asdict(plan.config),
                **plan.sizes.record(),
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
                "embedding": plan.embedding,  # batch_hidden exported: /v1/embeddings
                "sliding_eviction": module.sliding_eviction,  # the runtime slides each sequence's window
                "sliding_cache": module.sliding_cache,  # GPU runtimes decode a batch one sequence at a time
                **(tensor_parallel_fields(plan, names, random_weights) if plan.shards > 1 else {}),
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
        tvm_build_errors(preset_target.name, interrupted),
    ):
        compile_library(mod, preset_target, library, options.debug_dump, options.opt_level, prefix)
        bar.update(1)


def _tvm_version() -> str:
    import tvm

    return tvm.__version__
