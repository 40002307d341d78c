"""Estimated device memory of a compiled model from its ``llmc-config.json``: weights + paged KV cache + activations.

Activations come from TVM's static memory plan, recorded at build time (``llmc.compiler.memory_plan``).
One function runs at a time, so the activation figure is the largest function's plan. No compiler import.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

PAGE_SIZE = 16  # tokens per KV page: the paged KV cache the runtime creates
MIB = 1 << 20


def dtype_bytes(dtype: str) -> int:
    return np.dtype(dtype).itemsize


def kv_layer_bytes(model: dict, dtype: str, tokens: int) -> int:
    """Bytes of one layer's pages for ``tokens`` (TVM allocates one page more than the tokens need)."""
    pages = math.ceil(tokens / PAGE_SIZE) + 1
    return pages * 2 * model["num_key_value_heads"] * PAGE_SIZE * model["head_dim"] * dtype_bytes(dtype)


def kv_cache_bytes(model: dict, dtype: str, tokens: int) -> int:
    """Bytes of the paged KV cache TVM allocates for ``tokens`` in every layer."""
    return model["num_hidden_layers"] * kv_layer_bytes(model, dtype, tokens)


def recorded_eviction(config: dict):
    """An artifact's ``sliding_eviction`` as recorded (older llmc wrote it under ``model``); False when absent."""
    return config.get("sliding_eviction", config["model"].get("sliding_eviction", False))


def evicting_window(config: dict) -> int:
    """The sliding window of an artifact whose KV cache evicts (the runtime slides each sequence), else 0."""
    return int(config["model"].get("sliding_window") or 0) if recorded_eviction(config) else 0


def kv_tokens_per_sequence(config: dict, context_window: int | None = None) -> int:
    """Cache slots one sequence takes: the context window, or in an evicting cache its window (the last
    ``window - 1`` tokens stay, a prefill chunk is appended before the slide, a page of misalignment)."""
    window = evicting_window(config)
    if window:
        return window - 1 + config["prefill_chunk"] + PAGE_SIZE
    return context_window or config["context_window"]


@dataclass(frozen=True)
class LayerKV:
    """One layer of the KV cache: its attention, the tokens it keeps per sequence, its bytes in all."""

    kind: str  # "full", "sliding, evicts" or "sliding, masks only" (keeps every token, TVM frees none)
    tokens: int
    bytes: int


def kv_layers(config: dict, context_window: int | None = None, sequences: int = 1) -> list[LayerKV]:
    """The KV cache layer by layer: an evicting cache keeps a window per sequence in every layer; otherwise
    every layer, sliding or global, keeps the whole context (TVM 0.27's per-layer windows mask and share
    the page pool with the global layers, so they free nothing)."""
    model, dtype = config["model"], config["dtype"]
    window = context_window or config["context_window"]
    sliding = [t == "sliding_attention" for t in model.get("layer_types") or []] or [False] * model["num_hidden_layers"]
    if evicting_window(config):
        tokens = kv_tokens_per_sequence(config)
        # TVM gives a sliding cache two more pages per sequence (a window's first and last pages are partial)
        slots = (tokens + 2 * PAGE_SIZE) * sequences
        return [LayerKV("sliding, evicts", tokens, kv_layer_bytes(model, dtype, slots))] * len(sliding)
    per_layer = kv_layer_bytes(model, dtype, window * sequences)
    layers = [LayerKV("sliding, masks only" if s else "full", window, per_layer) for s in sliding]
    if sliding and all(sliding):  # llmc adds one unused full layer (TVM allocates scratch only then)
        layers.append(LayerKV("full (unused)", window, per_layer))
    return layers


def weights_bytes(config: dict) -> int:
    if "param_bytes" in config:
        return int(config["param_bytes"])
    return sum(int(np.prod(shape)) * dtype_bytes(dtype) for _name, shape, dtype in config.get("param_specs", []))


@dataclass(frozen=True)
class MemoryEstimate:
    """Device bytes for one model serving ``sequences`` sequences of ``context_window`` tokens."""

    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    context_window: int
    sequences: int
    kv_layers: tuple[LayerKV, ...] = ()

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.activation_bytes

    def as_dict(self) -> dict:
        return {**asdict(self), "total_bytes": self.total_bytes}

    @property
    def evicts(self) -> bool:
        return any(layer.kind == "sliding, evicts" for layer in self.kv_layers)

    def kv_summary(self) -> str:
        """What the KV cache figure covers: sequences x tokens, and whether sliding layers evict."""
        if self.evicts:
            return f"{self.sequences} x {self.kv_layers[0].tokens}-token sliding windows (evicting)"
        kv = f"{self.sequences} x {self.context_window} tokens"
        masked = sum(layer.kind == "sliding, masks only" for layer in self.kv_layers)
        return kv + (f"; {masked} sliding layers mask only, keeping every token" if masked else "")

    def describe(self) -> str:
        return (
            f"{self.total_bytes / MIB:.1f} MiB (weights {self.weights_bytes / MIB:.1f}, "
            f"KV cache {self.kv_cache_bytes / MIB:.1f} for {self.kv_summary()}, "
            f"activations {self.activation_bytes / MIB:.1f})"
        )


def estimate(config: dict, context_window: int | None = None, sequences: int = 1) -> MemoryEstimate:
    """The estimate for an artifact's ``llmc-config.json`` (activations: 0 when no plan was recorded)."""
    window = context_window or config["context_window"]
    plan = config.get("static_plan_bytes") or {}
    layers = kv_layers(config, window, sequences)
    return MemoryEstimate(
        weights_bytes=weights_bytes(config),
        kv_cache_bytes=sum(layer.bytes for layer in layers),
        activation_bytes=max(plan.values(), default=0),
        context_window=window,
        sequences=sequences,
        kv_layers=tuple(layers),
    )


SKIP_CHECK_ENV = "LLMC_SKIP_MEMORY_CHECK"


def available_host_bytes() -> int | None:
    """MemAvailable, or the cgroup's remaining limit when that is lower; None when unknown."""
    available = None
    try:
        for line in open("/proc/meminfo"):  # noqa: SIM115 - a tiny read
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        return None
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()  # noqa: SIM115
        used = int(open("/sys/fs/cgroup/memory.current").read())  # noqa: SIM115
        if limit != "max" and available is not None:
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


def check_fits(config: dict, where: str, available: int | None, tokens: int | None = None) -> None:
    """Refuse, with the numbers, to load a model whose estimate exceeds the memory ``available`` (bytes).

    ``LLMC_SKIP_MEMORY_CHECK=1`` overrides (the estimate can be pessimistic: memory-mapped weights).
    """
    import os

    from llmc.errors import ArtifactError

    if available is None or os.environ.get(SKIP_CHECK_ENV) == "1":
        return
    needed = estimate(config, context_window=tokens)
    if needed.total_bytes > available:
        raise ArtifactError(
            f"{where}: needs about {needed.describe()} but only {available / MIB:,.0f} MiB is available. "
            f"Use a smaller model or quantization, a smaller --context-window, or set {SKIP_CHECK_ENV}=1 "
            "to try anyway."
        )
