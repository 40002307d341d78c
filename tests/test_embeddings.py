"""Embeddings from a decoder compiled with ``--embedding`` (last-token pooling, L2-normalized), against
transformers' own final hidden states, through the engine and through ``llmc serve``'s ``/v1/embeddings``."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from serve_helpers import ServerProcess
from support.checkpoints import TINY_CONTEXT_WINDOW, TINY_PREFILL_CHUNK

from llmc.compile import compile_model
from llmc.errors import GenerationError
from llmc.plan import CompileOptions
from llmc.runtime import embeddings
from llmc.runtime.engine import Engine

FAMILY = "qwen3"  # Qwen3-Embedding's architecture
# lengths: a group that shares one ragged call, a lone one, and one longer than the prefill chunk (chunked)
LENGTHS = [5, 9, 3, TINY_PREFILL_CHUNK * 2 + 5, 17]


@pytest.fixture(scope="module")
def artifact(family_checkpoints, tmp_path_factory):
    options = CompileOptions(
        quant="q0f32",
        output=tmp_path_factory.mktemp("embedding") / "qwen3-embedding",
        quiet=True,
        context_window=TINY_CONTEXT_WINDOW,
        prefill_chunk=TINY_PREFILL_CHUNK,
        max_batch_size=4,
        embedding=True,
    )
    return compile_model(str(family_checkpoints[FAMILY]), options)


@pytest.fixture(scope="module")
def hf_model(family_checkpoints):
    import torch
    from transformers import AutoModel

    return AutoModel.from_pretrained(family_checkpoints[FAMILY], dtype=torch.float32).eval()


def reference(hf_model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        last = hf_model(torch.tensor([ids])).last_hidden_state[0, -1].numpy()
    return last / np.linalg.norm(last)


def prompts(vocab: int) -> list[list[int]]:
    rng = np.random.default_rng(7)
    return [rng.integers(3, vocab, n).tolist() for n in LENGTHS]


def test_embeddings_match_transformers(artifact, hf_model):
    engine = Engine(artifact)
    inputs = prompts(engine.vocab_size)
    ids = iter(range(100, 1000))
    vectors = embeddings.embed(engine, inputs, lambda: next(ids))
    for prompt, vector in zip(inputs, vectors):
        expected = reference(hf_model, prompt)
        assert np.abs(vector - expected).max() < 1e-4, f"length {len(prompt)}"
    assert list(embeddings.groups(inputs, TINY_PREFILL_CHUNK, 4)) == [[0, 1, 2], [3], [4]]
    # every input was a fresh sequence, removed afterwards: the same input embeds the same alone
    again = embeddings.embed(engine, [inputs[2]], lambda: next(ids))
    assert np.abs(again[0] - vectors[2]).max() < 1e-5
    with pytest.raises(GenerationError, match="context window"):
        embeddings.embed(engine, [[5] * (TINY_CONTEXT_WINDOW + 1)], lambda: next(ids))


def test_v1_embeddings(artifact, hf_model):
    server = ServerProcess(artifact)
    try:
        client = server.client()
        model = client.models.list().data[0].id
        texts = ["A compiler turns source code into machine code.", "The quick brown fox"]
        answer = client.embeddings.create(model=model, input=texts)
        assert [d.index for d in answer.data] == [0, 1]
        engine_ids = [server_tokens(artifact, t) for t in texts]
        for item, ids in zip(answer.data, engine_ids):
            assert np.abs(np.array(item.embedding) - reference(hf_model, ids)).max() < 1e-4
        assert answer.usage.prompt_tokens == sum(len(i) for i in engine_ids)
        raw = server.request("/v1/embeddings", {"input": [[5, 6, 7]], "encoding_format": "base64", "dimensions": 8})
        vector = np.frombuffer(base64.b64decode(raw.json()["data"][0]["embedding"]), "<f4")
        expected = reference(hf_model, [5, 6, 7])[:8]
        assert np.abs(vector - expected / np.linalg.norm(expected)).max() < 1e-4
        for body, param in [
            ({"input": ""}, "input"),
            ({"input": []}, "input"),
            ({"input": "x", "dimensions": 0}, "dimensions"),
        ]:
            reply = server.request("/v1/embeddings", body)
            assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text
        long = server.request("/v1/embeddings", {"input": [[5] * (TINY_CONTEXT_WINDOW + 1)]})
        assert long.status_code == 400 and "context window" in long.json()["error"]["message"]
        # still serving text after the errors
        assert client.completions.create(model=model, prompt="A compiler", max_tokens=3, temperature=0).choices
    finally:
        server.terminate()


def server_tokens(artifact, text: str) -> list[int]:
    """The ids the server tokenizes ``text`` into (the artifact's own tokenizer)."""
    from llmc.artifact import read_config
    from llmc.runtime.tokenizer import ArtifactTokenizer

    return ArtifactTokenizer(artifact, read_config(artifact)["tokenizer"]).encode(text)


def test_without_embedding_the_server_says_how(compiled):
    server = ServerProcess(compiled(FAMILY))
    try:
        reply = server.request("/v1/embeddings", {"input": "hello"})
        assert reply.status_code == 400 and "--embedding" in reply.json()["error"]["message"]
    finally:
        server.terminate()
