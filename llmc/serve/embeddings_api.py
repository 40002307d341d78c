"""``POST /v1/embeddings`` bodies checked into an ``EmbeddingSpec``, and the OpenAI-shaped answer."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import numpy as np

from llmc.serve.protocol import APIError

MAX_INPUTS = 2048  # OpenAI's limit per request


@dataclass
class EmbeddingSpec:
    inputs: list[str | list[int]]
    encoding_format: str = "float"  # float | base64 (little-endian float32)
    dimensions: int | None = None  # keep the first N (Matryoshka-style), renormalized


def _is_ids(value) -> bool:
    return (
        isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def parse_embedding(body: dict) -> EmbeddingSpec:
    raw = body.get("input")
    if isinstance(raw, str) or _is_ids(raw):
        inputs = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, str) or _is_ids(x) for x in raw):
        inputs = list(raw)
    else:
        raise APIError(
            400,
            "'input' must be a string, a list of strings, a list of token ids or a list of such lists (non-empty).",
            param="input",
        )
    if len(inputs) > MAX_INPUTS:
        raise APIError(400, f"'input' has {len(inputs)} items; the limit is {MAX_INPUTS}.", param="input")
    if any(x == "" for x in inputs):
        raise APIError(400, "'input' holds an empty string.", param="input")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise APIError(
            400, f"'encoding_format' must be 'float' or 'base64', got {json.dumps(fmt)[:40]}.", param="encoding_format"
        )
    dims = body.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
        raise APIError(400, "'dimensions' must be a positive integer.", param="dimensions")
    return EmbeddingSpec(inputs, fmt, dims)


def embedding_answer(spec: EmbeddingSpec, vectors: np.ndarray, model: str, prompt_tokens: int) -> dict:
    """The OpenAI ``list`` of ``embedding`` objects; ``dimensions`` truncates and renormalizes."""
    if spec.dimensions is not None:
        if spec.dimensions > vectors.shape[1]:
            raise APIError(
                400,
                f"'dimensions' is {spec.dimensions} but this model's embeddings have {vectors.shape[1]}.",
                param="dimensions",
            )
        vectors = vectors[:, : spec.dimensions]
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    data = []
    for i, vector in enumerate(vectors.astype("<f4")):
        value = base64.b64encode(vector.tobytes()).decode() if spec.encoding_format == "base64" else vector.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}
