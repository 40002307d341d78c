"""``llmc bench``: compile MODEL into a temporary folder when it is not an artifact yet, then measure it."""

from __future__ import annotations

import contextlib
from pathlib import Path

from llmc.artifact import is_compiled
from llmc.errors import LlmcError


def benchmark(
    model: str,
    *,
    target: str = "llvm",
    quant: str | None = None,
    random_weights: bool = False,
    batch: int = 1,
    prompt_len: int = 512,
    gen_len: int = 128,
    repeats: int = 3,
    seed: int = 0,
    device: str | None = None,
) -> dict:
    """The ``llmc bench --json`` object: model, target, quantization, compile seconds (None for an artifact)
    and ``llmc.runtime.bench.run_bench``'s medians."""
    with contextlib.ExitStack() as stack:
        artifact, compile_seconds = Path(model), None
        if not is_compiled(artifact):  # a checkpoint, preset or weights folder: build it first
            from llmc.compiler.targets import prepare_target

            if not prepare_target(target).runs_here:
                raise LlmcError(
                    f"--target {target} builds for a phone or Mac (or a browser); bench runs here: use llvm or cuda."
                )
            from llmc.compile import compile_temporary
            from llmc.plan import CompileOptions

            options = CompileOptions(
                target=target,
                quant=quant,
                quiet=True,
                random_weights=random_weights,
                max_batch_size=max(batch, 1),
                context_window=max(prompt_len + gen_len, 16),
            )
            artifact, compile_seconds = stack.enter_context(compile_temporary(model, options))
        from llmc.runtime.bench import bench_engine, run_bench

        engine = bench_engine(artifact, device, batch, prompt_len, gen_len, seed)
        config = engine.config
        return {
            "model": model,
            "target": config["target"],
            "quantization": config["quantization"],
            "random_weights": bool(config.get("random_weights")),
            "compile_seconds": compile_seconds,
            **run_bench(engine, batch, prompt_len, gen_len, repeats, seed),
        }
