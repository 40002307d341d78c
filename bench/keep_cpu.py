"""CPU speed of ``--quant keep`` (the default GGUF compile) against llama.cpp on the same file.

For each GGUF: ``llmc compile FILE --quant keep`` (timed), ``llmc bench ARTIFACT --prompt-len P --gen-len G
--repeats R --json`` in a child process, and llama.cpp (llama-cpp-python, ``make install-bench``) on the same file
with the same prompt length and decode steps (bench/cpu.py's harness, medians of R runs after a warm-up).
``--before LABEL=SRC`` adds a row per file for another llmc source tree (e.g. a ``git archive`` of an older commit,
put first on PYTHONPATH), compiled and measured the same way. Each run records the CPU that other processes used
meanwhile. Writes bench/results/keep-<date>.json and .md.

usage: python bench/keep_cpu.py --gguf QWEN.gguf [--gguf SMOLLM2.gguf] [--before base=/tmp/base] [--no-llama-cpp]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cpu import LlamaCpp, busy_seconds, llama_cpp_info, llmc_git, measured
from report import write_report

ROOT = Path(__file__).resolve().parent.parent
LLMC = [str(Path(sys.executable).parent / "llmc")]  # the venv's script: honours PYTHONPATH


def llmc_env(src: Path) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }


def run_llmc(src: Path, gguf: Path, out: Path, args: argparse.Namespace) -> dict:
    """Compile ``gguf`` with the llmc at ``src`` and bench the artifact in a child process."""
    row: dict = {"llmc_src": str(src)}
    if not (out / "llmc-config.json").exists():
        started = time.time()
        subprocess.run([*LLMC, "compile", str(gguf), "--quiet", "-o", str(out)], env=llmc_env(src), check=True)
        row["compile_s"] = round(time.time() - started, 1)
    busy0, _ = busy_seconds()
    child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(
        [*LLMC, "bench", str(out), "--prompt-len", str(args.prompt_len), "--gen-len", str(args.gen_len)]
        + ["--repeats", str(args.repeats), "--json"],
        env=llmc_env(src),
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - started
    busy1, _ = busy_seconds()
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (child1.ru_utime - child0.ru_utime) + (child1.ru_stime - child0.ru_stime)
    result = json.loads(proc.stdout)
    config = json.loads((out / "llmc-config.json").read_text())
    row.update(
        prefill_tok_s=round(result["prefill_tok_s"], 2),
        decode_tok_s=round(result["decode_tok_s"], 2),
        int_dot=config.get("int_dot"),
        param_bytes=config.get("param_bytes"),
        wall_s=round(wall, 1),
        outside_cpu_s=round(max(busy1 - busy0 - own, 0.0), 1),
        loadavg_1m=round(os.getloadavg()[0], 2),
    )
    return row


def run_llama_cpp(gguf: Path, args: argparse.Namespace) -> dict:
    import numpy as np

    llm = LlamaCpp(gguf, args.prompt_len + args.gen_len + 16, flash_attn=True)
    llm.set_threads(os.cpu_count() or 1)
    prompt = np.random.default_rng(0).integers(100, llm.n_vocab - 100, args.prompt_len).tolist()
    llm.bench(prompt, args.gen_len)  # warm-up: first touch of the weights, llama.cpp's repacking
    runs = []
    for _ in range(args.repeats):
        result, wall, outside = measured(lambda: llm.bench(prompt, args.gen_len))
        runs.append({**result, "wall_s": wall, "outside_cpu_s": outside})
    return {
        "prefill_tok_s": round(statistics.median(r["prefill_tok_s"] for r in runs), 2),
        "decode_tok_s": round(statistics.median(r["decode_tok_s"] for r in runs), 2),
        "outside_cpu_s": round(sum(r["outside_cpu_s"] for r in runs), 1),
        "wall_s": round(sum(r["wall_s"] for r in runs), 1),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, action="append", required=True, help="a GGUF file (repeatable)")
    parser.add_argument("--before", action="append", default=[], help="LABEL=SRC: another llmc source tree")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--artifacts", type=Path, help="keep (and reuse) the compiled artifacts here")
    parser.add_argument("--no-llama-cpp", dest="llama_cpp", action="store_false")
    args = parser.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
    tmp = tempfile.TemporaryDirectory(prefix="llmc-bench-keep-")
    artifacts = args.artifacts or Path(tmp.name)
    trees = [(label, Path(src)) for label, _, src in (b.partition("=") for b in args.before)]
    trees.append((f"this tree ({llmc_git()})", ROOT))
    rows: list[dict] = []
    for gguf in args.gguf:
        for label, src in trees:
            key = f"{gguf.stem}-{label.split()[0]}"
            row = {"file": gguf.name, "system": f"llmc keep, {label}", **run_llmc(src, gguf, artifacts / key, args)}
            print(row, flush=True)
            rows.append(row)
        if args.llama_cpp:
            row = {"file": gguf.name, "system": "llama.cpp (flash attention)", **run_llama_cpp(gguf, args)}
            print(row, flush=True)
            rows.append(row)
    tmp.cleanup()
    meta = {
        "prompt_len": args.prompt_len,
        "gen_len": args.gen_len,
        "repeats": args.repeats,
        "tvm_num_threads": os.environ["TVM_NUM_THREADS"],
        "llama_cpp": llama_cpp_info() if args.llama_cpp else None,
    }
    table = [
        f"Tok/s, prefill-{args.prompt_len} then decode-{args.gen_len}, medians of {args.repeats} runs; "
        "outside CPU s: CPU seconds other processes used during the measurement (the machine is shared).",
        "",
        "| file | system | prefill | decode | compile s | int_dot | weights MB | wall s | outside CPU s | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        weights = f"{r['param_bytes'] / 1e6:.0f}" if r.get("param_bytes") else ""
        table.append(
            f"| {r['file']} | {r['system']} | {r['prefill_tok_s']} | {r['decode_tok_s']} | {r.get('compile_s', '')} "
            f"| {r.get('int_dot', '')} | {weights} | {r['wall_s']} | {r['outside_cpu_s']} "
            f"| {r['loadavg_1m']} |"
        )
    write_report("keep", "bench-keep", meta, {"rows": rows}, table)


if __name__ == "__main__":
    main()
