"""What to build: the options ``llmc compile`` / ``llmc quantize`` take and the ``ModelPlan`` made from them.

A plan names the model family, its parsed architecture config, the build sizes (context window, prefill
chunk, batch bound) and the quantization scheme; it is made from a checkpoint's ``config.json`` or from
a weights folder's ``llmc-config.json``, without reading any weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llmc.artifact import read_config
from llmc.checkpoint import open_checkpoint
from llmc.checkpoint.config_checks import check_hf_config, check_model_config
from llmc.checkpoint.quant_config import stored_method
from llmc.compiler.shard import check_shards, shard_config, shard_module
from llmc.errors import ConfigError
from llmc.models import MODELS, ModelFamily, family_for
from llmc.models.base import BuildSizes, ModelConfig
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
    cpu_kernels: str = "int8"  # x86 CPUs: "int8" (integer dot products, llmc.quant.int_dot) or "float" (exact)
    embedding: bool = False  # also export batch_hidden: `llmc serve`'s /v1/embeddings (last-token pooling)
    tensor_parallel_shards: int = 1  # llmc.compiler.shard: one library that each of N disco workers runs


@dataclass
class ModelPlan:
    """What to build: family, architecture config, build sizes and weight format."""

    family: ModelFamily
    config: ModelConfig
    scheme: QuantScheme
    quantize_embeddings: bool
    cpu_kernels: bool = True  # llmc's CPU kernels (integer matmuls, attention, SiLU) where the target allows
    quantized: set[str] = field(default_factory=set)
    dtype: str | None = None  # compute dtype, set by module(): float32 on CPUs
    isa: str | None = None  # CPU integer-dot instruction set, set by module(); None: float path
    embedding: bool = False  # the module also exports batch_hidden (CompileOptions.embedding)
    shards: int = 1  # tensor-parallel shards (llmc.compiler.shard): the module is one shard's
    sizes: BuildSizes = BuildSizes()  # apply_sizes: flags, then the preset, then defaults

    def compute_dtype(self, target, portable: bool = False) -> str:
        """The scheme's dtype for a weights folder (``portable``), else what ``target`` computes in."""
        return self.scheme.model_dtype if portable else self.scheme.compute_dtype(target)

    def float_module(self, target, portable: bool = False):
        if self.shards > 1:
            module = self.family.module_class(shard_config(self.config, self.shards), self.sizes)
            shard_module(module, self.shards)
        else:
            module = self.family.module_class(self.config, self.sizes)
        if not self.cpu_kernels:  # the reference path: TVM's own kernels throughout
            module.use_tvm_cpu_kernels()
        module.export_hidden = self.embedding
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
        self.isa = None if portable or not self.cpu_kernels else self.scheme.int_dot_isa(target)
        self.quantized = self.scheme.quantize_module(module, self.quantize_embeddings, self.isa, self.dtype)
        return module


def apply_sizes(config: ModelConfig, options: CompileOptions, preset: dict) -> BuildSizes:
    """Context window / prefill chunk / batch bounds for ``config``: flags, then preset, then defaults."""
    window = options.context_window or preset.get("context_window")
    window = window or min(config.max_position_embeddings, DEFAULT_CONTEXT_WINDOW)
    chunk = options.prefill_chunk or preset.get("prefill_chunk") or DEFAULT_PREFILL_CHUNK
    if window < 16:
        raise ConfigError(f"--context-window {window} is too small (minimum 16).")
    if chunk < 1:
        raise ConfigError(f"--prefill-chunk {chunk} must be positive.")
    if options.max_batch_size < 1:
        raise ConfigError(f"--max-batch-size {options.max_batch_size} must be positive.")
    # a sliding-window model's chunk stays within its window (attention within a chunk has no window)
    return BuildSizes(window, min(chunk, window, config.max_prefill_chunk() or chunk), options.max_batch_size)


def plan_from_config(hf_config: dict, source: ResolvedSource, options: CompileOptions, reader=None) -> ModelPlan:
    """The plan for a model's ``config.json`` (dict): family, parsed config with sizes, scheme
    (``--quant keep``, the default for GGUF files and MXFP4 checkpoints, and ``awq``/``gptq``/``fp8``, the defaults
    for such checkpoints: bound to ``reader``'s tensor formats)."""
    label = str(source.path / "config.json") if source.format == "hf" else str(source.path)
    check_hf_config(hf_config, label)
    family = family_for(hf_config, str(source.path))
    config = family.parse_config(hf_config, str(source.path))
    check_model_config(config, label)
    sizes = apply_sizes(config, options, source.preset)
    scheme = get_quant(options.quant or default_quant(source, hf_config))
    scheme = scheme.prepare(reader, family.weight_sources(config), source.path)  # keep, encoders: per checkpoint
    check_shards(family, config, options.tensor_parallel_shards, label)
    if options.embedding and options.tensor_parallel_shards > 1:
        raise ConfigError(f"{label}: --embedding builds run on one device; drop --tensor-parallel-shards for them.")
    plan = ModelPlan(family, config, scheme, options.quantize_embeddings, _cpu_kernels(options), sizes=sizes)
    plan.shards = options.tensor_parallel_shards
    plan.embedding = options.embedding
    return plan


def default_quant(source: ResolvedSource, hf_config: dict | None = None) -> str:
    """``keep`` for GGUF files (their own formats, lossless) and MXFP4 checkpoints (GPT-OSS's expert blocks kept as
    stored), a pre-quantized checkpoint's own format (``awq``, ``gptq``, ``fp8``: its ``quantization_config``, kept
    as stored), else q0f32."""
    qc = (hf_config or {}).get("quantization_config")
    if source.format == "gguf" or (isinstance(qc, dict) and qc.get("quant_method") == "mxfp4"):
        return KEEP_QUANT
    return stored_method(hf_config or {}) or DEFAULT_QUANT


def _cpu_kernels(options: CompileOptions) -> bool:
    if options.cpu_kernels not in ("int8", "float"):
        raise ConfigError(f"--cpu-kernels {options.cpu_kernels!r}: use int8 or float.")
    return options.cpu_kernels == "int8"


def plan_model(model: str, options: CompileOptions) -> ModelPlan:
    """The plan ``compile_model`` makes for MODEL (a checkpoint, .gguf or preset), without reading weights."""
    source = resolve(model)
    reader = open_checkpoint(source)
    return plan_from_config(reader.config, source, options, reader)


def plan_from_weights(folder: Path, options: CompileOptions) -> tuple[ModelPlan, dict]:
    """The plan for a weights folder (``llmc quantize``'s output) and its stored ``llmc-config.json``."""
    stored = read_config(folder)
    if options.tensor_parallel_shards != 1:
        raise ConfigError(
            f"{folder}: --tensor-parallel-shards cuts weights from the original checkpoint; compile that instead of "
            "a weights folder."
        )
    if options.quant and options.quant != stored["quantization"]:
        raise ConfigError(
            f"{folder}: holds {stored['quantization']} weights; drop --quant or pass --quant {stored['quantization']} "
            "(to re-quantize, start from the original checkpoint)."
        )
    model = dict(stored["model"])
    if model["model_type"] not in MODELS:
        raise ConfigError(f"{folder}: model_type {model['model_type']!r} is not supported by this llmc.")
    config = MODELS[model["model_type"]].config_class.from_record(model)
    if options.context_window is None:
        options.context_window = stored["context_window"]
    if options.prefill_chunk is None:
        options.prefill_chunk = stored["prefill_chunk"]
    sizes = apply_sizes(config, options, {})
    scheme = get_quant(stored["quantization"]).with_stored(stored)  # keep: the per-tensor formats recorded
    plan = ModelPlan(
        MODELS[config.model_type],
        config,
        scheme,
        stored.get("quantize_embeddings", True),
        _cpu_kernels(options),
        sizes=sizes,
    )
    plan.embedding = options.embedding
    return plan, stored
