"""A GGUF's ``rope_freqs`` tensor back to the config.json rope scaling it came from.

llama.cpp's converter does not write Llama 3.1-style rope scaling (``rope_type: llama3``) as metadata: it
stores one divisor per rotary frequency (``rope_freqs.weight``; llama.cpp rotates by ``theta_i / f_i``).
Those divisors follow the llama3 formula: ``1`` for wavelengths under ``L / high``, ``factor`` over
``L / low``, and ``1 / ((1 - s) / factor + s)`` with ``s = (L / wavelength - low) / (high - low)`` in between.

Only ``factor`` and the two boundaries of the smooth band are determined by the divisors, so this finds
parameters that reproduce every divisor (``low_freq_factor = 1``; ``L`` and ``high_freq_factor`` from the
smooth band's divisors or, when no frequency falls in it, from the gap between the unscaled and scaled
frequencies) and checks them by recomputing the divisors as the converter did. Divisors of another
shape are refused: llmc would rotate differently from llama.cpp.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from llmc.errors import ConfigError

TOLERANCE = 1e-4  # relative, per divisor (the file stores float32 divisors)


def llama3_divisors(theta: float, rotary_dim: int, scaling: dict) -> np.ndarray:
    """The divisors llama.cpp's converter writes for ``scaling`` (``rope_type: llama3``)."""
    freqs = 1.0 / theta ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    context = scaling["original_max_position_embeddings"]
    out = []
    for wavelength in 2 * math.pi / freqs:
        if wavelength < context / high:
            out.append(1.0)
        elif wavelength > context / low:
            out.append(factor)
        else:
            smooth = (context / wavelength - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out)


def _band(wavelengths: np.ndarray, divisors: np.ndarray, factor: float) -> tuple[float, float]:
    """``(L, high_freq_factor)`` with ``low_freq_factor = 1`` that put each frequency in its region."""
    tol = TOLERANCE * factor
    smooth = (divisors > 1 + tol) & (divisors < factor - tol)
    if smooth.sum() >= 2:  # s * (high - 1) = L / w - 1, linear in (L, high): least squares
        s = (1 / divisors[smooth] - 1 / factor) / (1 - 1 / factor)
        a = np.stack([1 / wavelengths[smooth], -s], axis=1)
        context, high = np.linalg.lstsq(a, 1 - s, rcond=None)[0]
        return float(context), float(high)
    if smooth.sum() == 1:  # Meta's Llama 3 boundaries (high 4), L from the one smooth divisor
        s = float((1 / divisors[smooth][0] - 1 / factor) / (1 - 1 / factor))
        return float(wavelengths[smooth][0] * (3 * s + 1)), 4.0
    unscaled, scaled = wavelengths[divisors <= 1 + tol], wavelengths[divisors >= factor - tol]
    if not len(unscaled) or not len(scaled):  # everything in one region: any band beyond the frequencies
        return (float(wavelengths.min()) / 2, 4.0) if not len(unscaled) else (float(wavelengths.max()) * 8, 4.0)
    last, first = float(unscaled.max()), float(scaled.min())
    ratio = first / last  # > 1 when the file is llama3-shaped; the smooth band fits in the gap
    return first / ratio**0.25, ratio**0.5


def rope_scaling_from_freqs(divisors: np.ndarray, theta: float, rotary_dim: int, path: Path) -> dict | None:
    """The ``rope_scaling`` dict (``rope_type: llama3``) whose divisors are ``divisors``, None for all ones."""
    divisors = np.asarray(divisors, dtype=np.float64).reshape(-1)
    fix = "convert the Hugging Face checkpoint with llmc instead, or report the model."
    if divisors.shape != (rotary_dim // 2,) or not np.all(np.isfinite(divisors)) or divisors.min() <= 0:
        raise ConfigError(
            f"{path}: GGUF tensor rope_freqs.weight holds {divisors.size} divisors; expected {rotary_dim // 2} "
            f"positive ones (one per rotary frequency). The file is damaged; {fix}"
        )
    factor = float(divisors.max())
    if factor <= 1 + TOLERANCE:
        return None
    wavelengths = 2 * math.pi * theta ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
    context, high = _band(wavelengths, divisors, factor)
    scaling = {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": 1.0,
        "high_freq_factor": high,
        "original_max_position_embeddings": context,
    }
    if high <= 1 or context <= 0 or not np.allclose(llama3_divisors(theta, rotary_dim, scaling), divisors, TOLERANCE):
        raise ConfigError(
            f"{path}: GGUF tensor rope_freqs.weight does not follow Llama 3's rope scaling formula (the only "
            f"per-frequency scaling llmc reads from GGUF); {fix}"
        )
    return scaling
