"""Phone and Apple GPU targets: android, android:adreno, iphone, metal (no NDK, Xcode or phone here).

The tiny model is built at q4f16_1 for each target; the archives are checked with llmc's own
ELF/Mach-O reader (format, architecture, the system-lib entry for the prefix), the OpenCL C kernels
with clang, and two models are linked into one relocatable object to show their symbols do not clash.
Metal source cannot be compiled without Xcode: it is only checked to be present and embedded.
Apple builds run in a subprocess, so a return of TVM 0.27's MetalMatmul segfault fails a test
instead of killing pytest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from support.checkpoints import TINY_CONTEXT_WINDOW, TINY_PREFILL_CHUNK

from llmc.compile import CompileOptions, compile_model
from llmc.compiler.targets import TARGETS, check_system_lib_prefix, default_system_lib_prefix
from llmc.errors import LlmcError
from llmc.package.objfile import library_symbol, read_static_library

ROOT = Path(__file__).resolve().parents[1]
QUANT = "q4f16_1"
SIZE_FLAGS = ["--context-window", str(TINY_CONTEXT_WINDOW), "--prefill-chunk", str(TINY_PREFILL_CHUNK)]
WEAK_HELPERS = {"__extendhfsf2", "__truncsfhf2"}  # fp16 conversions LLVM emits as weak definitions


def llmc_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``llmc ARGS`` in a fresh interpreter, so a crash inside TVM cannot take pytest down."""
    code = "import sys; from llmc.cli import main; sys.exit(main())"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


def config_of(folder: Path) -> dict:
    return json.loads((folder / "llmc-config.json").read_text())


def library_of(folder: Path) -> Path:
    return folder / config_of(folder)["library"]


@pytest.fixture(scope="module")
def mobile_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mobile")


@pytest.fixture(scope="module")
def android(checkpoints, mobile_root) -> Path:
    """The tiny model for android at q4f16_1 with the default prefix (in-process, through compile_model)."""
    options = CompileOptions(
        target="android",
        quant=QUANT,
        output=mobile_root / "llama_gqa",
        quiet=True,
        context_window=TINY_CONTEXT_WINDOW,
        prefill_chunk=TINY_PREFILL_CHUNK,
    )
    return compile_model(str(checkpoints["llama_gqa"]), options)


@pytest.fixture(scope="module")
def adreno(checkpoints, mobile_root) -> Path:
    """A second model (Qwen2) for android:adreno with its own prefix."""
    options = CompileOptions(
        target="android:adreno",
        quant=QUANT,
        output=mobile_root / "qwen2-adreno",
        quiet=True,
        context_window=TINY_CONTEXT_WINDOW,
        prefill_chunk=TINY_PREFILL_CHUNK,
        system_lib_prefix="qwen2_tiny_q4f16_1_",
    )
    return compile_model(str(checkpoints["qwen2_bias"]), options)


@pytest.fixture(scope="module")
def iphone(checkpoints, mobile_root) -> Path:
    """iphone with the 2-character prefix "m_" (TVM 0.27 rejects <= 7-character string attrs), via the CLI."""
    out = mobile_root / "iphone"
    done = llmc_cli(
        "compile", str(checkpoints["llama_gqa"]), "--target", "iphone", "-q", QUANT, "-o", str(out),
        "--system-lib-prefix", "m_", "--quiet", *SIZE_FLAGS,
    )  # fmt: skip
    assert done.returncode == 0, f"iphone build failed (rc {done.returncode}; -11 is a segfault): {done.stderr[-2000:]}"
    return out


@pytest.fixture(scope="module")
def metal(checkpoints, mobile_root) -> tuple[Path, str]:
    out = mobile_root / "metal"
    done = llmc_cli(
        "compile", str(checkpoints["llama_gqa"]), "--target", "metal", "-q", QUANT, "-o", str(out), "--quiet",
        *SIZE_FLAGS,
    )  # fmt: skip
    assert done.returncode == 0, f"metal build failed (rc {done.returncode}; -11 is a segfault): {done.stderr[-2000:]}"
    return out, done.stdout


def test_presets_are_listed():
    done = llmc_cli("targets")
    assert done.returncode == 0
    for name in ("android", "android:adreno", "iphone", "metal"):
        assert any(line.split()[0] == name for line in done.stdout.splitlines()), done.stdout
    assert TARGETS["android"].system_lib and TARGETS["iphone"].system_lib and not TARGETS["metal"].system_lib


def test_default_prefix_rule():
    assert default_system_lib_prefix("SmolLM2-135M-Instruct", "q4f16_1") == "smollm2_135m_instruct_q4f16_1_"
    for name, quant in [("a", "q0"), ("135m", "q4f16_1"), ("", ""), ("..", "x"), ("Qwen2.5-0.5B", "q4f32_1")]:
        prefix = default_system_lib_prefix(name, quant)
        assert len(prefix) >= 8 and prefix.endswith("_") and check_system_lib_prefix(prefix) == prefix, prefix
    assert default_system_lib_prefix("tiny", "q4f16_1") != default_system_lib_prefix("tiny", "q4f32_1")
    assert default_system_lib_prefix("smollm2-135m-q4f16_1", "q4f16_1") == "smollm2_135m_q4f16_1_"  # weights folder
    with pytest.raises(LlmcError, match="not a C identifier"):
        check_system_lib_prefix("my-model")


def in_process(*args: str):
    """``llmc ARGS`` through click's runner (for commands that cannot reach TVM's Metal codegen)."""
    from click.testing import CliRunner

    from llmc.cli import main

    return CliRunner().invoke(main, list(args))


def test_prefix_option_errors(checkpoints, tmp_path):
    options = CompileOptions(target="llvm", output=tmp_path / "x", system_lib_prefix="abc_")
    with pytest.raises(LlmcError, match="--system-lib-prefix applies to static-library targets"):
        compile_model(str(checkpoints["llama_gqa"]), options)
    done = in_process(
        "compile", str(checkpoints["llama_gqa"]), "-t", "android", "--system-lib-prefix", "9lives", "-o",
        str(tmp_path / "y"),
    )  # fmt: skip
    assert done.exit_code == 1 and "not a C identifier" in done.stderr and "Traceback" not in done.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def check_archive(folder: Path, prefix: str, fmt: str, arch: str) -> set[str]:
    """Defined symbols of the library, after the header and system-lib checks the acceptance names."""
    objects = read_static_library(library_of(folder))
    assert len(objects) >= 2, [o.name for o in objects]  # host code + the packed blob (VM + kernels)
    assert {(o.format, o.arch) for o in objects} == {(fmt, arch)}
    defined = set().union(*(o.defined for o in objects))
    blob = [o for o in objects if library_symbol(prefix) in o.defined]
    assert len(blob) == 1, f"no object defines {library_symbol(prefix)}"
    assert "TVMFFIEnvModRegisterSystemLibSymbol" in blob[0].undefined  # its constructor registers it
    functions = {s for s in defined if s.startswith("__tvm_ffi_")}
    assert functions and all(s.startswith(f"__tvm_ffi_{prefix}") for s in functions)
    assert f"__tvm_ffi_{prefix}rms_norm" in functions and f"{prefix}__tvm_ffi__library_ctx" in defined
    return defined


def test_android_archive_is_elf_aarch64_system_lib(android):
    config = config_of(android)
    assert config["target"] == "android" and config["device"] == "opencl" and config["library"].endswith(".tar")
    prefix = config["system_lib_prefix"]
    assert prefix == default_system_lib_prefix("llama_gqa", QUANT) == "llama_gqa_q4f16_1_"
    check_archive(android, prefix, "elf", "aarch64")


def opencl_syntax_check(source: Path) -> subprocess.CompletedProcess:
    clang = shutil.which("clang") or shutil.which("clang-14")
    if clang is None:
        pytest.skip("clang not installed (make install-mobile)")
    return subprocess.run(
        [clang, "-x", "cl", "-cl-std=CL2.0", "-fsyntax-only", str(source)], capture_output=True, text=True
    )


def test_android_opencl_kernels_pass_clang(android, tmp_path):
    source = library_of(android).with_suffix(".cl")
    text = source.read_text()
    blocks = text.split("// Function: ")[1:]  # one program per kernel, each declaring all of them
    assert len(blocks) >= 20 and all(f"__kernel void {b.split(chr(10))[0]}(" in b for b in blocks)
    assert "half" in text  # q4f16_1 kernels compute in fp16
    # the same kernels are what the archive embeds
    with tarfile.open(library_of(android)) as tar:
        blob = b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith("devc.o"))
    assert text.split("__kernel void ")[1].split("(")[0].encode() in blob
    done = opencl_syntax_check(source)
    assert done.returncode == 0, done.stderr[-3000:]
    broken = tmp_path / "broken.cl"  # the check can fail
    broken.write_text(text.replace("__kernel void ", "__kernel void int ", 1))
    assert opencl_syntax_check(broken).returncode != 0


def test_adreno_archive_and_kernels(adreno):
    assert config_of(adreno)["system_lib_prefix"] == "qwen2_tiny_q4f16_1_"
    check_archive(adreno, "qwen2_tiny_q4f16_1_", "elf", "aarch64")
    done = opencl_syntax_check(library_of(adreno).with_suffix(".cl"))
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_models_link_into_one_object(android, adreno, tmp_path):
    """Distinct prefixes: only LLVM's weak fp16 helpers are shared, and lld links both archives."""
    first = check_archive(android, config_of(android)["system_lib_prefix"], "elf", "aarch64")
    second = check_archive(adreno, "qwen2_tiny_q4f16_1_", "elf", "aarch64")
    assert first & second <= WEAK_HELPERS
    lld = shutil.which("ld.lld") or shutil.which("ld.lld-14")
    if lld is None:
        pytest.skip("ld.lld not installed (make install-mobile)")
    objects = []
    for index, folder in enumerate((android, adreno)):
        with tarfile.open(library_of(folder)) as tar:
            tar.extractall(tmp_path / str(index), filter="data")
        objects += sorted(str(p) for p in (tmp_path / str(index)).glob("*.o"))
    done = subprocess.run([lld, "-r", "-o", str(tmp_path / "app.o"), *objects], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr  # a clash would be "duplicate symbol"
    clash = subprocess.run([lld, "-r", "-o", str(tmp_path / "bad.o"), *objects, *objects[:1]], capture_output=True)
    assert clash.returncode != 0 and b"duplicate symbol" in clash.stderr  # the link does check


def test_iphone_archive_short_prefix_and_metal_source(iphone):
    config = config_of(iphone)
    assert config["system_lib_prefix"] == "m_" and config["device"] == "metal"
    check_archive(iphone, "m_", "macho", "arm64")
    # Metal source cannot be compiled without Xcode: check it is there, non-empty and embedded
    source = library_of(iphone).with_suffix(".metal").read_text()
    assert source.count("kernel void ") >= 20 and "#include <metal_stdlib>" in source
    with tarfile.open(library_of(iphone)) as tar:
        blob = tar.extractfile("m_devc.o").read()
    assert b"kernel void m_rms_norm" in blob and b"metal_stdlib" in blob


def test_metal_macos_tar_with_note_without_xcode(metal):
    folder, stdout = metal
    if shutil.which("xcrun"):
        pytest.skip("Xcode's tools are present: metal builds a .dylib")
    config = config_of(folder)
    assert config["library"] == "model-metal.tar" and config["system_lib_prefix"] is None
    assert "note: Xcode's tools (xcrun) are not on this machine" in stdout
    objects = read_static_library(library_of(folder))
    assert {(o.format, o.arch) for o in objects} == {("macho", "arm64")}
    assert library_symbol("") in set().union(*(o.defined for o in objects))  # a plain (non-prefixed) blob
    assert library_of(folder).with_suffix(".metal").read_text().count("kernel void ") >= 20


def test_run_refuses_phone_artifact(android):
    before = sorted(p.name for p in android.iterdir())
    done = in_process("run", str(android), "--prompt", "hi")
    assert done.exit_code == 1 and "Traceback" not in done.output
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(f"llmc: error: {android}: built for android") and "cannot run" in done.stderr
    assert sorted(p.name for p in android.iterdir()) == before  # TVM did not unpack the .tar here


def test_bench_refuses_phone_target(checkpoints):
    done = in_process("bench", str(checkpoints["llama_gqa"]), "--target", "iphone")
    assert done.exit_code == 1 and done.stderr.startswith("llmc: error: --target iphone builds for a phone or Mac")
