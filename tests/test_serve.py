"""`llmc serve` through the official `openai` client against a real server process on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from click.testing import CliRunner
from serve_helpers import ServerProcess

from llmc.cli import main

PROMPTS = [
    "The quick brown fox",
    "A compiler turns",
    "def add(a, b):",
    "Numbers 0123456789",
    "symbols !?.,;:",
    "the lazy dog",
    "source code into",
    "machine code. def",
]


@pytest.fixture(scope="module")
def server(serving_artifact):
    process = ServerProcess(serving_artifact)
    yield process
    process.terminate()


@pytest.fixture(scope="module")
def client(server):
    return server.client()


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def llmc_run(artifact, prompt: str, max_tokens: int, *extra: str) -> dict:
    result = CliRunner().invoke(
        main,
        ["run", str(artifact), "--json", "--prompt", prompt, "--temperature", "0", "--max-tokens", str(max_tokens)]
        + list(extra),
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def stream_text(client, model: str, prompt: str, max_tokens: int, **kwargs) -> tuple[str, str]:
    text, finish = "", None
    for chunk in client.completions.create(
        model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True, **kwargs
    ):
        text += chunk.choices[0].text
        finish = chunk.choices[0].finish_reason or finish
    return text, finish


def test_models_and_health(server, client, serving_artifact):
    assert [m.id for m in client.models.list().data] == [serving_artifact.name]
    assert server.request("/health").json()["status"] == "ok"


def test_chat_greedy_equals_llmc_run_streaming_or_not(client, model, serving_artifact):
    expected = llmc_run(serving_artifact, "hello there", 24)
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello there"}], temperature=0, max_tokens=24
    )
    assert answer.choices[0].message.content == expected["text"]
    assert answer.usage.prompt_tokens == expected["prompt_tokens"]
    assert answer.usage.completion_tokens == expected["output_tokens"]
    assert answer.choices[0].finish_reason == ("length" if expected["finish_reason"] == "length" else "stop")
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hello there"}],
            temperature=0,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected["text"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == answer.usage.total_tokens
    assert chunks[-2].choices[0].finish_reason == answer.choices[0].finish_reason


def test_completions_greedy_equals_llmc_run(client, model, serving_artifact):
    expected = llmc_run(serving_artifact, "A compiler turns", 20, "--no-chat")
    answer = client.completions.create(model=model, prompt="A compiler turns", temperature=0, max_tokens=20)
    assert answer.choices[0].text == expected["text"]
    assert answer.usage.completion_tokens == expected["output_tokens"]
    assert stream_text(client, model, "A compiler turns", 20)[0] == expected["text"]
    by_ids = client.completions.create(model=model, prompt=expected["prompt_ids"], temperature=0, max_tokens=20)
    assert by_ids.choices[0].text == expected["text"]


def test_eight_concurrent_streams_match_sequential_and_finish_sooner(server, client, model):
    """Continuous batching, measured: the same greedy texts, less total wall time, decode batches above 1."""
    started = time.perf_counter()
    sequential = [stream_text(client, model, p, 32)[0] for p in PROMPTS]
    sequential_s = time.perf_counter() - started
    before = server.metrics()
    started = time.perf_counter()
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        concurrent = list(pool.map(lambda p: stream_text(client, model, p, 32)[0], PROMPTS))
    concurrent_s = time.perf_counter() - started
    print(f"8 requests x 32 tokens: sequential {sequential_s:.2f} s, concurrent {concurrent_s:.2f} s")
    assert concurrent == sequential
    assert concurrent_s < sequential_s, (concurrent_s, sequential_s)
    after = server.metrics()
    steps = after["llmc_batch_size_count"] - before["llmc_batch_size_count"]
    single = after['llmc_batch_size_bucket{le="1"}'] - before['llmc_batch_size_bucket{le="1"}']
    assert steps > 0 and single < steps / 2, "most decode steps should run several sequences together"
    assert after['llmc_batch_size_bucket{le="4"}'] - before['llmc_batch_size_bucket{le="4"}'] < steps, "none above 4"


def reference_ids(artifact, prompt: str, max_tokens: int) -> tuple[str, list[str]]:
    """Greedy text and the text at each token boundary, from `llmc run` (which streams token by token)."""
    from llmc.runtime.session import Session

    out = llmc_run(artifact, prompt, max_tokens, "--no-chat")
    tokenizer = Session(artifact).tokenizer
    prefixes = [tokenizer.decode(out["output_ids"][:k]) for k in range(1, len(out["output_ids"]))]
    return out["text"], prefixes


def test_stop_string_across_a_token_boundary(client, model, serving_artifact):
    text, prefixes = reference_ids(serving_artifact, "The quick brown fox", 40)
    # a two-character stop string whose halves come from two different tokens
    for prefix in prefixes:
        cut = len(prefix)
        if 0 < cut < len(text) and text.startswith(prefix) and "\ufffd" not in text[cut - 1 : cut + 1]:
            stop = text[cut - 1 : cut + 1]
            if text.find(stop) == cut - 1:
                break
    else:
        pytest.fail(f"no clean token boundary in {text!r}")
    answer = client.completions.create(
        model=model, prompt="The quick brown fox", temperature=0, max_tokens=40, stop=[stop, "never-there"]
    )
    assert answer.choices[0].text == text[: cut - 1] and answer.choices[0].finish_reason == "stop"
    assert stream_text(client, model, "The quick brown fox", 40, stop=stop) == (text[: cut - 1], "stop")


def test_max_tokens_and_seeded_sampling(client, model):
    def sampled(seed: int) -> str:
        return client.completions.create(
            model=model, prompt="A compiler", max_tokens=12, temperature=1.0, top_p=0.9, seed=seed
        ).choices[0]

    first = sampled(3)
    assert first.finish_reason in ("length", "stop")
    with ThreadPoolExecutor(3) as pool:  # same seed, batched with others: same text
        again = list(pool.map(sampled, [3, 3, 4]))
    assert again[0].text == again[1].text == first.text
    assert any(sampled(s).text != first.text for s in (5, 6, 7))
    assert sampled(-1).text == sampled(-1).text
    capped = client.completions.create(model=model, prompt="A compiler", max_tokens=3, temperature=0)
    assert capped.usage.completion_tokens <= 3


def test_logprobs(client, model):
    answer = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        temperature=0,
        max_tokens=5,
        logprobs=True,
        top_logprobs=3,
    )
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens
    for item in content:
        tops = [t.logprob for t in item.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and item.logprob == pytest.approx(tops[0])
        assert item.logprob <= 0
    completion = client.completions.create(model=model, prompt="hi", temperature=0, max_tokens=4, logprobs=2)
    logprobs = completion.choices[0].logprobs
    assert len(logprobs.token_logprobs) == len(logprobs.tokens) == completion.usage.completion_tokens
    assert all(len(t) <= 2 for t in logprobs.top_logprobs)


def test_prefix_reuse_forks_the_cached_system_prompt(server, client, model, serving_artifact):
    system = "You answer questions about compilers, source code and machine code. " * 3
    before = server.metrics()
    first = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "hello"}],
        temperature=0,
        max_tokens=8,
    )
    second = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "what is a compiler"}],
        temperature=0,
        max_tokens=8,
    )
    assert second.usage.prompt_tokens_details.cached_tokens > 30
    expected = llmc_run(serving_artifact, "what is a compiler", 8, "--system", system)
    assert second.choices[0].message.content == expected["text"], "a forked prefix must give the same answer"
    after = server.metrics()
    hits = after["llmc_prefix_cache_hit_tokens_total"] - before["llmc_prefix_cache_hit_tokens_total"]
    assert hits >= second.usage.prompt_tokens_details.cached_tokens
    assert after["llmc_prefix_cache_hit_rate"] > 0
    assert first.usage.prompt_tokens_details.cached_tokens <= hits


BAD_REQUESTS = [
    ("malformed JSON", "/v1/chat/completions", b'{"messages": [', 400, None),
    ("body not an object", "/v1/completions", b"[1, 2]", 400, None),
    ("messages wrong type", "/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
    ("bad role", "/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0]"),
    ("temperature string", "/v1/completions", {"prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    ("negative max_tokens", "/v1/completions", {"prompt": "hi", "max_tokens": -1}, 400, "max_tokens"),
    ("huge max_tokens", "/v1/completions", {"prompt": "hi", "max_tokens": 10**9}, 400, "max_tokens"),
    ("float max_tokens", "/v1/completions", {"prompt": "hi", "max_tokens": 1.5}, 400, "max_tokens"),
    ("unknown model", "/v1/completions", {"model": "gpt-9", "prompt": "hi"}, 404, "model"),
    ("prompt too long", "/v1/completions", {"prompt": "fox jumps " * 400}, 400, "prompt"),
    ("n > 1", "/v1/completions", {"prompt": "hi", "n": 2}, 400, "n"),
    ("stop not strings", "/v1/completions", {"prompt": "hi", "stop": [1]}, 400, "stop"),
    ("token id out of range", "/v1/completions", {"prompt": [1, 99999]}, 400, "prompt"),
    (
        "json schema",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}},
        400,
        "response_format",
    ),
]


@pytest.mark.parametrize("name, route, body, status, param", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_gets_an_openai_error_and_the_server_keeps_serving(
    server, client, model, name, route, body, status, param
):
    response = server.request(route, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    assert client.completions.create(model=model, prompt="hi", max_tokens=2, temperature=0).choices[0].text is not None


COLOR_SCHEMA = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green"]}, "ok": {"type": "boolean"}},
    "required": ["color", "ok"],
    "additionalProperties": False,
}


def test_response_format_json_schema_constrains_the_output(client, model):
    pytest.importorskip("xgrammar")
    messages = [{"role": "user", "content": "pick a color"}]
    free = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=40)
    with pytest.raises(json.JSONDecodeError):
        json.loads(free.choices[0].message.content)  # the random model alone does not write JSON
    for seed in (0, 1):
        answer = client.chat.completions.create(
            model=model,
            messages=messages,
            temperature=1.0,
            seed=seed,
            max_tokens=40,
            response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": COLOR_SCHEMA}},
        )
        value = json.loads(answer.choices[0].message.content)
        assert value["color"] in ("red", "green") and isinstance(value["ok"], bool) and set(value) == {"color", "ok"}
        assert answer.choices[0].finish_reason == "stop"


def test_openai_client_raises_typed_errors(server, client, model):
    with pytest.raises(openai.BadRequestError, match="context window"):
        client.completions.create(model=model, prompt="fox jumps " * 400)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="hi")
    assert server.request("/v1/nowhere").status_code == 404
    assert server.request("/v1/models", b"{}").status_code == 405


def test_hang_up_mid_stream_frees_the_sequence(server, model):
    before = server.metrics()
    body = {"model": model, "prompt": "The quick brown fox", "max_tokens": 400, "temperature": 0, "stream": True}
    host, port = server.base.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        received = b""
        while b"data: " not in received:  # the first event: the sequence is running
            received += sock.recv(4096)
        assert received.startswith(b"HTTP/1.1 200")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = server.metrics()
        if after["llmc_running_sequences"] == 0 and after.get(
            'llmc_generations_total{reason="cancelled"}', 0
        ) > before.get('llmc_generations_total{reason="cancelled"}', 0):
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the sequence was not freed: {after}")
    generated = after["llmc_generation_tokens_total"] - before["llmc_generation_tokens_total"]
    assert generated < 400, "generation must stop when the client goes away"


def test_load_200_requests_16_threads_no_errors_no_memory_growth(server, model):
    client = server.client(timeout=120)

    def one(i: int) -> int:
        answer = client.completions.create(
            model=model, prompt=PROMPTS[i % len(PROMPTS)] + f" {i}", max_tokens=4, temperature=0.8, seed=i
        )
        return answer.usage.completion_tokens

    with ThreadPoolExecutor(16) as pool:
        assert all(n >= 1 for n in pool.map(one, range(48)))  # warm-up: allocator pools, prefix cache full
    before = server.metrics()
    rss_before = server.rss_bytes()
    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        done = list(pool.map(one, range(200)))
    seconds = time.perf_counter() - started
    growth = server.rss_bytes() - rss_before
    print(f"200 requests / 16 threads: {seconds:.1f} s, RSS growth {growth / 2**20:.1f} MiB")
    assert len(done) == 200 and all(n >= 1 for n in done)
    assert growth < 24 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 200 requests"
    metrics = server.metrics()
    assert metrics["llmc_running_sequences"] == 0 and metrics["llmc_queued_requests"] == 0
    assert metrics["llmc_prefix_cache_sequences"] <= metrics["llmc_max_batch_size"]
    assert metrics['llmc_batch_size_bucket{le="8"}'] == metrics["llmc_batch_size_count"]  # never above the bound

    # 16 clients whose answers outlive their arrival (up to 32 tokens each, where the load's 4 end before a starved
    # client thread on a busy machine sends the next), a batch bound of 8: full batches ran and the rest queued
    before = metrics
    with ThreadPoolExecutor(16) as pool:
        long_answers = list(
            pool.map(
                lambda i: (
                    client.completions.create(
                        model=model,
                        prompt=PROMPTS[i % len(PROMPTS)],
                        max_tokens=32,
                        temperature=0.8,
                        seed=i,
                    ).usage.completion_tokens
                ),
                range(16),
            )
        )
    assert all(n >= 1 for n in long_answers)
    metrics = server.metrics()
    steps = metrics["llmc_batch_size_count"] - before["llmc_batch_size_count"]
    full = steps - (metrics['llmc_batch_size_bucket{le="7"}'] - before['llmc_batch_size_bucket{le="7"}'])
    assert full > 0 and metrics['llmc_batch_size_bucket{le="8"}'] == metrics["llmc_batch_size_count"]


@pytest.fixture(scope="module")
def small_server(serving_artifact):
    """One sequence at a time, one waiting, an API key: queue-full and auth paths, then SIGTERM."""
    process = ServerProcess(serving_artifact, "--max-batch", "1", "--max-queue", "1", api_key="sekret")
    yield process
    process.terminate()


def test_api_key_required(small_server):
    bad = ServerProcess.__new__(ServerProcess)
    bad.base, bad.api_key = small_server.base, "wrong"
    with pytest.raises(openai.AuthenticationError):
        bad.client().models.list()
    assert small_server.client().models.list().data


def test_too_many_queued_requests_get_429(small_server):
    client = small_server.client(timeout=120)
    model = client.models.list().data[0].id

    def one(_):
        try:
            return client.completions.create(model=model, prompt="The quick", max_tokens=150, temperature=0)
        except openai.RateLimitError as err:
            return err

    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(one, range(5)))
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    served = [r for r in results if not isinstance(r, Exception)]
    assert refused and served, results
    assert refused[0].body["code"] == "queue_full"
    assert client.completions.create(model=model, prompt="hi", max_tokens=2).usage.completion_tokens >= 1


def test_sigterm_finishes_in_flight_requests_and_exits_0(small_server):
    client = small_server.client(timeout=120)
    model = client.models.list().data[0].id
    result = {}

    def long_request():
        result["answer"] = client.completions.create(model=model, prompt="The quick", max_tokens=100, temperature=0)

    thread = threading.Thread(target=long_request)
    thread.start()
    deadline = time.monotonic() + 30
    while small_server.metrics()["llmc_running_sequences"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    code, log = small_server.terminate()
    thread.join(timeout=60)
    assert code == 0, log
    assert "stopped" in log and "Traceback" not in log
    assert result["answer"].usage.completion_tokens >= 1, "the request in flight was answered"


def test_engine_runs_a_full_batch_of_window_long_requests(compiled):
    """Requests that may each grow to the context window still fill the batch (KV pages are sized for it)."""
    from llmc.runtime.sampling import Sampler
    from llmc.runtime.scheduler import Request, ServingEngine

    engine = ServingEngine(compiled("llama_tied", "q0f32"))
    try:
        prompt = engine.tokenizer.encode("The quick brown fox")
        room = engine.context_window - len(prompt)
        requests = [engine.submit(Request(prompt, room, Sampler(1.0, 1.0, seed))) for seed in range(engine.max_batch)]
        for request in requests:
            list(request)
        assert engine.stats.decode_batch_sizes[engine.max_batch] > 0, engine.stats.decode_batch_sizes
    finally:
        engine.stop()


def test_serve_cli_errors_are_one_line(compiled, tmp_path):
    missing = CliRunner().invoke(main, ["serve", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and missing.stderr.startswith("llmc: error:") and "Traceback" not in missing.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = CliRunner().invoke(main, ["serve", str(compiled("llama_tied", "q0f32")), "--port", str(port)])
    assert busy.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in busy.stderr
    assert CliRunner().invoke(main, ["serve", str(tmp_path), "--max-batch", "0"]).exit_code == 1
