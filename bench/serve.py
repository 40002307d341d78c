"""Serving benchmark: `llmc serve` vs llama.cpp's server (llama-cpp-python[server]) on SmolLM2-135M-Instruct.

The same chat requests (streaming, greedy, fixed max_tokens) go through the official `openai` client at
each concurrency level; reported per level: request rate, output tok/s, time to first token and
inter-token latency (p50/p99, from the client's clock). llmc runs q4f16_1 compiled from the shipped
Q4_1 GGUF; llama.cpp runs that same GGUF. Results: bench/results/serve-<time>.{json,md}.

usage: python bench/serve.py [--levels 1,4,16] [--max-tokens 64] [--artifact DIR] [--no-llama-cpp]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from models import smollm2_q4_1

RESULTS = Path(__file__).parent / "results"
QUESTIONS = [
    "What is a compiler?",
    "Explain what a hash table is.",
    "Why is the sky blue?",
    "Write a haiku about the sea.",
    "What does a CPU cache do?",
    "Name three uses of Python.",
    "How do vaccines work?",
    "What is the capital of France and why is it famous?",
    "Summarize the plot of Romeo and Juliet.",
    "What is recursion in programming?",
    "Give me a tip for learning to cook.",
    "What is the difference between RAM and disk?",
    "Describe a cat to someone who has never seen one.",
    "What is photosynthesis?",
    "How does a bicycle stay upright?",
    "What is an API?",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/v1/models", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{base} did not come up")


def compile_artifact(folder: Path, max_batch: int) -> Path:
    if (folder / "llmc-config.json").exists():
        return folder
    started = time.time()
    subprocess.run(
        [sys.executable, "-m", "llmc", "compile", "smollm2-135m", "--target", "llvm", "--quant", "q4f16_1",
         "--max-batch-size", str(max_batch), "--context-window", "1024", "--prefill-chunk", "256",
         "-o", str(folder), "--quiet"],
        check=True,
    )  # fmt: skip
    print(f"compiled SmolLM2 q4f16_1 (max batch {max_batch}) in {time.time() - started:.0f} s", flush=True)
    return folder


def one_request(client, model: str, question: str, max_tokens: int) -> dict:
    started = time.perf_counter()
    times, usage = [], None
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            times.append(time.perf_counter())
        if getattr(chunk, "usage", None):
            usage = chunk.usage
    tokens = usage.completion_tokens if usage else len(times)
    return {
        "seconds": time.perf_counter() - started,
        "ttft": times[0] - started if times else None,
        "itl": [b - a for a, b in zip(times, times[1:])],
        "tokens": tokens,
    }


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def run_level(base: str, model: str, concurrency: int, requests: int, max_tokens: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=600)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(requests)]
    started = time.perf_counter()
    errors = 0
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(one_request, client, model, q, max_tokens) for q in questions]
        done = []
        for future in futures:
            try:
                done.append(future.result())
            except Exception as err:  # noqa: BLE001 - counted and reported
                errors += 1
                print(f"  request failed: {err}", flush=True)
    seconds = time.perf_counter() - started
    ttfts = [d["ttft"] for d in done if d["ttft"] is not None]
    itls = [x for d in done for x in d["itl"]]
    tokens = sum(d["tokens"] for d in done)
    ms = lambda v: round(v * 1000, 1) if v is not None else None  # noqa: E731
    return {
        "concurrency": concurrency,
        "requests": requests,
        "errors": errors,
        "empty_answers": sum(1 for d in done if d["tokens"] == 0),
        "seconds": round(seconds, 2),
        "request_rate": round(len(done) / seconds, 2),
        "output_tokens": tokens,
        "output_tok_s": round(tokens / seconds, 1),
        "ttft_p50_ms": ms(percentile(ttfts, 50)),
        "ttft_p99_ms": ms(percentile(ttfts, 99)),
        "itl_p50_ms": ms(percentile(itls, 50)),
        "itl_p99_ms": ms(percentile(itls, 99)),
    }


def greedy_matches_llmc_run(base: str, model: str, artifact: Path, max_tokens: int) -> bool:
    """The served greedy answer to the first question equals `llmc run --temperature 0`'s."""
    import openai

    client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=600)
    served = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTIONS[0]}], max_tokens=max_tokens, temperature=0
    )
    run = subprocess.run(
        [sys.executable, "-m", "llmc", "run", str(artifact), "--json", "--prompt", QUESTIONS[0], "--temperature", "0",
         "--max-tokens", str(max_tokens)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return served.choices[0].message.content == json.loads(run.stdout)["text"]


def bench_server(name: str, command: list[str], base: str, model: str, args, artifact: Path | None = None):
    print(f"{name}: starting", flush=True)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(base, proc)
        if artifact is not None:  # first, while no prefix is cached
            args.greedy_matches_llmc_run = greedy_matches_llmc_run(base, model, artifact, args.max_tokens)
        run_level(base, model, 1, 2, 8)  # warm-up
        if artifact is not None:  # the template's system prompt is now cached: this prompt forks it
            args.greedy_matches_llmc_run_forked = greedy_matches_llmc_run(base, model, artifact, args.max_tokens)
        rows = []
        for level in args.levels:
            row = run_level(base, model, level, max(args.min_requests, 2 * level), args.max_tokens)
            print(f"  {name} c={level}: {row}", flush=True)
            rows.append(row)
        return rows
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,4,16", help="comma-separated concurrency levels")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--min-requests", type=int, default=8, help="requests per level: max(this, 2 x level)")
    parser.add_argument("--artifact", type=Path, help="keep (and reuse) the llmc artifact here")
    parser.add_argument("--no-llama-cpp", action="store_true")
    args = parser.parse_args()
    args.levels = [int(x) for x in args.levels.split(",")]
    gguf = smollm2_q4_1()
    tmp = tempfile.TemporaryDirectory()
    artifact = compile_artifact(args.artifact or Path(tmp.name) / "smollm2-q4f16_1", max(args.levels))
    load_before = os.getloadavg()
    systems = {}
    port = free_port()
    systems["llmc serve q4f16_1"] = bench_server(
        "llmc",
        [sys.executable, "-m", "llmc", "serve", str(artifact), "--port", str(port), "--max-queue", "1000"],
        f"http://127.0.0.1:{port}",
        artifact.name,
        args,
        artifact,
    )
    if not args.no_llama_cpp:
        port = free_port()
        systems["llama.cpp server Q4_1"] = bench_server(
            "llama.cpp",
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--n_ctx", "2048", "--n_threads", "2",
             "--n_threads_batch", "2", "--host", "127.0.0.1", "--port", str(port), "--model_alias", "smollm2",
             "--interrupt_requests", "False"],  # its default: a new request cancels the one being served
            f"http://127.0.0.1:{port}",
            "smollm2",
            args,
        )  # fmt: skip
    stamp = time.strftime("%Y%m%d-%H%M%S")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {
        "command": "make bench-serve  (python bench/serve.py " + " ".join(sys.argv[1:]) + ")",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {cpu_name()}",
        "date": stamp,
        "llmc_commit": commit,
        "model": f"SmolLM2-135M-Instruct ({gguf.name})",
        "max_tokens": args.max_tokens,
        "llmc_greedy_matches_llmc_run": getattr(args, "greedy_matches_llmc_run", None),
        "llmc_greedy_matches_llmc_run_forked_prefix": getattr(args, "greedy_matches_llmc_run_forked", None),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "systems": systems,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"serve-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"serve-{stamp}.md").write_text(markdown(result))
    print(markdown(result))


def cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        return re.search(r"model name\s*:\s*(.*)", text).group(1).strip()
    except (OSError, AttributeError):
        return platform.processor()


def markdown(result: dict) -> str:
    lines = [f"# serving benchmark {result['date']}", ""]
    for key in ("command", "machine", "llmc_commit", "model", "max_tokens", "llmc_greedy_matches_llmc_run",
                "llmc_greedy_matches_llmc_run_forked_prefix", "load_average_before",
                "load_average_after"):  # fmt: skip
        lines.append(f"- {key}: {result[key]}")
    lines += [
        "",
        "Streaming chat requests, greedy, through the `openai` client; TTFT and inter-token latency on the client.",
        "",
        "| system | concurrency | requests | errors / empty | req/s | output tok/s | TTFT p50 / p99 ms | "
        "ITL p50 / p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in result["systems"].items():
        for r in rows:
            lines.append(
                f"| {name} | {r['concurrency']} | {r['requests']} | {r['errors']} / {r['empty_answers']} | "
                f"{r['request_rate']} | "
                f"{r['output_tok_s']} | {r['ttft_p50_ms']} / {r['ttft_p99_ms']} | "
                f"{r['itl_p50_ms']} / {r['itl_p99_ms']} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
