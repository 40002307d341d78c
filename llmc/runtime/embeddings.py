"""Text embeddings from a decoder compiled with ``--embedding``: each input's final hidden state at its last
token (last-token pooling, as Qwen3-Embedding and other decoder embedders do), L2-normalized.

Inputs that fit the prefill chunk together go through one ragged ``batch_hidden`` call; a longer input is
prefilled chunk by chunk and its last chunk gives the hidden state. Every input is a fresh sequence, removed
afterwards, so embeddings never depend on what else the engine serves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

from llmc.errors import GenerationError
from llmc.memory import PAGE_SIZE


def pages_for(prompt: list[int]) -> int:
    """KV pages one input holds while it is embedded."""
    return math.ceil(len(prompt) / PAGE_SIZE) + 1


def groups(prompts: list[list[int]], chunk: int, most: int) -> Iterator[list[int]]:
    """Indices of inputs embedded together: consecutive inputs whose tokens fit ``chunk``, at most ``most``;
    an input longer than ``chunk`` goes alone."""
    group: list[int] = []
    tokens = 0
    for i, prompt in enumerate(prompts):
        if group and (tokens + len(prompt) > chunk or len(group) == most):
            yield group
            group, tokens = [], 0
        group.append(i)
        tokens += len(prompt)
    if group:
        yield group


def embed(engine, prompts: list[list[int]], new_seq_id: Callable[[], int]) -> np.ndarray:
    """(len(prompts), hidden) float32 unit vectors; ``new_seq_id`` gives sequence ids unused in ``engine``."""
    for prompt in prompts:
        if not prompt:
            raise GenerationError("an input is empty.")
        if len(prompt) > engine.context_window:
            raise GenerationError(
                f"an input is {len(prompt)} tokens but the context window is {engine.context_window}."
            )
    out = np.empty((len(prompts), engine.hidden_size), "float32")
    chunk = engine.prefill_chunk
    for group in groups(prompts, chunk, engine.max_batch_size):
        seq_ids = [new_seq_id() for _ in group]
        for seq_id in seq_ids:
            engine.add_sequence(seq_id)
        try:
            if len(group) == 1 and len(prompts[group[0]]) > chunk:  # long: all but the last chunk first
                prompt, seq_id = prompts[group[0]], seq_ids[0]
                last = (len(prompt) - 1) // chunk * chunk
                for start in range(0, last, chunk):
                    engine.batch_prefill([seq_id], [prompt[start : start + chunk]])
                hidden = engine.batch_hidden([seq_id], [prompt[last:]])
            else:
                hidden = engine.batch_hidden(seq_ids, [prompts[i] for i in group])
        finally:
            for seq_id in seq_ids:
                engine.remove_sequence(seq_id)
        out[group] = hidden
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)
