"""Perplexity of a compiled model on a text: the quality measure for quantization schemes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmc.errors import GenerationError

DEFAULT_TEXT_CHARS = 8000  # a fixed slice of CPython's pydoc topics: English prose, on every machine
DEFAULT_WINDOW = 512


def default_text() -> str:
    """The first DEFAULT_TEXT_CHARS characters of CPython's pydoc topics, joined in sorted key order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))[:DEFAULT_TEXT_CHARS]


def read_text(path: str | None) -> tuple[str, str]:
    """(text, label) for ``--eval``/``--text``: a file, or the default slice."""
    if not path:
        return default_text(), f"pydoc_data.topics[:{DEFAULT_TEXT_CHARS}]"
    file = Path(path)
    if not file.is_file():
        raise GenerationError(f"{file}: no such text file for the evaluation.")
    return file.read_text(encoding="utf-8", errors="replace"), str(file)


@dataclass
class PerplexityResult:
    perplexity: float
    tokens: int  # tokens scored
    windows: int
    seconds: float

    def as_dict(self) -> dict:
        return {
            "perplexity": self.perplexity,
            "tokens": self.tokens,
            "windows": self.windows,
            "seconds": round(self.seconds, 2),
        }


def window_slices(num_tokens: int, window: int) -> list[slice]:
    """Non-overlapping windows; each is scored on its own (the first token of a window is context only)."""
    return [
        slice(start, min(start + window, num_tokens))
        for start in range(0, num_tokens - 1, window)
        if min(start + window, num_tokens) - start >= 2
    ]


def log_softmax_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    top = logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(logits - top).sum(axis=-1)) + top[:, 0]
    return log_norm - logits[np.arange(len(targets)), targets]


def perplexity(engine, token_ids: list[int], window: int = DEFAULT_WINDOW) -> PerplexityResult:
    """exp(mean NLL) of each next token given the tokens before it in its window."""
    window = min(window, engine.context_window)
    started = time.perf_counter()
    total_nll, count = 0.0, 0
    slices = window_slices(len(token_ids), window)
    if not slices:
        raise GenerationError("the evaluation text is shorter than two tokens.")
    for part in slices:
        ids = token_ids[part]
        engine.add_sequence(0)
        try:
            logits = engine.forward_all(0, ids[:-1])
        finally:
            engine.remove_sequence(0)
        nll = log_softmax_nll(logits, np.asarray(ids[1:]))
        total_nll += float(nll.sum())
        count += len(nll)
    return PerplexityResult(float(np.exp(total_nll / count)), count, len(slices), time.perf_counter() - started)
