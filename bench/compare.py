"""Before/after: llmc at a base revision against llmc at HEAD (the working tree), same models, same machine.

For a change meant to leave speed alone (a refactor), ``make bench-compare BASE=REV``: the base revision is checked
out into a temporary git worktree; each side compiles every model with its own code (``python -m llmc compile``)
and measures it with its own ``llmc bench --json`` (prefill of a --prompt-len prompt, --gen-len decode steps).
Rounds interleave the sides (order rotated per round) at each thread count; a run during which other processes used
more CPU than the cores left free (+10% of one core) is contaminated and redone in a later round. Medians of the
clean runs, and HEAD / base ratios. Writes bench/results/compare-<date>.json and .md.

usage: python bench/compare.py --base REV [--models smollm2-135m:keep,smollm2-135m:q4f16_1] [--rounds 3]
       [--artifacts DIR: keep the builds there and reuse them on the next run]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

from cpu import CORES, MAX_OUTSIDE_CPU, measured
from report import write_report

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = "smollm2-135m:keep,smollm2-135m:q4f16_1"


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def llmc(tree: Path, *args: str, threads: int | None = None) -> str:
    """``python -m llmc ARGS`` with ``tree``'s llmc first on the path; returns stdout."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    if threads:
        env["TVM_NUM_THREADS"] = str(threads)
    done = subprocess.run([sys.executable, "-m", "llmc", *args], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"llmc {' '.join(args)} failed in {tree}:\n{done.stderr[-2000:]}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the revision to compare HEAD's working tree against")
    parser.add_argument("--models", default=DEFAULT_MODELS, help="MODEL:QUANT pairs, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="clean runs per side, model and thread count")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--gen-len", type=int, default=64)
    parser.add_argument("--artifacts", type=Path, help="keep (and reuse) the builds here [default: a temp dir]")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    models = [tuple(item.rsplit(":", 1)) for item in args.models.split(",")]
    base_rev = git("rev-parse", "--short", args.base)
    head_rev = git("rev-parse", "--short", "HEAD") + ("-dirty" if git("status", "--porcelain", "llmc") else "")

    with tempfile.TemporaryDirectory(prefix="llmc-compare-") as tmp:
        work = Path(tmp)
        base_tree = work / "base"
        git("worktree", "add", "--detach", str(base_tree), base_rev)
        try:
            sides = {"base": base_tree, "head": ROOT}
            artifacts: dict[tuple[str, str, str], Path] = {}
            kept = args.artifacts or work
            for side, tree in sides.items():
                rev = base_rev if side == "base" else head_rev
                for model, quant in models:
                    out = kept / f"{rev}-{model.replace('/', '_')}-{quant}"
                    window = str(max(args.prompt_len + args.gen_len, 16))
                    if not (out / "llmc-config.json").is_file() or rev.endswith("-dirty"):
                        build = ("--quant", quant, "--context-window", window, "-o", str(out), "--force")
                        llmc(tree, "compile", model, *build)
                        print(f"compiled {model} {quant} with {side}", flush=True)
                    artifacts[side, model, quant] = out
            rows: dict[tuple, list[dict]] = {key + (t,): [] for key in artifacts for t in threads}
            dropped, round_no = 0, 0
            while round_no < 4 * args.rounds:
                pending = [k for k, runs in rows.items() if sum(not r["contaminated"] for r in runs) < args.rounds]
                if not pending:
                    break
                shift = round_no % len(pending)
                for key in pending[shift:] + pending[:shift]:
                    side, model, quant, t = key
                    bench = ("bench", str(artifacts[side, model, quant]), "--json", "--repeats", "1")
                    lengths = ("--prompt-len", str(args.prompt_len), "--gen-len", str(args.gen_len))
                    out, wall, outside = measured(partial(llmc, sides[side], *bench, *lengths, threads=t))
                    result = json.loads(out.strip().splitlines()[-1])
                    contaminated = outside > (CORES - t + MAX_OUTSIDE_CPU) * wall
                    dropped += contaminated
                    rows[key].append(
                        {
                            "prefill_tok_s": result["prefill_tok_s"],
                            "decode_tok_s": result["decode_tok_s"],
                            "contaminated": contaminated,
                            "load": os.getloadavg()[0],
                        }
                    )
                round_no += 1
        finally:
            git("worktree", "remove", "--force", str(base_tree))

    summary = {}
    for key, runs in rows.items():
        use = [r for r in runs if not r["contaminated"]] or runs
        summary[key] = {
            "prefill_tok_s": statistics.median(r["prefill_tok_s"] for r in use),
            "decode_tok_s": statistics.median(r["decode_tok_s"] for r in use),
            "runs": len(use),
            "clean": any(not r["contaminated"] for r in runs),
        }
    table = [
        "| model | quant | threads | prefill base | prefill head | ratio | decode base | decode head | ratio | clean |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    results = []
    for model, quant in models:
        for t in threads:
            base, head = summary["base", model, quant, t], summary["head", model, quant, t]
            prefill, decode = (head[k] / base[k] for k in ("prefill_tok_s", "decode_tok_s"))
            table.append(
                f"| {model} | {quant} | {t} | {base['prefill_tok_s']:.1f} | {head['prefill_tok_s']:.1f} | "
                f"{prefill:.3f} | {base['decode_tok_s']:.1f} | {head['decode_tok_s']:.1f} | {decode:.3f} | "
                + ("yes" if base["clean"] and head["clean"] else "no: every run shared the CPU")
                + " |"
            )
            results.append(
                {"model": model, "quant": quant, "threads": t, "base": base, "head": head}
                | {"prefill_ratio": round(prefill, 4), "decode_ratio": round(decode, 4)}
            )
    meta = {
        "base": base_rev,
        "head": head_rev,
        "prompt_len": args.prompt_len,
        "gen_len": args.gen_len,
        "rounds": args.rounds,
        "contaminated_runs": dropped,
    }
    raw = {"|".join(map(str, key)): runs for key, runs in rows.items()}
    write_report("compare", f"bench-compare BASE={args.base}", meta, {"results": results, "runs": raw}, table)


if __name__ == "__main__":
    main()
