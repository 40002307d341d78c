"""Sampling helpers (numpy only): the partial-sort nucleus equals the full-sort one."""

from __future__ import annotations

import numpy as np
import pytest

from llmc.runtime.generate import SamplingParams, nucleus, sample


def full_sort_nucleus(probs: np.ndarray, top_p: float) -> set[int]:
    order = np.argsort(-probs, kind="stable")
    return set(order[: int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1].tolist())


@pytest.mark.parametrize("sharpness", [0.1, 1.0, 4.0, 20.0])  # flat (nucleus of thousands) to peaked (a few)
@pytest.mark.parametrize("top_p", [0.01, 0.5, 0.9, 0.999, 1 - 1e-12])
def test_nucleus_is_the_full_sort_nucleus(sharpness: float, top_p: float):
    rng = np.random.default_rng(int(sharpness * 100 + top_p * 1000))
    logits = rng.standard_normal(50_000) * sharpness
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    assert set(nucleus(probs, top_p).tolist()) == full_sort_nucleus(probs, top_p)


def test_seeded_sampling_stays_in_the_nucleus():
    logits = np.linspace(0.0, 12.0, 1000)
    params = SamplingParams(temperature=1.0, top_p=0.5, seed=3)
    allowed = full_sort_nucleus(np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum(), 0.5)
    draws = [sample(logits, params, np.random.default_rng(seed)) for seed in range(200)]
    assert set(draws) <= allowed and len(set(draws)) > 1
