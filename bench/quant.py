"""Quantization benchmark: SmolLM2-135M perplexity per scheme beside llama.cpp's shipped Q4_1 GGUF.

For each scheme: `llmc quantize` (wall time, peak RSS of that process), `llmc compile` of the weights
for llvm, then perplexity on the default text (llmc eval's windows and tokenization). llama.cpp
(llama-cpp-python) scores the same token ids in the same windows with its own Q4_1 weights.
Writes bench/results/quant-<date>.json and .md.

usage: python bench/quant.py [--schemes q0f32,q8f16_1,...] [--window 512]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from report import write_report

LLMC = str(Path(sys.executable).parent / "llmc")
GNU_TIME = "/usr/bin/time"  # Debian package `time`
SCHEMES = ["q0f32", "q8f16_1", "q4f16_1", "q4f32_1", "q3f16_1"]


def run_measured(args: list[str]) -> tuple[str, float, int]:
    """(stdout, wall seconds, peak RSS bytes) of one child process.

    Measured by GNU time: a child forked straight from this (large) process would count the
    parent's pages it shares until exec in its own peak RSS.
    """
    started = time.perf_counter()
    done = subprocess.run([GNU_TIME, "-f", "%M", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{done.stderr}")
    peak_kib = int(done.stderr.strip().splitlines()[-1])
    return done.stdout, time.perf_counter() - started, peak_kib * 1024


def llama_cpp_perplexity(gguf: Path, ids: list[int], window: int) -> dict:
    from llama_cpp import Llama

    from llmc.runtime.perplexity import log_softmax_nll, window_slices

    llm = Llama(model_path=str(gguf), n_ctx=window, n_batch=window, logits_all=True, n_threads=2, verbose=False)
    started, nll = time.perf_counter(), []
    for part in window_slices(len(ids), window):
        tokens = ids[part]
        llm.reset()
        llm.eval(tokens[:-1])
        logits = np.asarray(llm.scores[: len(tokens) - 1], dtype=np.float32)
        nll.extend(log_softmax_nll(logits, np.asarray(tokens[1:])))
    return {"perplexity": float(np.exp(np.mean(nll))), "tokens": len(nll), "seconds": time.perf_counter() - started}


def largest_tensor_bytes(gguf: Path) -> int:
    from llmc.checkpoint.gguf_reader import GGUFCheckpoint

    reader = GGUFCheckpoint(gguf)
    return max(int(np.prod([int(d) for d in t.shape])) * 4 for t in reader.tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--window", type=int, default=512)
    args = parser.parse_args()

    from llmc.evaluate import evaluate_artifact
    from llmc.runtime.perplexity import read_text
    from llmc.runtime.session import Session
    from llmc.source import resolve

    gguf = resolve("smollm2-135m").path
    text, label = read_text(None)
    budget = largest_tensor_bytes(gguf) * 4 + 500_000_000  # the issue: largest tensor x 4 + 500 MB
    rows = []
    with tempfile.TemporaryDirectory(prefix="llmc-bench-") as tmp:
        ids = None
        for scheme in args.schemes.split(","):
            weights, compiled = Path(tmp) / f"w-{scheme}", Path(tmp) / f"c-{scheme}"
            out, seconds, rss = run_measured(
                [LLMC, "quantize", "smollm2-135m", "--quant", scheme, "-o", str(weights), "--quiet", "--json"]
            )
            stored = json.loads(out)
            _, compile_seconds, _ = run_measured(
                [
                    LLMC,
                    "compile",
                    str(weights),
                    "-o",
                    str(compiled),
                    "--quiet",
                    "--context-window",
                    str(args.window),
                    "--prefill-chunk",
                    str(args.window),
                ]
            )
            score = evaluate_artifact(compiled, text, args.window)
            ids = ids or Session(compiled).tokenizer.encode(text)
            rows.append(
                {
                    "system": "llmc",
                    "scheme": scheme,
                    "bits_per_param": stored["bits_per_param"],
                    "bytes": stored["bytes"],
                    "convert_seconds": round(seconds, 2),
                    "peak_rss_mib": round(rss / 2**20, 1),
                    "rss_budget_mib": round(budget / 2**20, 1),
                    "compile_seconds": round(compile_seconds, 2),
                    **score,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        reference = llama_cpp_perplexity(gguf, ids, args.window)
        rows.append(
            {
                "system": "llama.cpp (llama-cpp-python)",
                "scheme": "Q4_1 GGUF as shipped",
                "bits_per_param": 5.0,
                **reference,
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    meta = {
        "text": label,
        "window": args.window,
        "note": "llmc schemes are converted from the Q4_1 GGUF dequantized to float32 (the only SmolLM2 "
        "weights here), so they re-quantize Q4_1 values; q0f32 is the Q4_1 model itself.",
    }
    table = [
        "| system | scheme | bits/param | perplexity | tokens | convert s | peak RSS MiB (budget) | compile s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rss = f"{r['peak_rss_mib']} ({r['rss_budget_mib']})" if "peak_rss_mib" in r else "-"
        table.append(
            f"| {r['system']} | {r['scheme']} | {r['bits_per_param']:.2f} | {r['perplexity']:.4f} | "
            f"{r['tokens']} | {r.get('convert_seconds', '-')} | {rss} | {r.get('compile_seconds', '-')} |"
        )
    write_report("quant", "bench-quant", meta, {"rows": rows}, table)


if __name__ == "__main__":
    main()
