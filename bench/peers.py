"""Peer benchmark: llmc against llama.cpp's own ``llama-bench`` and ``llama-perplexity`` on the same GGUF files.

Files: SmolLM2-135M Q4_1 (shipped), Q4_0 and Q8_0 of the same weights (llama.cpp's quantizer), Gemma 3 270M
Q4_K_M, Qwen2.5-Coder-1.5B Q4_K_M. llmc: ``llmc compile FILE --target llvm --quant keep`` (the file's own bits),
measured as ``llmc bench`` measures (llmc/runtime/bench.py: a random prompt of --prompt-len tokens, then
--gen-len greedy decode steps). llama.cpp: ``llama-bench -p 512 -n 128 -r R -o json`` as its users quote it
(tg128 from an empty context), plus ``-p 0 -n 128 -d 512``: decode after a 512-token context, as llmc's.

Every round runs every (file, engine, threads) job, order rotated per round; a job during which other processes
used more CPU than the cores it leaves free (+10% of one core) is contaminated (bench/cpu.py's rule): dropped
and redone in a later round. Medians of clean runs; ratios from the same run. Each decode figure is also given
as a fraction of the memory roofline (STREAM-style read bandwidth / weight bytes per token) and each prefill
figure as a fraction of the ISA's int8 dot-product peak (bench/roofline.py). Perplexity: ``llama-perplexity
-c 512`` on bench/perplexity_text.txt against llmc on the same token ids (``llama-tokenize``), scored the way
llama-perplexity scores (each 512-token chunk, BOS first, its second half). Writes bench/results/peers-<date>.*.

usage: python bench/peers.py [--rounds 3 | --quick] [--threads 1,2] [--models a,b] [--no-perplexity]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
from cpu import CORES, MAX_OUTSIDE_CPU, llmc_git, measured, set_tvm_threads
from llama_tools import recorded_flags, tools
from models import BENCH_CACHE, gemma3_file, qwen_coder_file, smollm2_requantized
from report import write_report
from roofline import cpu_ghz, decode_roofline, int8_peak, prefill_roofline, stream_read, weight_stats

HERE = Path(__file__).resolve().parent
TEXT = HERE / "perplexity_text.txt"
ARTIFACTS = BENCH_CACHE / "peers"
WINDOW = 1024
MODEL_KEYS = ("smollm2-q4_1", "smollm2-q4_0", "smollm2-q8_0", "gemma3-q4_k_m", "qwen-coder-q4_k_m")


def model_files(keys: list[str], quantize: Path) -> dict[str, Path]:
    """{display name: GGUF path} for the requested keys (made or fetched once, cached)."""
    out: dict[str, Path] = {}
    if any(k.startswith("smollm2") for k in keys):
        smol = smollm2_requantized(quantize)
        for kind in ("Q4_1", "Q4_0", "Q8_0"):
            if f"smollm2-{kind.lower()}" in keys:
                out[f"SmolLM2-135M {kind}"] = smol[kind]
    if "gemma3-q4_k_m" in keys:
        out["Gemma-3-270M Q4_K_M"] = gemma3_file()
    if "qwen-coder-q4_k_m" in keys:
        out["Qwen2.5-Coder-1.5B Q4_K_M"] = qwen_coder_file()
    return out


def compile_keep(path: Path, rebuild: bool = False) -> Path:
    """``llmc compile PATH --target llvm --quant keep`` into ~/.cache/llmc/bench/peers (reused unless rebuild)."""
    out = ARTIFACTS / f"{path.stem}-keep-w{WINDOW}"
    if (out / "llmc-config.json").exists() and not rebuild:
        return out
    started = time.time()
    cmd = [sys.executable, "-m", "llmc", "compile", str(path), "--target", "llvm", "--quant", "keep"]
    cmd += ["--context-window", str(WINDOW), "--prefill-chunk", "512", "-o", str(out), "--quiet"]
    subprocess.run(cmd, check=True)
    print(f"compiled {path.name} (keep) in {time.time() - started:.0f} s", flush=True)
    return out


def llama_bench(binary: Path, path: Path, threads: int, args: argparse.Namespace) -> dict:
    """pp512 / tg128 as llama-bench reports them (avg of -r repeats), and tg128 after a 512-token context."""
    common = [str(binary), "-m", str(path), "-t", str(threads), "-r", str(args.llama_repeats), "-o", "json"]
    runs = [common + ["-p", str(args.prompt_len), "-n", str(args.gen_len)]]
    if not args.no_depth:
        runs.append(common + ["-p", "0", "-n", str(args.gen_len), "-d", str(args.prompt_len)])
    out: dict = {}
    for cmd in runs:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()[-400:]}")
        for test in json.loads(proc.stdout):
            key = "prefill_tok_s" if test["n_prompt"] and not test["n_gen"] else "decode_tok_s"
            if test.get("n_depth"):
                key += f"_d{test['n_depth']}"
            out[key] = round(test["avg_ts"], 2)
            fields = ("build_commit", "cpu_info", "flash_attn", "n_batch", "n_ubatch", "type_k", "model_type")
            out.setdefault("llama_bench", {k: test.get(k) for k in fields})
    return out


class LlmcJob:
    """One llmc artifact loaded once; each call is one ``llmc bench`` measurement (batch 1)."""

    def __init__(self, artifact: Path, args: argparse.Namespace):
        from llmc.runtime.engine import Engine

        self.engine = Engine(artifact, max_batch_size=1, kv_tokens=WINDOW)
        self.args = args

    def __call__(self) -> dict:
        from llmc.runtime.bench import run_bench

        result = run_bench(self.engine, 1, self.args.prompt_len, self.args.gen_len, repeats=1)
        return {"prefill_tok_s": result["prefill_tok_s"], "decode_tok_s": result["decode_tok_s"]}


def clean_bandwidth(threads: list[int], attempts: int = 3) -> dict[str, dict]:
    """{threads: {"gb_s", "clean"}}: the STREAM-style read, redone while other processes disturbed it."""
    out: dict[str, dict] = {}
    for t in threads:
        for attempt in range(attempts):
            result, wall, outside = measured(lambda t=t: stream_read([t]))
            clean = outside <= (CORES - t + MAX_OUTSIDE_CPU) * wall
            best = max(out.get(str(t), {}).get("gb_s", 0.0), result[t]) if clean else result[t]
            if clean or attempt == attempts - 1:
                out[str(t)] = {"gb_s": best, "clean": clean}
                if clean:
                    break
    return out


def llama_perplexity(binary: Path, path: Path, ctx: int) -> dict:
    """llama-perplexity's final estimate on bench/perplexity_text.txt (-c ctx, 2 threads)."""
    cmd = [str(binary), "-m", str(path), "-f", str(TEXT), "-c", str(ctx), "-b", str(ctx), "-t", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", proc.stdout + proc.stderr)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"llama-perplexity failed: {(proc.stderr or proc.stdout).strip()[-400:]}")
    return {"perplexity": float(found.group(1)), "stderr": float(found.group(2)), "command": " ".join(cmd[1:])}


def llama_tokens(binary: Path, path: Path) -> tuple[list[int], bool]:
    """(token ids of the text as llama.cpp tokenizes it for llama-perplexity, whether a BOS was added)."""

    def ids(*extra: str) -> list[int]:
        cmd = [str(binary), "-m", str(path), "-f", str(TEXT), "--ids", "--log-disable", "--no-parse-special", *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    with_bos, without = ids(), ids("--no-bos")
    return with_bos, len(with_bos) == len(without) + 1


def chunked_perplexity(forward_all: Callable[[list[int]], np.ndarray], tokens: list[int], ctx: int, bos: int | None):
    """llama-perplexity's estimate: each whole ``ctx``-token chunk (first token set to BOS when the model adds
    one) scored on its second half, i.e. the next-token NLL at positions ctx/2 .. ctx-2."""
    nll: list[float] = []
    for start in range(0, len(tokens) // ctx * ctx, ctx):
        chunk = list(tokens[start : start + ctx])
        if bos is not None:
            chunk[0] = bos
        logits = forward_all(chunk).astype(np.float64)
        first = ctx // 2
        rows, targets = logits[first : ctx - 1], np.array(chunk[first + 1 : ctx])
        top = rows.max(axis=-1)
        log_z = np.log(np.exp(rows - top[:, None]).sum(axis=-1)) + top
        nll.extend((log_z - rows[np.arange(len(targets)), targets]).tolist())
    mean = float(np.mean(nll))
    return {"perplexity": round(float(np.exp(mean)), 4), "scored_tokens": len(nll)}


def llmc_perplexity(artifact: Path, tokens: list[int], bos: int | None, ctx: int) -> dict:
    """llmc on llama.cpp's token ids, scored as llama-perplexity scores; and whether llmc's tokenizer agrees."""
    from llmc.runtime.session import Session

    session = Session(artifact)
    engine = session.engine

    def forward_all(ids: list[int]) -> np.ndarray:
        engine.add_sequence(0)
        try:
            return engine.forward_all(0, ids)
        finally:
            engine.remove_sequence(0)

    result = chunked_perplexity(forward_all, tokens, ctx, bos)
    own = session.tokenizer.encode(TEXT.read_text())
    body = tokens[1:] if bos is not None else tokens
    result["llmc_tokenizer_same_ids"] = list(own[-len(body) :]) == list(body)
    return result


def median_of(rows: list[dict], key: str) -> tuple[float | None, bool]:
    clean = [r[key] for r in rows if not r["contaminated"] and key in r]
    every = [r[key] for r in rows if key in r]
    use = clean or every
    return (round(statistics.median(use), 2) if use else None), bool(clean)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="clean runs per job")
    parser.add_argument("--quick", action="store_true", help="1 round, SmolLM2 Q4_1 only, 64-token prompt")
    parser.add_argument("--max-minutes", type=float, default=40.0, help="start no round after this long")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--gen-len", type=int, default=128)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--models", default=",".join(MODEL_KEYS), help=f"of {', '.join(MODEL_KEYS)}")
    parser.add_argument("--llama-repeats", type=int, default=1, help="llama-bench -r per round")
    parser.add_argument("--no-depth", action="store_true", help="skip llama-bench's tg after a prompt-len context")
    parser.add_argument("--no-perplexity", action="store_true")
    parser.add_argument("--ppl-models", help="perplexity on these of --models only [default: all of them]")
    parser.add_argument("--no-speed", action="store_true", help="perplexity only")
    parser.add_argument("--rebuild", action="store_true", help="recompile the llmc artifacts")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.prompt_len, args.gen_len = 1, 64, 32
        if args.models == ",".join(MODEL_KEYS):
            args.models = "smollm2-q4_1"
    threads = [int(t) for t in args.threads.split(",")]
    os.environ["TVM_NUM_THREADS"] = str(max(threads))  # the pool's size; set_tvm_threads picks 1..max per run
    keys = [k for k in args.models.split(",") if k]
    unknown = set(keys) - set(MODEL_KEYS)
    if unknown:
        parser.error(f"unknown --models {sorted(unknown)}")

    binaries = tools(need=("llama-bench", "llama-perplexity", "llama-quantize", "llama-tokenize"))
    files = model_files(keys, binaries["llama-quantize"])
    stats = {name: weight_stats(path) for name, path in files.items()}
    artifacts: dict[str, Path] = {}
    errors: dict[str, str] = {}
    for name, path in files.items():
        try:
            artifacts[name] = compile_keep(path, args.rebuild)
        except subprocess.CalledProcessError as err:
            errors[name] = f"llmc compile failed ({err.returncode})"
            print(f"{name}: {errors[name]}", flush=True)

    from llmc.cpu_features import host_extensions

    extensions = host_extensions() or set()
    ghz = cpu_ghz()
    peaks = {t: int8_peak(extensions, t, ghz) for t in threads}
    bandwidth = clean_bandwidth(threads)
    print(f"read bandwidth: {bandwidth}", flush=True)

    perplexities: dict[str, dict] = {}
    if not args.no_perplexity:
        ppl_keys = set((args.ppl_models or args.models).split(","))
        for key, (name, path) in zip([k for k in MODEL_KEYS if k in keys], files.items()):
            if key not in ppl_keys:
                continue
            entry: dict = {"file": path.name}
            try:
                entry["llama.cpp"] = llama_perplexity(binaries["llama-perplexity"], path, 512)
                tokens, adds_bos = llama_tokens(binaries["llama-tokenize"], path)
                entry["tokens"] = len(tokens)
                if name in artifacts:
                    bos = tokens[0] if adds_bos else None
                    entry["llmc"] = llmc_perplexity(artifacts[name], tokens, bos, 512)
            except Exception as err:  # recorded: one failure must not stop the others
                entry["error"] = str(err)[-400:]
            perplexities[name] = entry
            print(f"perplexity {name}: {entry}", flush=True)

    rows: dict[str, dict[str, dict[int, list[dict]]]] = {}
    load_before = [round(x, 2) for x in os.getloadavg()]
    if not args.no_speed:
        jobs: dict[tuple[str, str], Callable[[int], dict]] = {}
        for name, path in files.items():
            jobs[(name, "llama.cpp")] = lambda t, path=path: llama_bench(binaries["llama-bench"], path, t, args)
            if name in artifacts:
                runner = LlmcJob(artifacts[name], args)

                def llmc_job(t: int, runner: LlmcJob = runner) -> dict:
                    set_tvm_threads(t)
                    return runner()

                jobs[(name, "llmc")] = llmc_job
                runner()  # warm-up: first touch of the weights, TVM's first calls
        for name, engine in jobs:
            rows.setdefault(name, {}).setdefault(engine, {t: [] for t in threads})
        order = [(key, t) for t in threads for key in jobs]
        deadline = time.time() + 60 * args.max_minutes
        for round_index in range(args.rounds * 3):
            if round_index and time.time() > deadline:
                print(f"--max-minutes {args.max_minutes} reached", flush=True)
                break
            pending = [
                (key, t)
                for key, t in order
                if sum(not r["contaminated"] for r in rows[key[0]][key[1]][t]) < args.rounds
            ]
            if not pending:
                break
            shift = round_index % len(pending)
            for (name, engine), t in pending[shift:] + pending[:shift]:
                load = os.getloadavg()[0]
                try:
                    result, wall, outside = measured(lambda: jobs[(name, engine)](t))  # noqa: B023
                except Exception as err:  # recorded; the job is not retried
                    errors[f"{name} {engine} x{t}"] = str(err)[-300:]
                    rows[name][engine][t].append({"contaminated": False, "error": str(err)[-300:]})
                    continue
                contaminated = outside > (CORES - t + MAX_OUTSIDE_CPU) * wall
                row = {
                    **result,
                    "round": round_index,
                    "wall_s": round(wall, 2),
                    "outside_cpu_s": round(outside, 2),
                    "loadavg_1m": round(load, 2),
                    "contaminated": contaminated,
                }
                rows[name][engine][t].append(row)
                print(f"round {round_index} {name} {engine} x{t}: {row}", flush=True)

    summary: dict[str, dict] = {}
    for name, engines in rows.items():
        stat = stats[name]
        for engine, per in engines.items():
            for t, runs in per.items():
                cell: dict = {"runs": sum(not r["contaminated"] for r in runs), "all_runs": len(runs)}
                for key in ("prefill_tok_s", "decode_tok_s", f"decode_tok_s_d{args.prompt_len}"):
                    value, clean = median_of(runs, key)
                    if value is not None:
                        cell[key], cell[key + "_clean"] = value, clean
                if "prefill_tok_s" in cell:
                    cell["prefill_of_int8_peak"] = round(
                        cell["prefill_tok_s"] / prefill_roofline(peaks[t][0], stat["matmul_params"]), 3
                    )
                ceiling = decode_roofline(bandwidth[str(t)]["gb_s"], stat["bytes_per_token"])
                for key in ("decode_tok_s", f"decode_tok_s_d{args.prompt_len}"):
                    if key in cell:
                        cell[key.replace("tok_s", "of_roofline")] = round(cell[key] / ceiling, 3)
                summary.setdefault(name, {}).setdefault(engine, {})[str(t)] = cell
    ratios = []
    depth_key = f"decode_tok_s_d{args.prompt_len}"
    for name, engines in summary.items():
        if "llmc" not in engines or "llama.cpp" not in engines:
            continue
        for t in threads:
            ours, theirs = engines["llmc"][str(t)], engines["llama.cpp"][str(t)]

            def ratio(a: float | None, b: float | None) -> float | None:
                return round(a / b, 3) if a and b else None

            ratios.append(
                {
                    "model": name,
                    "threads": t,
                    "prefill": ratio(ours.get("prefill_tok_s"), theirs.get("prefill_tok_s")),
                    "decode_same_context": ratio(ours.get("decode_tok_s"), theirs.get(depth_key)),
                    "decode_vs_tg_empty": ratio(ours.get("decode_tok_s"), theirs.get("decode_tok_s")),
                }
            )

    meta = {
        "prompt_len": args.prompt_len,
        "gen_len": args.gen_len,
        "threads": threads,
        "rounds": args.rounds,
        "llama_bench_repeats_per_round": args.llama_repeats,
        "contaminated_runs": sum(
            r["contaminated"] for e in rows.values() for p in e.values() for v in p.values() for r in v
        ),
        "contamination_rule": f"other processes' CPU > cores left free + {MAX_OUTSIDE_CPU} of one core",
        "load_average_before_speed": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "llmc_commit": llmc_git(),
        "llmc_compile": f"llmc compile FILE --target llvm --quant keep --context-window {WINDOW} --prefill-chunk 512",
        "llama_cpp_build": recorded_flags(),
        "cpu_extensions_used_for_peak": sorted(extensions & {"avx2", "avxvnni", "avx512vnni", "avx512f", "amx-int8"}),
        "read_bandwidth_gb_s": bandwidth,
        "int8_peak": {str(t): {"gop_s": round(p / 1e9, 1), "assumption": why} for t, (p, why) in peaks.items()},
        "tvm_num_threads": os.environ["TVM_NUM_THREADS"],
    }
    table = [
        f"Tok/s, batch 1: prefill {args.prompt_len} tokens; decode {args.gen_len} tokens (llmc: after the prompt; "
        f"llama-bench tg{args.gen_len}: from an empty context, and `-d {args.prompt_len}`: after a "
        f"{args.prompt_len}-token context). Medians of clean runs (* = none clean: median of all). "
        "(roofline): fraction of the memory-bandwidth ceiling; (peak): fraction of the int8 peak.",
        "",
        "| model | engine | threads | prefill (peak) | decode (roofline) | decode after context (roofline) | runs |",
        "|---|---|---|---|---|---|---|",
    ]

    def fmt(cell: dict, key: str, frac: str) -> str:
        if key not in cell:
            return "-"
        star = "" if cell.get(key + "_clean") else "*"
        return f"{cell[key]}{star} ({cell.get(frac, '-')})"

    for name, engines in summary.items():
        for engine, per in engines.items():
            for t, cell in per.items():
                llmc_decode = engine == "llmc"
                table.append(
                    f"| {name} | {engine} | {t} | {fmt(cell, 'prefill_tok_s', 'prefill_of_int8_peak')} | "
                    f"{'-' if llmc_decode else fmt(cell, 'decode_tok_s', 'decode_of_roofline')} | "
                    f"{fmt(cell, 'decode_tok_s', 'decode_of_roofline') if llmc_decode else fmt(cell, depth_key, depth_key.replace('tok_s', 'of_roofline'))} | "  # noqa: E501
                    f"{cell['runs']}/{cell['all_runs']} |"
                )
    table += ["", "llmc / llama.cpp (same file, same run):", ""]
    table += ["| model | threads | prefill | decode, same context | decode vs tg from empty |", "|---|---|---|---|---|"]
    table += [
        f"| {r['model']} | {r['threads']} | {r['prefill']} | {r['decode_same_context']} | {r['decode_vs_tg_empty']} |"
        for r in ratios
    ]
    table += ["", "Weights read per decode token (GGUF tensor bytes, less the embedding table unless tied):", ""]
    table += ["| model | MB per token | tied output | matmul params (M) |", "|---|---|---|---|"]
    table += [
        f"| {n} | {s['bytes_per_token'] / 1e6:.1f} | {s['tied_output']} | {s['matmul_params'] / 1e6:.1f} |"
        for n, s in stats.items()
    ]
    if perplexities:
        table += [
            "",
            f"Perplexity on bench/{TEXT.name}, `llama-perplexity -c 512` vs llmc on the same token ids "
            "scored the same way (second half of each 512-token chunk):",
            "",
            "| model | tokens | llama.cpp | llmc | llmc / llama.cpp | llmc tokenizer = llama.cpp's |",
            "|---|---|---|---|---|---|",
        ]
        for name, p in perplexities.items():
            ours, theirs = p.get("llmc", {}).get("perplexity"), p.get("llama.cpp", {}).get("perplexity")
            rel = round(ours / theirs, 4) if ours and theirs else "-"
            same = p.get("llmc", {}).get("llmc_tokenizer_same_ids", "-")
            table.append(
                f"| {name} | {p.get('tokens', '-')} | {theirs or p.get('error', '-')} | {ours or '-'} | "
                f"{rel} | {same} |"
            )
    for name, reason in errors.items():
        table.append(f"\n- error: {name}: {reason}")
    write_report(
        "peers",
        "bench-peers",
        meta,
        {
            "summary": summary,
            "ratios": ratios,
            "weights": stats,
            "perplexity": perplexities,
            "errors": errors,
            "files": {n: str(p) for n, p in files.items()},
            "runs": rows,
        },
        table,
    )


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.exit(1)
