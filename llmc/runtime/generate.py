"""Sampling and the generation loop over an ``Engine``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from llmc.errors import GenerationError


@dataclass
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int | None = None


@dataclass
class GenerationResult:
    prompt_ids: list[int]
    output_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def prefill_tok_s(self) -> float:
        return len(self.prompt_ids) / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tok_s(self) -> float:
        # the first output token comes from prefill; decode produced the rest
        steps = max(len(self.output_ids) - 1, 0)
        return steps / self.decode_seconds if self.decode_seconds else 0.0


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """Greedy at temperature 0, else temperature + nucleus (top-p) sampling."""
    if params.temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / params.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        keep = nucleus(probs, params.top_p)
        mask = np.zeros_like(probs)
        mask[keep] = probs[keep]
        probs = mask / mask.sum()
    return int(rng.choice(len(probs), p=probs))


NUCLEUS_FIRST_TRY = 64


def nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """The most likely tokens whose probabilities first sum to ``top_p`` (the whole vocabulary if they never do).

    Sorting a 150k vocabulary costs ~10 ms a token; the nucleus is usually a few dozen tokens, so this sorts the
    ``k`` largest (``argpartition``) and widens ``k`` only while they sum to less than ``top_p``: the same set.
    """
    k = min(NUCLEUS_FIRST_TRY, len(probs))
    while True:
        if k < len(probs):
            largest = np.argpartition(probs, len(probs) - k)[len(probs) - k :]
            order = largest[np.argsort(-probs[largest])]
        else:
            order = np.argsort(-probs)
        cut = int(np.searchsorted(np.cumsum(probs[order]), top_p))
        if cut < k or k == len(probs):
            return order[: cut + 1]
        k = min(k * 8, len(probs))


def generate(
    engine,
    prompt_ids: list[int],
    max_tokens: int,
    params: SamplingParams,
    stop_ids: set[int],
    on_token: Callable[[int], None] | None = None,
    seq_id: int = 0,
    keep_sequence: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> GenerationResult:
    """Prefill ``prompt_ids`` (continuing ``seq_id`` if it exists) and sample up to ``max_tokens``.

    ``should_stop`` is asked after every token (e.g. Ctrl-C in a chat): true ends with ``"cancelled"``.
    """
    past = engine.sequence_length(seq_id) if keep_sequence else 0
    if not keep_sequence:
        engine.add_sequence(seq_id)
    window = engine.context_window
    bounded = getattr(engine, "max_sequence_length", window) is not None  # an evicting cache has no bound
    if bounded and past + len(prompt_ids) >= window:
        if not keep_sequence:
            engine.remove_sequence(seq_id)
        raise GenerationError(
            f"the prompt is {past + len(prompt_ids)} tokens but the context window is {window}; "
            "shorten it, or recompile with a larger --context-window."
        )
    rng = np.random.default_rng(params.seed)
    result = GenerationResult(list(prompt_ids))
    try:
        started = time.perf_counter()
        logits = engine.prefill(seq_id, list(prompt_ids))
        result.prefill_seconds = time.perf_counter() - started
        started = time.perf_counter()
        while True:
            token = sample(logits, params, rng)
            result.output_ids.append(token)
            if on_token:
                on_token(token)
            if token in stop_ids:
                result.finish_reason = "stop"
                break
            if len(result.output_ids) >= max_tokens:
                result.finish_reason = "length"
                break
            if bounded and past + len(prompt_ids) + len(result.output_ids) >= window:
                result.finish_reason = "context_window"
                break
            if should_stop and should_stop():
                result.finish_reason = "cancelled"
                break
            logits = engine.decode(seq_id, token)
        result.decode_seconds = time.perf_counter() - started
    finally:
        if not keep_sequence:
            engine.remove_sequence(seq_id)
    return result
