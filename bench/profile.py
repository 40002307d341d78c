"""Where a decode step and a prefill go: wall time per VM call (kernels and runtime builtins).

usage: python bench/profile.py ARTIFACT [ARTIFACT ...] [--threads N] [--steps 64] [--prompt-len 512]

Every call of the Relax VM is timed with ``vm.set_instrument`` (the instrument itself adds about
2-3 us per call, so the "instrumented" step is slower than the plain one; the split between kernels
is what this is for). Writes ``bench/results/profile-<time>.{json,md}`` with the machine and command.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def profile(folder: str, steps: int, prompt_len: int) -> dict:
    from llmc.runtime.engine import Engine

    engine = Engine(folder)
    engine.add_sequence(0)
    engine.prefill(0, list(range(10, 74)))
    for _ in range(4):  # warm up
        engine.decode(0, 7)
    started = time.perf_counter()
    for _ in range(steps):
        engine.decode(0, 7)
    plain_ms = (time.perf_counter() - started) / steps * 1e3
    out = {"artifact": folder, "decode_plain_ms": round(plain_ms, 3)}
    for phase in ("decode", "prefill"):
        times: dict[str, float] = collections.defaultdict(float)
        counts: collections.Counter = collections.Counter()
        opened: dict[str, float] = {}

        def instrument(func, name, before_run, ret_value, *args, times=times, counts=counts, opened=opened):
            if before_run:
                opened[name] = time.perf_counter()
            else:
                times[name] += time.perf_counter() - opened[name]
                counts[name] += 1
            return 0

        engine.vm.set_instrument(instrument)
        started = time.perf_counter()
        if phase == "decode":
            for _ in range(steps):
                engine.decode(0, 7)
            runs = steps
        else:
            engine.add_sequence(1)
            engine.prefill(1, [10 + i % 5000 for i in range(prompt_len)])
            engine.remove_sequence(1)
            runs = 1
        total = (time.perf_counter() - started) / runs
        engine.vm.set_instrument(None)
        calls = sorted(times.items(), key=lambda kv: -kv[1])
        out[phase] = {
            "instrumented_ms": round(total * 1e3, 3),
            "calls_per_run": sum(counts.values()) // runs,
            "top": [
                {"name": name, "ms": round(t / runs * 1e3, 3), "calls": counts[name] // runs} for name, t in calls[:15]
            ],
        }
    return out


def markdown(report: dict) -> str:
    lines = [f"# Profile ({report['time']})", "", f"`{report['command']}`", "", f"machine: {report['machine']}", ""]
    for item in report["artifacts"]:
        lines += [f"## {item['artifact']}", "", f"plain decode step: {item['decode_plain_ms']} ms", ""]
        for phase in ("decode", "prefill"):
            data = item[phase]
            lines += [
                f"### {phase}: {data['instrumented_ms']} ms instrumented, {data['calls_per_run']} VM calls",
                "",
                "| VM call | ms | calls |",
                "|---|---:|---:|",
            ]
            lines += [f"| {row['name']} | {row['ms']} | {row['calls']} |" for row in data["top"]]
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+")
    parser.add_argument("--threads", type=int, default=None, help="TVM_NUM_THREADS [default: TVM's]")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=512)
    args = parser.parse_args()
    if args.threads:
        os.environ["TVM_NUM_THREADS"] = str(args.threads)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = {
        "time": stamp,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS', 'default')}, load {os.getloadavg()[0]:.2f}",
        "artifacts": [profile(folder, args.steps, args.prompt_len) for folder in args.artifacts],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"profile-{stamp}.json").write_text(json.dumps(report, indent=1))
    (RESULTS / f"profile-{stamp}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
