"""Build everything the GPU check needs into .carry/ (run here, on the build machine: `make gpu-carry`).

The GPU machine has no package registry and takes at most 64 MiB per call, so llmc compiles here
and ships libraries without weights (drawn from a seed there), TVM's runtime only (no compiler)
and the cp312 wheels TVM's runtime needs. `bench/gpu/run.sh` is then the one command to run there.

  --dry-run   build the "GPU" side for llvm:generic too, so run.sh can be exercised on a CPU
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CARRY = ROOT / ".carry"
LLMC = [sys.executable, "-m", "llmc"]
CPU_TARGET = "llvm:generic"  # the GPU machine's host CPU is not this one
RUNTIME_WHEELS = ["apache-tvm-ffi==0.1.15.post2", "ml_dtypes", "tqdm"]
TVM_EXCLUDES = ("lib/libtvm_compiler.so", "3rdparty", "web", "src", "include", "__pycache__")

# (name, preset, GPU quant, CPU reference quant, extra compile flags). The CPU reference computes in
# float32 (TVM's CPU float16 is emulated and far too slow at 1B); seeded weights are the same values
# (float16 scales/norms are the float32 draws rounded) and the same packed codes.
CHECKS = [
    ("tiny-q0f16", "llama-tiny", "q0f16", "q0f32", []),
    ("tiny-q4f16_1", "llama-tiny", "q4f16_1", "q4f32_1", []),
    ("1b-q4f16_1", "llama3.2-1b", "q4f16_1", "q4f32_1", ["--context-window", "512", "--max-batch-size", "2"]),
]
BENCH = [
    ("8b-q4f16_1-O2", "llama3-8b", "q4f16_1", ["--max-batch-size", "32", "--opt", "O2"]),
    ("8b-q4f16_1-O3", "llama3-8b", "q4f16_1", ["--max-batch-size", "32", "--opt", "O3"]),
]
DRY_RUN_BENCH = [("tiny-bench", "llama-tiny", "q4f32_1", ["--max-batch-size", "32"])]


def compile_one(preset: str, quant: str, target: str, out: Path, flags: list[str]) -> float:
    """`llmc compile --random-weights`; returns the wall time in seconds (reused when nothing changed)."""
    command = [*LLMC, "compile", preset, "--random-weights", "--target", target, "--quant", quant, "-o", str(out)]
    if target.startswith("llvm"):  # the GPU's weight layout and exact float maths (no int8 activations)
        command += ["--cpu-kernels", "float"]
    record = {"command": " ".join(command + flags), "source": _source_version()}
    done = out / "compile.json"
    if (out / "llmc-config.json").exists() and done.exists():
        previous = json.loads(done.read_text())
        if {k: previous.get(k) for k in record} == record:
            return previous["seconds"]
    started = time.time()
    subprocess.run([*command, "--quiet", "--force", *flags], check=True)
    seconds = round(time.time() - started, 2)
    done.write_text(json.dumps({**record, "seconds": seconds}))
    return seconds


def _source_version() -> str:
    """The commit of this checkout (+ "-dirty"), so libraries built from other code are rebuilt."""
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "llmc", "configs"], capture_output=True)
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def pack_runtime() -> None:
    import tvm  # only to find it; TVM's compiler is not shipped

    site = Path(tvm.__file__).resolve().parents[1]
    skip = {f"tvm/{part}" for part in TVM_EXCLUDES}

    def keep(info: tarfile.TarInfo):
        return None if any(info.name == s or info.name.startswith(s + "/") for s in skip) else info

    with tarfile.open(CARRY / "tvm_rt.tgz", "w:gz") as tar:
        tar.add(site / "tvm", arcname="tvm", filter=lambda i: None if "__pycache__" in i.name else keep(i))
    wheels = CARRY / "whl"
    shutil.rmtree(wheels, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
         "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "-d", str(wheels),
         *RUNTIME_WHEELS],
        check=True,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu-target", default="cuda:sm_90a", help="target of the GPU libraries")
    parser.add_argument("--dry-run", action="store_true", help="GPU side built for llvm:generic (CPU rehearsal)")
    args = parser.parse_args()
    gpu_target = CPU_TARGET if args.dry_run else args.gpu_target
    out = CARRY / "gpu"
    old = out / "manifest.json"
    if old.exists() and json.loads(old.read_text())["gpu_target"] != gpu_target:
        shutil.rmtree(out)  # libraries of another target: rebuild all
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"gpu_target": gpu_target, "dry_run": args.dry_run, "checks": [], "bench": []}
    for name, preset, quant, cpu_quant, flags in CHECKS:
        entry = {"name": name, "preset": preset, "quant": quant, "cpu_quant": cpu_quant}
        # a dry run builds the "GPU" side for the CPU too, so it computes in float32 there as well
        gpu_quant = cpu_quant if args.dry_run else quant
        for side, target, side_quant in (("cpu", CPU_TARGET, cpu_quant), ("gpu", gpu_target, gpu_quant)):
            folder = out / f"{name}-{side}"
            entry[f"{side}_dir"] = folder.name
            entry[f"{side}_compile_seconds"] = compile_one(preset, side_quant, target, folder, flags)
        manifest["checks"].append(entry)
    for name, preset, quant, flags in DRY_RUN_BENCH if args.dry_run else BENCH:
        folder = out / name
        seconds = compile_one(preset, quant, gpu_target, folder, flags)
        manifest["bench"].append(
            {"name": name, "preset": preset, "quant": quant, "dir": name, "compile_seconds": seconds}
        )
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    pack_runtime()
    total = sum(f.stat().st_size for f in CARRY.rglob("*") if f.is_file())
    print(f"{CARRY}: {total / 2**20:.1f} MiB (limit 64 MiB per device call)")
    if total > 64 * 2**20:
        sys.exit(f"{CARRY} is over the 64 MiB a device call carries; drop checks from bench/gpu/prepare.py")
    print("next, on the GPU machine: bash bench/gpu/run.sh   (device tool: carry ['.carry'])")


if __name__ == "__main__":
    main()
