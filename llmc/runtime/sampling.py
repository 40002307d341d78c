"""Per-request sampling for the serving engine: temperature + top-p from a request's own seed, and logprobs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from llmc.runtime.generate import SamplingParams, sample


@dataclass
class TokenLogprob:
    """The log-probability of a chosen token and the ``top`` most likely alternatives, from the raw logits."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


class Constraint(Protocol):
    """Constrained decoding (e.g. a JSON schema): which tokens may come next, and the one that came."""

    def allowed(self, vocab_size: int) -> np.ndarray:
        """A boolean mask over the vocabulary."""

    def accept(self, token_id: int) -> None: ...


class Sampler:
    """One request's sampler: its parameters and its own random stream (reproducible under any batching)."""

    def __init__(
        self,
        temperature: float,
        top_p: float,
        seed: int | None,
        top_logprobs: int | None = None,
        constraint: Constraint | None = None,
    ):
        self.params = SamplingParams(temperature, top_p, seed)
        self.rng = np.random.default_rng(None if seed is None else seed % 2**64)  # any int64 seed
        self.top_logprobs = top_logprobs  # None: no logprobs; 0..k: the chosen token's plus k alternatives
        self.constraint = constraint

    def __call__(self, logits: np.ndarray) -> tuple[int, TokenLogprob | None]:
        raw = logits
        if self.constraint is not None:
            logits = np.where(self.constraint.allowed(len(logits)), logits, -np.inf)
        token = sample(logits, self.params, self.rng)
        if self.constraint is not None:
            self.constraint.accept(token)
        if self.top_logprobs is None:
            return token, None
        return token, logprobs_of(raw, token, self.top_logprobs)


def logprobs_of(logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    """log-softmax of ``logits`` (the model's distribution, before temperature) at ``token`` and its top ``top``."""
    shifted = logits.astype(np.float64) - float(np.max(logits))
    logp = shifted - np.log(np.exp(shifted).sum())
    best = np.argsort(-logp)[:top] if top > 0 else []
    return TokenLogprob(token, float(logp[token]), [(int(i), float(logp[i])) for i in best])
