"""What every benchmark writes: bench/results/<kind>-<date>.json and .md, with the machine and the command."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    cpu = platform.processor()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores, {cpu}"


def write_report(kind: str, make_target: str, meta: dict, payload: dict, table: list[str]) -> Path:
    """Write ``payload`` (+ meta) as JSON and ``table`` (Markdown rows, header first) as Markdown; return the .md."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    meta = {
        "command": f"make {make_target}  ({' '.join(['python', Path(sys.argv[0]).as_posix(), *sys.argv[1:]])})",
        "machine": machine(),
        "date": stamp,
        **meta,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{kind}-{stamp}.json").write_text(json.dumps({"meta": meta, **payload}, indent=2))
    lines = [f"# {kind} benchmark {stamp}", "", *(f"- {k}: {v}" for k, v in meta.items()), "", *table]
    out = RESULTS / f"{kind}-{stamp}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out
