"""Serving benchmark: `llmc serve` vs llama.cpp's own `llama-server --parallel N --cont-batching` on one GGUF.

The same chat requests (streaming, greedy, fixed max_tokens) go through the official `openai` client, first as
closed-loop clients at each concurrency level (each client sends its next request when the last one ends), then
as an open loop of Poisson arrivals at each --poisson-rates rate. Reported per level: request rate, output tok/s,
time to first token and inter-token latency (p50/p99, from the client's clock), errors, and whether other
processes used the CPU meanwhile (a level during which they used more than 10% of one core is marked
contaminated). llmc runs ``llmc compile FILE --quant keep`` (the file's own bits; --quant another scheme) with
--max-batch-size = --parallel; llama.cpp runs the same file with --parallel slots of --slot-context tokens each
(bench/llama_tools.py builds it; --peer llama-cpp-python: the older Python server). Results:
bench/results/serve-<time>.{json,md}.

usage: python bench/serve.py [--levels 1,4,16,64] [--poisson-rates 2,8] [--max-tokens 64] [--gguf FILE]
       [--artifact DIR] [--peer llama-server|llama-cpp-python|none]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cpu import busy_seconds
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


def compile_artifact(folder: Path, max_batch: int, gguf: Path, quant: str) -> Path:
    """``llmc compile GGUF --target llvm --quant QUANT --max-batch-size MAX_BATCH`` into ``folder`` (reused)."""
    if (folder / "llmc-config.json").exists():
        return folder
    started = time.time()
    subprocess.run(
        [sys.executable, "-m", "llmc", "compile", str(gguf), "--target", "llvm", "--quant", quant,
         "--max-batch-size", str(max_batch), "--context-window", "1024", "--prefill-chunk", "256",
         "-o", str(folder), "--quiet"],
        check=True,
    )  # fmt: skip
    print(f"compiled {gguf.name} {quant} (max batch {max_batch}) in {time.time() - started:.0f} s", flush=True)
    return folder


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds of process ``pid`` and its waited-for children (/proc/PID/stat utime+stime+cutime+cstime)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class OutsideCpu:
    """CPU seconds that processes other than this one and the server used between start() and stop()."""

    def __init__(self, server_pid: int):
        self.pid = server_pid

    def start(self) -> None:
        self.busy, self.own = busy_seconds()
        self.server = process_cpu_seconds(self.pid)

    def stop(self) -> float:
        busy, own = busy_seconds()
        server = process_cpu_seconds(self.pid)
        return max((busy - self.busy) - (own - self.own) - (server - self.server), 0.0)


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


def run_level(
    base: str, model: str, concurrency: int, requests: int, max_tokens: int, rate: float | None = None
) -> dict:
    """``requests`` requests from ``concurrency`` closed-loop clients, or (``rate`` req/s) Poisson arrivals."""
    import openai

    client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=600)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(requests)]
    arrivals = [0.0] * requests
    if rate is not None:  # exponential gaps, seeded: the same arrival times for every server
        gaps = random.Random(requests * 1000 + int(rate * 100))
        for i in range(1, requests):
            arrivals[i] = arrivals[i - 1] + gaps.expovariate(rate)
    started = time.perf_counter()

    def arrive(i: int) -> dict:
        time.sleep(max(0.0, started + arrivals[i] - time.perf_counter()))
        return one_request(client, model, questions[i], max_tokens)

    errors = 0
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(arrive, i) for i in range(requests)]
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
        "pattern": "closed loop" if rate is None else f"Poisson {rate} req/s",
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
        outside = OutsideCpu(proc.pid)
        plan = [(level, max(args.min_requests, 2 * level), None) for level in args.levels]
        plan += [(args.poisson_clients, args.poisson_requests, rate) for rate in args.poisson_rates]
        for clients, requests, rate in plan:
            outside.start()
            row = run_level(base, model, clients, requests, args.max_tokens, rate)
            row["outside_cpu_s"] = round(outside.stop(), 2)
            row["contaminated"] = row["outside_cpu_s"] > 0.1 * row["seconds"]
            row["loadavg_1m"] = round(os.getloadavg()[0], 2)
            print(f"  {name} {row['pattern']} c={clients}: {row}", flush=True)
            rows.append(row)
        return rows
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,4,16,64", help="comma-separated closed-loop concurrency levels")
    parser.add_argument("--poisson-rates", default="2,8", help="comma-separated Poisson arrival rates, req/s")
    parser.add_argument("--poisson-requests", type=int, default=64, help="requests per Poisson rate")
    parser.add_argument("--poisson-clients", type=int, default=128, help="most requests open at once (Poisson)")
    parser.add_argument("--parallel", type=int, default=16, help="llama-server --parallel; llmc --max-batch-size")
    parser.add_argument("--slot-context", type=int, default=1024, help="llama-server context per slot")
    parser.add_argument("--gguf", type=Path, help="the GGUF both serve [default: SmolLM2-135M Q4_1, shipped]")
    parser.add_argument("--quant", default="keep", help="llmc --quant for the GGUF [default: keep, its own bits]")
    parser.add_argument(
        "--peer", default="llama-server", choices=["llama-server", "llama-cpp-python", "none"], help="llama.cpp side"
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--min-requests", type=int, default=8, help="requests per level: max(this, 2 x level)")
    parser.add_argument("--artifact", type=Path, help="keep (and reuse) the llmc artifact here")
    parser.add_argument("--no-llama-cpp", action="store_true", help="same as --peer none")
    args = parser.parse_args()
    args.levels = [int(x) for x in args.levels.split(",") if x]
    args.poisson_rates = [float(x) for x in args.poisson_rates.split(",") if x]
    if args.no_llama_cpp:
        args.peer = "none"
    gguf = args.gguf or smollm2_q4_1()
    kind = re.search(r"(Q\d_K_[SML]|Q\d_\d|Q\d_K|F16|F32|BF16)", gguf.name.upper())
    kind = kind.group(1) if kind else gguf.stem
    tmp = tempfile.TemporaryDirectory()
    artifact = compile_artifact(
        args.artifact or Path(tmp.name) / f"{gguf.stem}-{args.quant}", args.parallel, gguf, args.quant
    )
    load_before = os.getloadavg()
    systems = {}
    port = free_port()
    systems[f"llmc serve {args.quant}"] = bench_server(
        "llmc",
        [sys.executable, "-m", "llmc", "serve", str(artifact), "--port", str(port), "--max-queue", "1000",
         "--max-batch", str(args.parallel)],
        f"http://127.0.0.1:{port}",
        artifact.name,
        args,
        artifact,
    )  # fmt: skip
    if args.peer == "llama-server":
        from llama_tools import recorded_flags, tools

        args.llama_build = recorded_flags()
        port = free_port()
        server = tools(need=("llama-server",))["llama-server"]
        systems[f"llama-server {kind} --parallel {args.parallel}"] = bench_server(
            "llama-server",
            [str(server), "-m", str(gguf), "--parallel", str(args.parallel), "--cont-batching",
             "-c", str(args.parallel * args.slot_context), "-t", "2", "-tb", "2", "--host", "127.0.0.1",
             "--port", str(port), "-a", "model"],
            f"http://127.0.0.1:{port}",
            "model",
            args,
        )  # fmt: skip
    if args.peer == "llama-cpp-python":
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
        "model": str(gguf),
        "max_tokens": args.max_tokens,
        "parallel": f"llama-server --parallel {args.parallel} --cont-batching; llmc --max-batch-size {args.parallel}",
        "llama_cpp_build": getattr(args, "llama_build", None),
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
    for key in ("command", "machine", "llmc_commit", "model", "max_tokens", "parallel", "llama_cpp_build",
                "llmc_greedy_matches_llmc_run",
                "llmc_greedy_matches_llmc_run_forked_prefix", "load_average_before",
                "load_average_after"):  # fmt: skip
        lines.append(f"- {key}: {result[key]}")
    lines += [
        "",
        "Streaming chat requests, greedy, through the `openai` client; TTFT and inter-token latency on the client. "
        "Closed loop: each of `concurrency` clients sends its next request when its last one ends; Poisson: "
        "requests arrive at exponential gaps (the same arrival times for both servers), at most `concurrency` "
        "open. * = other processes used more than 10% of one core during the level.",
        "",
        "| system | pattern | concurrency | requests | errors / empty | req/s | output tok/s | TTFT p50 / p99 ms | "
        "ITL p50 / p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in result["systems"].items():
        for r in rows:
            star = "*" if r.get("contaminated") else ""
            lines.append(
                f"| {name} | {r.get('pattern', 'closed loop')}{star} | {r['concurrency']} | {r['requests']} | "
                f"{r['errors']} / {r['empty_answers']} | {r['request_rate']} | "
                f"{r['output_tok_s']} | {r['ttft_p50_ms']} / {r['ttft_p99_ms']} | "
                f"{r['itl_p50_ms']} / {r['itl_p99_ms']} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
