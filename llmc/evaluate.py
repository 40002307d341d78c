"""``quantize --eval``: perplexity of the quantized model beside the same model at q0f32 (both built for llvm)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from llmc.compile import compile_model
from llmc.plan import CompileOptions


def evaluate_artifact(artifact: Path, text: str, window: int) -> dict:
    """Perplexity of a compiled artifact on ``text`` (tokenized with its own tokenizer)."""
    from llmc.runtime.perplexity import perplexity
    from llmc.runtime.session import Session

    session = Session(artifact)
    ids = session.tokenizer.encode(text)
    return perplexity(session.engine, ids, window).as_dict()


def evaluate_quantized(model: str, weights_dir: Path, text: str, window: int, quiet: bool) -> dict:
    """{"quantized": ..., "q0f32": ...} perplexities, building throwaway llvm libraries in a temp folder."""
    with tempfile.TemporaryDirectory(prefix="llmc-eval-") as tmp:
        sizes = {"context_window": max(window, 16), "prefill_chunk": min(window, 512), "quiet": quiet}
        quantized = compile_model(str(weights_dir), CompileOptions(output=Path(tmp) / "quantized", **sizes))
        baseline = compile_model(model, CompileOptions(quant="q0f32", output=Path(tmp) / "q0f32", **sizes))
        return {
            "quantized": evaluate_artifact(quantized, text, window),
            "q0f32": evaluate_artifact(baseline, text, window),
        }
