"""CPU benchmark: llmc against llama.cpp (llama-cpp-python) at the same bits, 1 and 2 threads, one run.

Systems, SmolLM2-135M-Instruct: llmc q4f16_1, q4f32_1, q8f16_1, q0f32 (``llmc compile smollm2-135m --target llvm
--quant Q``); llama.cpp on the shipped Q4_1 GGUF and on F32 / Q4_0 / Q8_0 files of the same weights (bench/models.py).
Memory-bound regime: Qwen2.5-Coder-1.5B-Instruct Q4_K_M with llama.cpp, and with llmc ``--quant keep`` (the same file's
bits: Q4_K and Q6_K on llmc's integer kernels).

Both engines are measured the same way (as llmc/runtime/bench.py does): wall time of the prefill of a random
prompt of --prompt-len tokens in one call sequence up to the greedy argmax of its last logits, then --gen-len
decode steps of one token each, each up to its greedy argmax. Every round runs every system at every thread count
(order rotated per round); a run during which other processes used more CPU than the cores left free
(+10% of one core) is contaminated: dropped and redone in a later round. Medians of the clean runs; the load
average is recorded per run. Writes bench/results/cpu-<date>.json and .md.

Rounds stop early after --max-minutes; a system left without a clean run reports the median of all its runs (*).

usage: python bench/cpu.py [--rounds 3 | --quick] [--threads 1,2] [--no-large] [--artifacts DIR] [--max-minutes 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
from models import qwen_coder_file, smollm2_files
from report import write_report

TICKS = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
MAX_OUTSIDE_CPU = 0.10  # of one core beyond the cores the run leaves free, averaged over the run
LLMC_QUANTS = ("q4f16_1", "q4f32_1", "q8f16_1", "q0f32")
# llmc quant -> the llama.cpp files of the same bits it is compared with
PAIRS = {"q4f32_1": ("Q4_0", "Q4_1"), "q4f16_1": ("Q4_0", "Q4_1"), "q8f16_1": ("Q8_0",), "q0f32": ("F32",)}
LARGE = "Qwen2.5-Coder-1.5B Q4_K_M"
# English prose for the perplexity sanity check of the GGUF files (quantized vs F32)
TEXT = (
    "The history of computing is a story of machines that became smaller, faster and cheaper with every decade. "
    "The first electronic computers filled whole rooms and used thousands of vacuum tubes, which failed often and "
    "consumed a great deal of power. The invention of the transistor made it possible to build machines that were "
    "more reliable, and the integrated circuit later placed many transistors on a single piece of silicon. Today a "
    "phone in a pocket has more memory and more processing power than the computers that guided the first "
    "missions to the moon. Software changed as well: programs that once had to be written in machine code are now "
    "written in high level languages, and compilers translate them into instructions for the processor."
)


def busy_seconds() -> tuple[float, float]:
    """(all processes' busy CPU seconds, this process's CPU seconds)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8]) - idle
    own = os.times()
    return total / TICKS, own.user + own.system + own.children_user + own.children_system


def measured(fn: Callable[[], dict]) -> tuple[dict, float, float]:
    """Run fn(); return (its result, wall seconds, CPU seconds other processes used meanwhile)."""
    busy0, own0 = busy_seconds()
    started = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - started
    busy1, own1 = busy_seconds()
    return result, wall, max((busy1 - busy0) - (own1 - own0), 0.0)


class LlamaCpp:
    """One GGUF in llama.cpp: prefill and greedy decode through the C API, logits only where needed."""

    def __init__(self, path: Path, window: int, n_batch: int = 512, flash_attn: bool = False):
        import llama_cpp
        from llama_cpp import Llama

        self.api = llama_cpp
        self.llm = Llama(
            model_path=str(path),
            n_ctx=window,
            n_batch=n_batch,
            n_ubatch=n_batch,
            n_threads=2,
            n_threads_batch=2,
            flash_attn=flash_attn,
            verbose=False,
        )
        self.ctx = self.llm._ctx.ctx
        self.n_batch = n_batch
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.llm._model.model))
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.n_past = 0

    def set_threads(self, threads: int) -> None:
        self.api.llama_set_n_threads(self.ctx, threads, threads)

    def reset(self) -> None:
        self.api.llama_memory_clear(self.api.llama_get_memory(self.ctx), True)
        self.n_past = 0

    def _forward(self, tokens: list[int], all_logits: bool = False) -> None:
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            batch = self.batch
            batch.n_tokens = len(chunk)
            for i, token in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = self.n_past + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = int(all_logits or start + i == len(tokens) - 1)
            rc = self.api.llama_decode(self.ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            self.n_past += len(chunk)

    def logits(self, index: int = -1) -> np.ndarray:
        return np.ctypeslib.as_array(self.api.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,))

    def prefill(self, tokens: list[int]) -> int:
        self._forward(tokens)
        return int(np.argmax(self.logits()))

    def decode(self, token: int) -> int:
        self._forward([token])
        return int(np.argmax(self.logits()))

    def bench(self, prompt: list[int], gen_len: int) -> dict:
        """One prefill of ``prompt`` and ``gen_len`` greedy decode steps, timed like llmc.runtime.bench."""
        self.reset()
        started = time.perf_counter()
        token = self.prefill(prompt)
        prefill = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(gen_len):
            token = self.decode(token)
        decode = time.perf_counter() - started
        return {"prefill_tok_s": len(prompt) / prefill, "decode_tok_s": gen_len / decode}

    def perplexity(self, tokens: list[int]) -> tuple[float, np.ndarray]:
        """Perplexity of ``tokens`` (one forward pass) and the argmax at every position."""
        self.reset()
        self._forward(tokens, all_logits=True)
        nll, top = [], []
        for i in range(len(tokens)):
            row = self.logits(i).astype(np.float64)
            top.append(int(np.argmax(row)))
            if i + 1 < len(tokens):
                log_z = np.log(np.exp(row - row.max()).sum()) + row.max()
                nll.append(log_z - row[tokens[i + 1]])
        self.reset()
        return float(np.exp(np.mean(nll))), np.array(top)


def tensor_types(path: Path) -> str:
    """The GGUF's tensor types and counts, e.g. 'Q4_0 x210, F32 x61, Q8_0 x1'."""
    from collections import Counter

    import gguf

    counts = Counter(t.tensor_type.name for t in gguf.GGUFReader(path).tensors)
    return ", ".join(f"{name} x{n}" for name, n in counts.most_common())


def set_tvm_threads(threads: int) -> None:
    """Use ``threads`` of TVM's CPU thread pool (at most the TVM_NUM_THREADS it was created with)."""
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(1, threads)  # 1: kBig (all cores here)


def compile_llmc(model: str, quant: str, out: Path, window: int, prompt_len: int) -> Path:
    """``llmc compile MODEL --target llvm --quant QUANT`` (context window and prefill chunk for the bench)."""
    if (out / "llmc-config.json").exists():
        return out
    started = time.time()
    # a child process: a compile error or crash is recorded, not fatal, and the bench process stays lean
    code = (
        "import sys; from pathlib import Path; from llmc.compile import CompileOptions, compile_model; "
        "compile_model(sys.argv[1], CompileOptions(target='llvm', quant=sys.argv[2], output=Path(sys.argv[3]), "
        "quiet=True, context_window=int(sys.argv[4]), prefill_chunk=int(sys.argv[5])))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, model, quant, str(out), str(window), str(prompt_len)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"exit status {proc.returncode}")
    print(f"compiled {model} {quant} in {time.time() - started:.1f} s", flush=True)
    return out


def llmc_git() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "llmc"], capture_output=True, text=True
        )
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def llama_cpp_info() -> dict:
    import llama_cpp

    return {
        "llama_cpp_python": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "cmake_args": os.environ.get("LLAMA_CPP_CMAKE_ARGS", "see the Makefile's install-bench"),
    }


def summarize(rows: list[dict]) -> dict:
    clean = [r for r in rows if not r["contaminated"]]
    use = clean or rows
    return {
        "prefill_tok_s": round(statistics.median(r["prefill_tok_s"] for r in use), 2),
        "decode_tok_s": round(statistics.median(r["decode_tok_s"] for r in use), 2),
        "runs": len(use),
        "clean": bool(clean),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="clean runs per system and thread count")
    parser.add_argument("--quick", action="store_true", help="1 round; decode-64 on the large model")
    parser.add_argument("--max-minutes", type=float, default=30.0, help="start no round after this long")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--gen-len", type=int, default=128)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--quants", default=",".join(LLMC_QUANTS), help="llmc quantizations")
    parser.add_argument("--no-large", action="store_true", help=f"skip {LARGE}")
    parser.add_argument(
        "--no-flash-attn",
        dest="flash_attn",
        action="store_false",
        help="llama.cpp without flash attention (on by default: llama.cpp's own default, ~20%% faster prefill here)",
    )
    parser.add_argument("--artifacts", type=Path, help="keep (and reuse) llmc artifacts here [default: a temp dir]")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 1
    threads = [int(t) for t in args.threads.split(",")]
    # TVM sizes its pool once, at most to TVM_NUM_THREADS, by default to half the cores (it assumes SMT pairs):
    # 1 thread on this 2-core machine. Sized to the most threads here; set_tvm_threads picks 1..max per run.
    os.environ["TVM_NUM_THREADS"] = str(max(threads))
    window = args.prompt_len + args.gen_len + 16
    rng = np.random.default_rng(0)

    info = llama_cpp_info()
    print(f"llama.cpp: {info['system_info']}", flush=True)
    files = smollm2_files()
    errors: dict[str, str] = {}
    systems: dict[str, Callable[[], dict]] = {}
    setters: dict[str, Callable[[int], None]] = {}
    vocab: dict[str, int] = {}
    quality: dict[str, dict] = {}
    tmp = tempfile.TemporaryDirectory(prefix="llmc-bench-cpu-")
    artifacts = args.artifacts or Path(tmp.name)

    def add_llmc(name: str, model: str, quant: str, key: str) -> None:
        try:
            artifact = compile_llmc(model, quant, artifacts / key, window, args.prompt_len)
            from llmc.runtime.bench import run_bench
            from llmc.runtime.engine import Engine

            engine = Engine(artifact, max_batch_size=1, kv_tokens=window)
        except Exception as err:  # recorded in the report: one missing quant must not stop the others
            errors[name] = f"not compiled ({str(err).strip().splitlines()[-1][:300]})"
            print(f"{name}: {errors[name]}", flush=True)
            return
        systems[name] = lambda: run_bench(engine, 1, args.prompt_len, args.gen_len, repeats=1)
        setters[name] = set_tvm_threads

    def add_llama(name: str, path: Path, prompt_vocab: int, gen_len: int) -> LlamaCpp:
        llm = LlamaCpp(path, window, flash_attn=args.flash_attn)
        prompt = rng.integers(100, min(prompt_vocab, llm.n_vocab) - 100, args.prompt_len).tolist()
        systems[name] = lambda: llm.bench(prompt, gen_len)
        setters[name] = llm.set_threads
        vocab[name] = llm.n_vocab
        return llm

    quants = [q for q in args.quants.split(",") if q]
    for quant in quants:
        add_llmc(f"llmc {quant}", "smollm2-135m", quant, f"smollm2-135m-{quant}")
    text_tokens: list[int] = []
    reference = None
    for kind in ("F32", "Q4_1", "Q4_0", "Q8_0"):
        name = f"llama.cpp {kind}"
        llm = add_llama(name, files[kind], 49152, args.gen_len)
        if not text_tokens:
            text_tokens = llm.llm.tokenize(TEXT.encode(), add_bos=True)
        ppl, top = llm.perplexity(text_tokens)
        if reference is None:
            reference = top
        quality[name] = {
            "file": files[kind].name,
            "tensor_types": tensor_types(files[kind]),
            "perplexity": round(ppl, 3),
            "top1_agree_f32": round(float(np.mean(top == reference)), 3),
        }
        print(f"{name}: {quality[name]}", flush=True)
    large_gen = 64 if args.quick else args.gen_len
    if not args.no_large:
        qwen = qwen_coder_file()
        name = f"llama.cpp {LARGE}"
        add_llama(name, qwen, 151000, large_gen)
        quality[name] = {"file": qwen.name, "tensor_types": tensor_types(qwen)}
        add_llmc(f"llmc {LARGE} (keep)", str(qwen), "keep", "qwen2.5-coder-1.5b-keep")  # the file's own bits

    # one warm-up run each (first-touch of weights, llama.cpp's repacking, TVM's first calls)
    for name, fn in systems.items():
        setters[name](max(threads))
        fn()
    rows: dict[str, dict[int, list[dict]]] = {name: {t: [] for t in threads} for name in systems}
    jobs = [(name, t) for t in threads for name in systems]
    dropped = 0
    deadline = time.time() + 60 * args.max_minutes
    for round_index in range(args.rounds * 3):
        if round_index >= 1 and time.time() > deadline:
            print(f"--max-minutes {args.max_minutes} reached: no more rounds", flush=True)
            break
        pending = [(n, t) for n, t in jobs if sum(not r["contaminated"] for r in rows[n][t]) < args.rounds]
        if not pending:
            break
        shift = round_index % len(pending)
        for name, t in pending[shift:] + pending[:shift]:
            setters[name](t)
            load = os.getloadavg()[0]
            result, wall, outside = measured(systems[name])
            contaminated = outside > (CORES - t + MAX_OUTSIDE_CPU) * wall
            dropped += contaminated
            row = {
                "round": round_index,
                "prefill_tok_s": round(result["prefill_tok_s"], 2),
                "decode_tok_s": round(result["decode_tok_s"], 2),
                "wall_s": round(wall, 2),
                "outside_cpu_s": round(outside, 2),
                "loadavg_1m": round(load, 2),
                "contaminated": contaminated,
            }
            rows[name][t].append(row)
            print(f"round {round_index} {name} x{t}: {row}", flush=True)
    tmp.cleanup()

    summary = {name: {str(t): summarize(rows[name][t]) for t in threads} for name in systems}
    ratios = []
    for quant, peers in PAIRS.items():
        ours = f"llmc {quant}"
        for peer in peers:
            theirs = f"llama.cpp {peer}"
            if ours not in summary or theirs not in summary:
                continue
            for t in threads:
                a, b = summary[ours][str(t)], summary[theirs][str(t)]
                ratios.append(
                    {
                        "llmc": quant,
                        "llama_cpp": peer,
                        "threads": t,
                        "prefill_ratio": round(a["prefill_tok_s"] / b["prefill_tok_s"], 3),
                        "decode_ratio": round(a["decode_tok_s"] / b["decode_tok_s"], 3),
                    }
                )
    large = (f"llmc {LARGE} (keep)", f"llama.cpp {LARGE}")
    if all(name in summary for name in large):
        for t in threads:
            a, b = (summary[name][str(t)] for name in large)
            ratios.append(
                {
                    "llmc": f"{LARGE} keep",
                    "llama_cpp": "Q4_K_M (same file)",
                    "threads": t,
                    "prefill_ratio": round(a["prefill_tok_s"] / b["prefill_tok_s"], 3),
                    "decode_ratio": round(a["decode_tok_s"] / b["decode_tok_s"], 3),
                }
            )
    meta = {
        "prompt_len": args.prompt_len,
        "gen_len": args.gen_len,
        "gen_len_large": large_gen,
        "threads": threads,
        "rounds": args.rounds,
        "contaminated_runs": dropped,
        "max_outside_cpu": f"cores left free + {MAX_OUTSIDE_CPU} of one core",
        "llmc_commit": llmc_git(),
        "llama_cpp": info,
        "flash_attn": args.flash_attn,
        "tvm_num_threads": os.environ["TVM_NUM_THREADS"],
    }
    cols = " | ".join(f"prefill x{t} | decode x{t}" for t in threads)
    table = [
        f"Tok/s, prefill-{args.prompt_len} and decode-{args.gen_len} ({LARGE}: decode-{large_gen}), "
        "medians of clean runs (runs: clean ones; * = none clean, median of all).",
        "",
        f"| system | {cols} | runs |",
        "|---|" + "---|" * (2 * len(threads) + 1),
    ]
    for name, per in summary.items():
        cells = " | ".join(
            f"{per[str(t)]['prefill_tok_s']}{'' if per[str(t)]['clean'] else '*'} | {per[str(t)]['decode_tok_s']}"
            for t in threads
        )
        table.append(f"| {name} | {cells} | {'/'.join(str(per[str(t)]['runs']) for t in threads)} |")
    for name, reason in errors.items():
        table.append(f"| {name} | {reason} |" + " |" * (2 * len(threads)))
    table += ["", "llmc / llama.cpp at the same bits:", "", "| llmc | llama.cpp | threads | prefill | decode |"]
    table.append("|---|---|---|---|---|")
    table += [
        f"| {r['llmc']} | {r['llama_cpp']} | {r['threads']} | {r['prefill_ratio']} | {r['decode_ratio']} |"
        for r in ratios
    ]
    table += ["", "llama.cpp files (perplexity of a fixed English paragraph; top-1 agreement with F32):", ""]
    table += ["| system | file | tensor types | perplexity | top-1 = F32 |", "|---|---|---|---|---|"]
    table += [
        f"| {n} | {q['file']} | {q['tensor_types']} | {q.get('perplexity', '')} | {q.get('top1_agree_f32', '')} |"
        for n, q in quality.items()
    ]
    write_report(
        "cpu",
        "bench",
        meta,
        {"summary": summary, "ratios": ratios, "errors": errors, "quality": quality, "runs": rows},
        table,
    )


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.exit(1)
