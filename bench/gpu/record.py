"""Record a gpu-check.json that came back from the GPU machine: bench/results/gpu-<date>.{json,md}.

python bench/gpu/record.py FILES_AT/gpu-check.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from report import write_report  # noqa: E402


def main() -> None:
    report = json.loads(Path(sys.argv[1]).read_text())
    manifest = json.loads((Path(".carry/gpu/manifest.json")).read_text()) if Path(".carry/gpu").exists() else {}
    table = ["| check | relative max diff | min cosine | argmax equal | ok |", "|---|---|---|---|---|"]
    for c in report["checks"]:
        table.append(
            f"| {c['name']} | {c['relative_diff']:.2e} | {c['min_cosine']:.6f} | "
            f"{sum(c['argmax_equal'])}/{len(c['argmax_equal'])} | {c['ok']} |"
        )
    table += [
        "",
        "| model | compile s | batch | prefill tok/s | decode tok/s | TTFT ms | % of bound |",
        "|---|---|---|---|---|---|---|",
    ]
    for b in report["bench"]:
        for run in b["runs"]:
            pct = b.get("batch1_decode_pct_of_bound", "") if run["batch"] == 1 else ""
            table.append(
                f"| {b['name']} | {b['compile_seconds']} | {run['batch']} | {run['prefill_tok_s']:.1f} "
                f"({run['prompt_len']} tok) | {run['decode_tok_s']:.1f} | {run['ttft_ms']:.1f} | {pct} |"
            )
    meta = {"device": report["device"], "gpu_target": report["gpu_target"], "dry_run": manifest.get("dry_run")}
    write_report("gpu", "gpu-carry + bash bench/gpu/run.sh on the device", meta, report, table)


if __name__ == "__main__":
    main()
