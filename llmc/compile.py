"""``llmc compile``: MODEL -> artifact folder (weights, tokenizer, config, library), written atomically."""

from __future__ import annotations

import errno
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

import llmc
from llmc.artifact import FORMAT_VERSION, TensorCacheWriter, atomic_output_dir, write_config
from llmc.checkpoint import open_checkpoint
from llmc.checkpoint.tokenizer_files import write_tokenizer_files
from llmc.errors import CheckpointError, ConfigError, LlmcError
from llmc.models import family_for
from llmc.models.base import ModelConfig, WeightSource, concat_sources
from llmc.quant import QuantScheme, get_quant
from llmc.source import resolve

DEFAULT_CONTEXT_WINDOW = 4096
DEFAULT_PREFILL_CHUNK = 512
DEFAULT_MAX_BATCH = 8


@dataclass
class CompileOptions:
    """Everything ``llmc compile`` takes besides MODEL."""

    target: str = "llvm"
    quant: str = "q0f32"
    output: Path | None = None
    context_window: int | None = None
    prefill_chunk: int | None = None
    max_batch_size: int = DEFAULT_MAX_BATCH
    force: bool = False
    quiet: bool = False
    debug_dump: Path | None = None


def default_output(model: str, quant: str, target: str) -> Path:
    stem = Path(model.rstrip("/")).name.removesuffix(".gguf") or "model"
    return Path("dist") / f"{stem}-{quant}-{target}"


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
    config.context_window, config.prefill_chunk = window, min(chunk, window)
    config.max_batch_size = options.max_batch_size


def convert_weights(
    reader, named_params, sources: dict[str, WeightSource], scheme: QuantScheme, writer: TensorCacheWriter, quiet: bool
) -> None:
    """Stream each module parameter from the checkpoint, check its shape, convert and store it."""
    for name, param in tqdm(named_params, desc="weights", unit="tensor", disable=quiet or None):
        expected = tuple(int(d) for d in param.shape)
        source = sources.get(name, WeightSource([name], [expected]))
        arrays = []
        for hf_name, shape in zip(source.names, source.shapes):
            array = reader.get(hf_name)
            if tuple(array.shape) != tuple(shape):
                raise CheckpointError(
                    f"{reader.describe(hf_name)}: tensor {hf_name} has shape {tuple(array.shape)}, "
                    f"expected {tuple(shape)} from config.json. Do the weights match the config?"
                )
            arrays.append(array)
        writer.add(name, scheme.convert(name, concat_sources(arrays)))
        del arrays


def compile_model(model: str, options: CompileOptions) -> Path:
    """Resolve, convert and build; return the artifact folder."""
    from llmc.compiler.build import build_module, compile_library
    from llmc.compiler.targets import get_target

    preset_target = get_target(options.target)
    scheme = get_quant(options.quant)
    source = resolve(model)
    reader = open_checkpoint(source)
    family = family_for(reader.config, str(source.path))
    config = family.parse_config(reader.config, str(source.path))
    apply_sizes(config, options, source.preset)
    out_dir = options.output or default_output(model, scheme.name, preset_target.name)

    target = preset_target.tvm_target()
    module = family.module_class(config, target)
    if scheme.model_dtype != "float32":
        module.to(scheme.model_dtype)
    mod, named_params = build_module(module, target)

    started = time.time()
    try:
        with atomic_output_dir(out_dir, options.force) as tmp:
            writer = TensorCacheWriter(tmp)
            convert_weights(reader, named_params, family.weight_sources(config), scheme, writer, options.quiet)
            writer.finish({"quantization": scheme.name, "model_type": config.model_type})
            tokenizer = write_tokenizer_files(reader, tmp)
            library = f"model-{preset_target.name}{preset_target.library_suffix}"
            _build_with_progress(compile_library, mod, preset_target, tmp / library, options)
            write_config(
                tmp,
                {
                    "format_version": FORMAT_VERSION,
                    "llmc_version": llmc.__version__,
                    "tvm_version": _tvm_version(),
                    "source": {"spec": model, "format": source.format, "path": str(source.path)},
                    "model": asdict(config),
                    "quantization": scheme.name,
                    "dtype": scheme.model_dtype,
                    "target": preset_target.name,
                    "device": preset_target.device,
                    "library": library,
                    "context_window": config.context_window,
                    "prefill_chunk": config.prefill_chunk,
                    "max_batch_size": config.max_batch_size,
                    "params": [name for name, _ in named_params],
                    "param_bytes": writer.total_bytes,
                    "num_params": writer.total_params,
                    "tokenizer": tokenizer,
                    "compile_seconds": round(time.time() - started, 2),
                },
            )
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise LlmcError(
                f"{out_dir}: no space left on the device while writing the artifact; "
                "nothing was kept. Free space and re-run."
            ) from err
        raise
    return Path(out_dir)


def _build_with_progress(compile_library, mod, preset_target, library: Path, options: CompileOptions) -> None:
    with tqdm(total=1, desc=f"build {preset_target.name}", unit="library", disable=options.quiet or None) as bar:
        try:
            compile_library(mod, preset_target, library, options.debug_dump)
        except LlmcError:
            raise
        except Exception as err:  # TVM's errors carry long C++ traces; keep the first line
            first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
            raise LlmcError(
                f"TVM failed to build the library for target {preset_target.name}: {first}. "
                "Re-run with --verbose for the full trace."
            ) from err
        bar.update(1)


def _tvm_version() -> str:
    import tvm

    return tvm.__version__
