"""The ``webgpu`` target's .wasm: TVM's web runtime as wasm objects, linked with the model by emcc.

The apache-tvm wheel ships the web runtime's sources (``tvm/web/emcc``, ``tvm/src/runtime``) and
apache-tvm-ffi ships its own, but a few headers they include are missing from both; llmc's
stand-ins live in ``web_headers/``. ``runtime_objects()`` copies the three trees into a cache
folder (per TVM version and header contents), overlays the stand-ins and compiles the three
runtime units once (~2-3 min on 2 cores); ``link_wasm`` is the ``fcompile`` that
``export_library`` calls to link them with the model's objects into one standalone .wasm.

Objects, not bitcode: TVM's LLVM 22 writes bitcode (opaque pointers) that Debian's emscripten 3.1.6
(LLVM 14) cannot read, while its wasm-ld links LLVM 22's wasm objects fine. The link runs at -O1:
both sides are already optimized code, and binaryen's -O2/-O3 pass over the ~7 MB module takes
1-3 minutes for a ~35% smaller file (set ``LLMC_WASM_LINK_OPT=-O3`` for shipping builds).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from llmc.errors import LlmcError

HEADERS = Path(__file__).parent / "web_headers"
RUNTIME_UNITS = ("wasm_runtime", "tvmjs_support", "webgpu_runtime")
INSTALL_HINT = "Run `make install-web` (installs Debian's emscripten and builds TVM's web runtime)."
# the flags TVM's web Makefile and tvm.support.emcc use: a standalone wasm whose imports the JS runtime provides
COMPILE_FLAGS = ["-O3", "-std=c++17", "-Wno-ignored-attributes"]
CACHE_LAYOUT = "objects-1"  # bump when what the cache holds changes
LINK_FLAGS = [
    "--no-entry",
    "-s",
    "WASM_BIGINT=1",
    "-s",
    "ERROR_ON_UNDEFINED_SYMBOLS=0",
    "-s",
    "STANDALONE_WASM=1",
    "-s",
    "ALLOW_MEMORY_GROWTH=1",
    "-s",
    "TOTAL_MEMORY=160MB",
]


def find_emcc() -> str:
    emcc = os.environ.get("EMCC") or shutil.which("emcc")
    if not emcc:
        raise LlmcError(f"--target webgpu needs emscripten's emcc, which is not on PATH. {INSTALL_HINT}")
    return emcc


def _sources() -> tuple[Path, Path]:
    import tvm
    import tvm_ffi

    tvm_root, ffi_root = Path(tvm.__file__).parent, Path(tvm_ffi.__file__).parent
    if not (tvm_root / "web" / "emcc" / "wasm_runtime.cc").exists() or not (ffi_root / "src" / "ffi").is_dir():
        raise LlmcError(
            f"{tvm_root}: this TVM install lacks the web runtime sources (web/emcc) or apache-tvm-ffi's src/; "
            "reinstall apache-tvm from PyPI."
        )
    return tvm_root, ffi_root


def cache_dir() -> Path:
    """Where the runtime objects are kept: ``$LLMC_WEB_CACHE`` or ``~/.cache/llmc/web``, per TVM + headers."""
    import tvm

    digest = hashlib.sha256(CACHE_LAYOUT.encode())
    for header in sorted(HEADERS.rglob("*.h")):
        digest.update(header.relative_to(HEADERS).as_posix().encode() + header.read_bytes())
    root = Path(os.environ.get("LLMC_WEB_CACHE") or Path.home() / ".cache" / "llmc" / "web")
    return root / f"tvm-{tvm.__version__}-{digest.hexdigest()[:10]}"


def _stage(tree: Path) -> list[str]:
    """Lay out the runtime sources as TVM's web Makefile expects them; return the include flags.

    Files are copied, not linked: the sources include ``../support/x.h`` relative to themselves.
    """
    tvm_root, ffi_root = _sources()
    shutil.copytree(tvm_root / "src" / "runtime", tree / "src" / "runtime")
    shutil.copytree(tvm_root / "web" / "emcc", tree / "web" / "emcc", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(tvm_root / "include", tree / "include")
    ffi = tree / "3rdparty" / "tvm-ffi"
    shutil.copytree(ffi_root / "src", ffi / "src")
    shutil.copytree(ffi_root / "include", ffi / "include")
    shutil.copytree(ffi_root / "3rdparty" / "dlpack", ffi / "3rdparty" / "dlpack")
    shutil.copytree(HEADERS, tree, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.md"))
    return [
        f"-I{tree}",
        f"-I{tree / 'include'}",
        f"-I{ffi / 'include'}",
        f"-I{ffi / '3rdparty' / 'dlpack' / 'include'}",
        f"-I{tree / '3rdparty' / 'compiler-rt'}",
    ]


def runtime_objects(quiet: bool = False) -> list[Path]:
    """The three runtime wasm objects, built into the cache on first use."""
    folder = cache_dir()
    files = [folder / f"{unit}.o" for unit in RUNTIME_UNITS]
    if all(f.exists() for f in files):
        return files
    emcc = find_emcc()
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        includes = _stage(work / "tree")
        for unit in RUNTIME_UNITS:
            if not quiet:
                print(f"llmc: building TVM's web runtime ({unit}.o, once per TVM version) ...", file=sys.stderr)
            source = work / "tree" / "web" / "emcc" / f"{unit}.cc"
            cmd = [emcc, *includes, *COMPILE_FLAGS, "-c", "-o", str(work / f"{unit}.o"), str(source)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise LlmcError(f"emcc failed to build {source.name} for the web runtime:\n{_tail(done)}")
        shutil.rmtree(work / "tree")
        if folder.exists() and not all(f.exists() for f in files):
            shutil.rmtree(folder)  # left incomplete by hand or by an older llmc
        try:
            work.rename(folder)
        except OSError:  # another process finished first
            if not all(f.exists() for f in files):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return files


def _tail(done: subprocess.CompletedProcess, lines: int = 30) -> str:
    text = (done.stdout or "") + (done.stderr or "")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def link_wasm(output: str, objects, options=None) -> None:
    """``fcompile`` for ``export_library``: the model's objects + the runtime's -> standalone ``output``."""
    objects = [objects] if isinstance(objects, str) else list(objects)
    cmd = [find_emcc(), os.environ.get("LLMC_WASM_LINK_OPT", "-O1"), *LINK_FLAGS, "-o", output]
    cmd += [str(f) for f in runtime_objects()] + objects + list(options or [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise LlmcError(f"emcc failed to link {output}:\n{_tail(done)}")


link_wasm.object_format = "o"  # wasm objects from TVM's LLVM


if __name__ == "__main__":  # `make install-web`: build the runtime objects now
    for path in runtime_objects():
        print(path)
