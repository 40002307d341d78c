"""CPU speed of a mixture-of-experts model: llmc against llama.cpp on the same GGUF file.

No MoE GGUF ships on PyPI, so this writes one with random weights (speed does not depend on the values):
Qwen3-30B-A3B's layer shapes (hidden 2048, 128 experts of 768, top-8, 32 query / 4 KV heads of 128),
``--layers`` of its 48 layers, a 32000-token vocabulary, every matrix in ``--format`` (Q4_0 by default;
norms and routers F32), as llama.cpp's ``qwen3moe`` architecture. Then bench/keep_cpu.py's harness: ``llmc
compile FILE`` (the default ``--quant keep``: the file's blocks on the integer path, experts through the
grouped kernel) and ``llmc bench``, and llama.cpp (llama-cpp-python, ``make install-bench``) on the same file,
prefill then decode, medians of ``--repeats`` runs. Writes bench/results/moe-<date>.json and .md.

usage: python bench/moe.py [--layers 2] [--format Q4_0] [--prompt-len 128] [--gen-len 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
from keep_cpu import run_llama_cpp, run_llmc
from report import write_report

ROOT = Path(__file__).resolve().parent.parent
SHAPE = dict(hidden=2048, experts=128, expert_ffn=768, top_k=8, heads=32, kv_heads=4, head_dim=128, vocab=32000)


def byte_tokens() -> list[str]:
    """GPT-2's byte-to-unicode alphabet (the 256 single-byte tokens of a byte-level BPE vocabulary)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def write_moe_gguf(path: Path, layers: int, fmt: str, seed: int = 0) -> None:
    import gguf

    s = SHAPE
    rng = np.random.default_rng(seed)
    kind = gguf.GGMLQuantizationType[fmt]
    writer = gguf.GGUFWriter(str(path), "qwen3moe")
    writer.add_block_count(layers)
    writer.add_context_length(4096)
    writer.add_embedding_length(s["hidden"])
    writer.add_feed_forward_length(6144)
    writer.add_expert_feed_forward_length(s["expert_ffn"])
    writer.add_expert_count(s["experts"])
    writer.add_expert_used_count(s["top_k"])
    writer.add_head_count(s["heads"])
    writer.add_head_count_kv(s["kv_heads"])
    writer.add_key_length(s["head_dim"])
    writer.add_value_length(s["head_dim"])
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(1e6)
    tokens = [*byte_tokens(), "Ġt", "Ġa"]  # the bytes and the two merges' results
    tokens += [f"<t{i}>" for i in range(s["vocab"] - len(tokens) - 1)] + ["<|endoftext|>"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (len(tokens) - 1) + [3])
    writer.add_token_merges(["Ġ t", "Ġ a"])
    writer.add_eos_token_id(len(tokens) - 1)

    def matrix(name: str, *shape: int, quantize: bool = True) -> None:
        array = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
        if quantize:
            writer.add_tensor(name, gguf.quants.quantize(array, kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, array)

    h, d = s["hidden"], s["head_dim"]
    matrix("token_embd.weight", s["vocab"], h)
    writer.add_tensor("output_norm.weight", np.ones(h, np.float32))
    matrix("output.weight", s["vocab"], h)
    for i in range(layers):
        for norm in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{i}.{norm}.weight", np.ones(h, np.float32))
        for norm in ("attn_q_norm", "attn_k_norm"):
            writer.add_tensor(f"blk.{i}.{norm}.weight", np.ones(d, np.float32))
        matrix(f"blk.{i}.attn_q.weight", s["heads"] * d, h)
        matrix(f"blk.{i}.attn_k.weight", s["kv_heads"] * d, h)
        matrix(f"blk.{i}.attn_v.weight", s["kv_heads"] * d, h)
        matrix(f"blk.{i}.attn_output.weight", h, s["heads"] * d)
        matrix(f"blk.{i}.ffn_gate_inp.weight", s["experts"], h, quantize=False)
        matrix(f"blk.{i}.ffn_gate_exps.weight", s["experts"], s["expert_ffn"], h)
        matrix(f"blk.{i}.ffn_up_exps.weight", s["experts"], s["expert_ffn"], h)
        matrix(f"blk.{i}.ffn_down_exps.weight", s["experts"], h, s["expert_ffn"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@contextlib.contextmanager
def llama_cpp_repack(enabled: bool):
    """llama.cpp with its CPU weight repacking (``use_extra_bufts``, on by default) switched on or off: both
    rows are measured and the ratio is taken against the faster one."""
    import llama_cpp
    import llama_cpp.llama as module

    default = llama_cpp.llama_model_default_params

    def params():
        values = default()
        values.use_extra_bufts = enabled
        return values

    module.llama_cpp.llama_model_default_params = params
    try:
        yield
    finally:
        module.llama_cpp.llama_model_default_params = default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--format", default="Q4_0", help="GGML type of every matrix (Q4_0, Q8_0, Q4_K, ...)")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, help="keep (and reuse) the GGUF file and the artifact here")
    parser.add_argument("--no-llama-cpp", dest="llama_cpp", action="store_false")
    args = parser.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
    tmp = tempfile.TemporaryDirectory(prefix="llmc-bench-moe-")
    work = args.work or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    gguf_file = work / f"qwen3moe-{args.layers}l-{args.format}.gguf"
    if not gguf_file.exists():
        print(f"writing {gguf_file} (random weights)", flush=True)
        write_moe_gguf(gguf_file, args.layers, args.format)
    threads = os.cpu_count() or 1
    rows = [{"system": "llmc (keep)", **run_llmc(ROOT, gguf_file, work / f"{gguf_file.stem}-llmc", threads, args)}]
    print(rows[-1], flush=True)
    if args.llama_cpp:
        for repack in (True, False):
            with llama_cpp_repack(repack):
                system = f"llama.cpp (flash attention, repack {'on' if repack else 'off'})"
                rows.append({"system": system, **run_llama_cpp(gguf_file, threads, args)})
            print(rows[-1], flush=True)
    tmp.cleanup()
    meta = {
        "model": f"random-weight qwen3moe GGUF: Qwen3-30B-A3B layer shapes, {args.layers} layers, {args.format}",
        "shape": SHAPE,
        "prompt_len": args.prompt_len,
        "gen_len": args.gen_len,
        "repeats": args.repeats,
        "tvm_num_threads": os.environ["TVM_NUM_THREADS"],
    }
    table = [
        f"Tok/s, prefill-{args.prompt_len} then decode-{args.gen_len}, medians of {args.repeats} runs; outside CPU s: "
        "CPU seconds other processes used during the measurement (the machine is shared).",
        "",
        "| system | prefill | decode | compile s | wall s | outside CPU s | load |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['system']} | {r['prefill_tok_s']} | {r['decode_tok_s']} | {r.get('compile_s', '')} | {r['wall_s']} "
            f"| {r['outside_cpu_s']} | {r['loadavg_1m']} |"
        )
    if len(rows) > 1:
        for phase in ("prefill", "decode"):
            best = max(r[f"{phase}_tok_s"] for r in rows[1:])
            table.append(f"\n{phase}: llmc / best llama.cpp row = **{rows[0][f'{phase}_tok_s'] / best:.2f}x**")
    write_report("moe", "bench-moe", meta, {"rows": rows}, table)


if __name__ == "__main__":
    main()
