"""``llmc eval`` and ``quantize --eval``: perplexity of an artifact, or of a quantized model beside the same model
at q0f32 (both built for llvm)."""

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


def text_perplexity(artifact: Path, text_file: Path | None, window: int) -> dict:
    """``llmc eval``'s object: the text's label, then ``evaluate_artifact``'s fields (default text: pydoc topics)."""
    from llmc.runtime.perplexity import read_text

    text, label = read_text(str(text_file) if text_file else None)
    return {"text": label, **evaluate_artifact(artifact, text, window)}


def quantized_perplexity(model: str, weights_dir: Path, text_file: str | None, window: int, quiet: bool) -> dict:
    """``llmc quantize --eval``'s fields: the text's label, the quantized perplexity, the tokens scored and
    q0f32's perplexity (default text: pydoc topics)."""
    from llmc.runtime.perplexity import read_text

    text, label = read_text(text_file)
    scores = evaluate_quantized(model, weights_dir, text, window, quiet)
    return {
        "text": label,
        "perplexity": scores["quantized"]["perplexity"],
        "tokens": scores["quantized"]["tokens"],
        "q0f32_perplexity": scores["q0f32"]["perplexity"],
    }
