"""Run on the GPU machine by bench/gpu/run.sh: GPU-vs-CPU logits and Llama-3-8B q4f16_1 speed.

Needs only TVM's runtime, numpy and llmc's runtime modules. Writes gpu-check.json to --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np

from llmc.artifact import read_config
from llmc.memory import weights_bytes
from llmc.runtime.bench import run_bench
from llmc.runtime.engine import Engine

# peak HBM bandwidth by product name (vendor data sheets), bytes/s
PEAK_BANDWIDTH = {"H200": 4.8e12, "H100 NVL": 3.9e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "A100": 2.0e12}
PROMPT = [int(t) for t in np.random.default_rng(7).integers(1, 500, 24)]
DECODE_STEPS = 4


def gpu_name() -> str:
    done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else "unknown"


def logits_trace(engine: Engine) -> np.ndarray:
    """Prefill PROMPT, then DECODE_STEPS teacher-forced decodes: (1 + steps, vocab) float32 logits."""
    engine.reset()
    engine.add_sequence(0)
    rows = [engine.prefill(0, PROMPT)]
    for step in range(DECODE_STEPS):
        rows.append(engine.decode(0, PROMPT[step]))
    return np.stack(rows).astype(np.float32)


def compare(carry: Path, check: dict, gpu_device: str) -> dict:
    cpu = logits_trace(Engine(carry / check["cpu_dir"], "cpu", seed=0))
    gpu = logits_trace(Engine(carry / check["gpu_dir"], gpu_device, seed=0))
    scale = float(np.abs(cpu).max())
    cosine = [float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) for a, b in zip(cpu, gpu)]
    return {
        "name": check["name"],
        "max_abs_diff": float(np.abs(cpu - gpu).max()),
        "max_abs_logit": scale,
        "relative_diff": float(np.abs(cpu - gpu).max() / scale),
        "min_cosine": min(cosine),
        "argmax_equal": [bool(a.argmax() == b.argmax()) for a, b in zip(cpu, gpu)],
        "finite": bool(np.isfinite(gpu).all()),
        "ok": bool(np.isfinite(gpu).all() and np.abs(cpu - gpu).max() <= 2e-2 * scale and min(cosine) > 0.999),
    }


def bench(carry: Path, entry: dict, device: str, peak: float | None, quick: bool) -> dict:
    folder = carry / entry["dir"]
    config = read_config(folder)
    runs = []
    # (batch, prompt, generated): batch-1 prefill-512/decode-128, then decode throughput at 8 and 32
    shapes = [(1, 64, 32), (8, 32, 32), (32, 16, 16)] if quick else [(1, 512, 128), (8, 128, 128), (32, 128, 128)]
    for batch, prompt_len, gen_len in shapes:
        engine = Engine(folder, device, max_batch_size=batch, kv_tokens=batch * (prompt_len + gen_len + 64))
        runs.append(run_bench(engine, batch, prompt_len, gen_len, repeats=2 if quick else 3))
        del engine
    per_token = weights_bytes(config)
    result = {**entry, "weight_bytes": per_token, "runs": runs}
    if peak:
        bound = peak / per_token
        result["bandwidth_bound_tok_s"] = round(bound, 1)
        result["batch1_decode_pct_of_bound"] = round(100 * runs[0]["decode_tok_s"] / bound, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--carry", type=Path, default=Path(".carry/gpu"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    manifest = json.loads((args.carry / "manifest.json").read_text())
    dry = manifest["dry_run"]
    device = "cpu" if dry else "cuda"
    name = "cpu (dry run)" if dry else gpu_name()
    peak = None if dry else next((v for k, v in PEAK_BANDWIDTH.items() if k in name), None)
    report = {"device": name, "gpu_target": manifest["gpu_target"], "peak_bandwidth_bytes_s": peak, "checks": []}
    started = time.time()
    for check in manifest["checks"]:
        report["checks"].append(compare(args.carry, check, device))
        print(json.dumps(report["checks"][-1]), flush=True)
    report["bench"] = []
    for entry in manifest["bench"]:
        report["bench"].append(bench(args.carry, entry, device, peak, dry))
        print(json.dumps(report["bench"][-1]), flush=True)
    report["seconds"] = round(time.time() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'gpu-check.json'}; all checks ok: {all(c['ok'] for c in report['checks'])}")


if __name__ == "__main__":
    main()
