"""Quantization benchmark: SmolLM2-135M perplexity per scheme beside llama.cpp, and ``--quant keep``
on real GGUF files beside llama.cpp on the same files.

For each scheme: `llmc quantize` (wall time, peak RSS of that process), `llmc compile` of the weights
for llvm, then perplexity on the default text (llmc eval's windows and tokenization). llama.cpp
(llama-cpp-python) scores the same token ids in the same windows: the shipped Q4_1 file, and Q4_0 /
Q4_K_M / Q3_K_M made by llama.cpp's quantizer from the F32 GGUF of the same weights.
``--keep``: for each GGUF file, llmc keep (CPU float decode path and the default int8 path) and
q0f32 beside llama.cpp on that file; weights bytes beside the file's tensor bytes.
Writes bench/results/quant-<date>.json and .md.

usage: python bench/quant.py [--schemes q0f32,q8f16_1,...] [--window 512] [--keep smollm2,qwen,gemma]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from report import write_report

LLMC = str(Path(sys.executable).parent / "llmc")
GNU_TIME = "/usr/bin/time"  # Debian package `time`
SCHEMES = ["q0f32", "q8f16_1", "q4f16_1", "q4f16_s", "q4a_s", "q4f32_1", "q3f16_1", "q3f16_s"]
LLAMA_CPP_QUANTS = {"Q4_0": 2, "Q4_K_M": 15, "Q3_K_M": 12}  # llama_ftype values (llama.h)
KEEP_FILES = ("smollm2", "qwen", "gemma")


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


def gguf_stats(gguf: Path) -> tuple[int, int]:
    """(tensor bytes, weights) of a GGUF file."""
    from llmc.checkpoint.gguf_file import read_gguf

    _, tensors = read_gguf(gguf)
    return sum(int(t.data.nbytes) for t in tensors), sum(int(np.prod(t.shape)) for t in tensors)


def keep_file(name: str) -> Path | None:
    import models

    if name == "smollm2":
        return models.smollm2_q4_1()
    if name == "qwen":
        return models.qwen_coder_file()
    if name == "gemma":
        from llmc.source import resolve

        try:
            return resolve("gemma3-270m").path
        except Exception as err:  # noqa: BLE001 - the preset needs the model-families work
            print(f"gemma: skipped ({err})", flush=True)
            return None
    raise SystemExit(f"--keep: unknown file {name!r}; use {', '.join(KEEP_FILES)}")


def eval_json(artifact: Path, window: int) -> dict:
    out, _, _ = run_measured([LLMC, "eval", str(artifact), "--window", str(window), "--json"])
    return json.loads(out)


def keep_rows(name: str, gguf: Path, window: int, tmp: Path) -> list[dict]:
    """llmc keep (float decode / int8 paths) and q0f32 on one GGUF, beside llama.cpp on the same ids."""
    from llmc.runtime.perplexity import read_text
    from llmc.runtime.session import Session

    tensor_bytes, weights = gguf_stats(gguf)
    rows, ids = [], None
    for label, quant, matmul in [("keep", "keep", "float"), ("keep", "keep", "int8"), ("q0f32", "q0f32", "float")]:
        out = tmp / f"{name}-{label}-{matmul}"
        _, seconds, rss = run_measured(
            [LLMC, "compile", str(gguf), "--quant", quant, "--cpu-kernels", matmul, "-o", str(out), "--quiet"]
            + ["--context-window", str(window), "--prefill-chunk", str(window)]
        )
        config = json.loads((out / "llmc-config.json").read_text())
        score = eval_json(out, window)
        ids = ids or Session(out).tokenizer.encode(read_text(None)[0])
        rows.append(
            {
                "file": name,
                "system": "llmc",
                "scheme": f"{label} (--cpu-kernels {matmul})",
                "bits_per_param": config["param_bytes"] * 8 / weights,
                "weights_bytes": config["param_bytes"],
                "gguf_tensor_bytes": tensor_bytes,
                "compile_seconds": round(seconds, 2),
                "peak_rss_mib": round(rss / 2**20, 1),
                **score,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(out)
    reference = llama_cpp_perplexity(gguf, ids, window)
    rows.append(
        {
            "file": name,
            "system": "llama.cpp (llama-cpp-python)",
            "scheme": "the file as shipped",
            "bits_per_param": tensor_bytes * 8 / weights,
            **reference,
        }
    )
    print(json.dumps(rows[-1]), flush=True)
    return rows


def llama_cpp_quant_rows(ids: list[int], window: int) -> list[dict]:
    """llama.cpp's own quantizer (Q4_0, Q4_K_M, Q3_K_M) from the F32 GGUF of SmolLM2's weights."""
    import models

    f32 = models.smollm2_files()["F32"]
    rows = []
    for name, ftype in LLAMA_CPP_QUANTS.items():
        out = models.BENCH_CACHE / f"{f32.name.removesuffix('-f32.gguf')}-{name.lower()}.gguf"
        if not out.exists():
            models._quantize(f32, out, ftype)
        tensor_bytes, weights = gguf_stats(out)
        rows.append(
            {
                "system": "llama.cpp (llama-cpp-python)",
                "scheme": f"{name} (llama.cpp's quantizer, from F32)",
                "bits_per_param": tensor_bytes * 8 / weights,
                **llama_cpp_perplexity(out, ids, window),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--keep", default="smollm2", help=f"GGUF files for the keep table ({', '.join(KEEP_FILES)})")
    args = parser.parse_args()

    from llmc.evaluate import evaluate_artifact
    from llmc.runtime.perplexity import read_text
    from llmc.runtime.session import Session
    from llmc.source import resolve

    gguf = resolve("smollm2-135m").path
    text, label = read_text(None)
    budget = largest_tensor_bytes(gguf) * 4 + 500_000_000  # the issue: largest tensor x 4 + 500 MB
    rows = []
    weights = gguf_stats(gguf)[1]
    with tempfile.TemporaryDirectory(prefix="llmc-bench-") as tmp:
        ids = None
        for scheme in [name for name in args.schemes.split(",") if name]:
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
                    "bits_per_param": stored["bytes"] * 8 / weights,  # all tensors, as for llama.cpp's files
                    "bytes": stored["bytes"],
                    "convert_seconds": round(seconds, 2),
                    "peak_rss_mib": round(rss / 2**20, 1),
                    "rss_budget_mib": round(budget / 2**20, 1),
                    "compile_seconds": round(compile_seconds, 2),
                    **score,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        if ids is not None:
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
            rows += llama_cpp_quant_rows(ids, args.window)
        keep = []
        for name in [n for n in args.keep.split(",") if n]:
            path = keep_file(name)
            if path is not None:
                keep += keep_rows(name, path, args.window, Path(tmp))

    meta = {"text": label, "window": args.window}
    if rows:
        meta["note"] = (
            "llmc schemes are converted from the Q4_1 GGUF dequantized to float32 (the only SmolLM2 "
            "weights here), so they re-quantize Q4_1 values; q0f32 is the Q4_1 model itself. llama.cpp's "
            "Q4_0/Q4_K_M/Q3_K_M rows are quantized by llama.cpp from the F32 GGUF of the same weights. Those "
            "weights lie on Q4_1 grids, which favours q4a_s (asymmetric, group 32, as Q4_1 is)."
        )
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
    if keep:
        table += [
            "",
            "`--quant keep` on GGUF files: llmc beside llama.cpp on the same file and token ids",
            "",
            "| file | system | scheme | bits/param | weights MB (GGUF tensors MB) | perplexity | tokens |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in keep:
            size = (
                f"{r['weights_bytes'] / 1e6:.1f} ({r['gguf_tensor_bytes'] / 1e6:.1f})" if "weights_bytes" in r else "-"
            )
            table.append(
                f"| {r['file']} | {r['system']} | {r['scheme']} | {r['bits_per_param']:.3f} | {size} | "
                f"{r['perplexity']:.4f} | {r['tokens']} |"
            )
    write_report("quant", "bench-quant", meta, {"rows": rows, "keep": keep}, table)


if __name__ == "__main__":
    main()
