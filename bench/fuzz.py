"""``make fuzz``: the reader fuzzer's command line (the harness is tests/support/fuzzing.py, which the tests
share). ``python bench/fuzz.py --count 10000`` writes bench/results/fuzz-<date>.md/.json."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# bench/ holds a profile.py that would shadow the standard library's (torch imports it): tests/ instead
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.fuzzing import FAILURES, GIB, TARGETS, make_seeds, markdown_table, run_fuzz, summarize  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Mutation fuzzing of llmc's readers (GGUF, safetensors, artifacts).")
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--memory-cap-gib",
        type=float,
        default=2.0,
        help="address space per input, above what the forked reader inherits",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="llmc-fuzz-", dir=base))
    started = time.time()
    seeds = make_seeds(workdir / "seeds")
    results = run_fuzz(
        args.count, args.seed, workdir, seeds, args.workers, int(args.memory_cap_gib * GIB), progress=True
    )
    seconds = time.time() - started
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from report import write_report

    failures = sum(r.outcome in FAILURES for r in results)
    meta = {
        "inputs": len(results),
        "seed": args.seed,
        "workers": args.workers,
        "memory cap (RLIMIT_AS)": f"{args.memory_cap_gib} GiB, RSS limit 1 GiB, CPU limit 10 s per input",
        "seconds": round(seconds, 1),
        "failures": failures,
    }
    notable = [r.__dict__ for r in results if r.outcome != "refused" and r.outcome != "accepted, same"]
    refusals = [r.__dict__ for r in results if r.outcome == "refused"][:200]
    payload = {"summary": summarize(results), "notable": notable, "refusal_examples": refusals}
    path = write_report("fuzz", "fuzz", meta, payload, markdown_table(results))
    print("\n".join(markdown_table(results)[: len(TARGETS) + 3]))
    print(f"wrote {path}")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
