"""llama.cpp's own command-line tools (llama-bench, -server, -perplexity, -quantize, -tokenize), built once
from the llama.cpp vendored in the llama-cpp-python sdist, for this CPU's ISA (bench/llama_cmake_args.py).

The build lives outside the checkout, in ``~/.cache/llmc/llama.cpp-<version>-<hash of the flags>/``, with the
flags it was built with in ``flags.json``; a later call finds it there. ``python bench/llama_tools.py`` builds (or
finds) it and prints the binaries' paths.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llama_cmake_args import cmake_args  # noqa: E402

VERSION = "0.3.36"
CACHE = Path.home() / ".cache" / "llmc"
TOOLS = ("llama-bench", "llama-server", "llama-perplexity", "llama-quantize", "llama-tokenize")
COMMON = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DBUILD_SHARED_LIBS=OFF"]


def build_flags() -> list[str]:
    """Every CMake flag of the build: the fixed ones and this CPU's GGML ISA switches."""
    return COMMON + cmake_args()


def build_dir(flags: list[str] | None = None) -> Path:
    """The cache folder for this version and these flags."""
    flags = build_flags() if flags is None else flags
    digest = hashlib.sha256(" ".join(flags).encode()).hexdigest()[:10]
    return CACHE / f"llama.cpp-{VERSION}-{digest}"


def _sdist() -> Path:
    """The llama-cpp-python sdist (pip download, no wheels), kept in ~/.cache/llmc/src."""
    src = CACHE / "src"
    found = sorted(src.glob(f"llama_cpp_python-{VERSION}.tar.gz"))
    if found:
        return found[0]
    src.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps"]
    subprocess.run([*cmd, f"llama-cpp-python=={VERSION}", "-d", str(src)], check=True)
    return next(src.glob(f"llama_cpp_python-{VERSION}.tar.gz"))


def _source(root: Path) -> Path:
    """Unpack ``vendor/llama.cpp`` of the sdist under ``root``; return its folder."""
    out = root / "src"
    if (out / "CMakeLists.txt").exists():
        return out
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    tmp = root / "src.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(_sdist()) as archive:
        members = []
        for member in archive.getmembers():
            if member.name.startswith(prefix) and len(member.name) > len(prefix):
                member.name = member.name[len(prefix) :]
                members.append(member)
        archive.extractall(tmp, members=members, filter="data")
    tmp.rename(out)
    return out


def tools(build: bool = True, jobs: int = 2, need: tuple[str, ...] = TOOLS) -> dict[str, Path]:
    """{tool name: binary path} for the ``need`` tools; builds those missing first when ``build`` is set."""
    flags = build_flags()
    root = build_dir(flags)
    binaries = {name: root / "build" / "bin" / name for name in need}
    if all(path.exists() for path in binaries.values()):
        return binaries
    if not build:
        raise FileNotFoundError(f"llama.cpp tools not built in {root}: run python bench/llama_tools.py")
    root.mkdir(parents=True, exist_ok=True)
    src = _source(root)
    print(f"building llama.cpp {VERSION} tools in {root} ({' '.join(flags)})", flush=True)
    subprocess.run(["cmake", "-S", str(src), "-B", str(root / "build"), *flags], check=True)
    subprocess.run(
        ["cmake", "--build", str(root / "build"), "--config", "Release", f"-j{jobs}", "--target", *need],
        check=True,
    )
    (root / "flags.json").write_text(json.dumps({"version": VERSION, "cmake_flags": flags}, indent=2) + "\n")
    return binaries


def recorded_flags() -> dict:
    """What flags.json of the current build records (the results cite it)."""
    path = build_dir() / "flags.json"
    return json.loads(path.read_text()) if path.exists() else {"version": VERSION, "cmake_flags": build_flags()}


def main() -> None:
    jobs = int(os.environ.get("LLAMA_BUILD_JOBS", "2"))
    for name, path in tools(jobs=jobs).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
