"""x86 CPU libraries record the extensions they may use; a CPU without one of them refuses the artifact with
one clear error before the library is loaded (no SIGILL), and `llmc inspect` names the CPU it was built for."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmc import cpu_features
from llmc.cpu_features import EXTENSIONS, host_extensions, missing_extensions
from llmc.errors import ArtifactError

HOST = host_extensions()
pytestmark = pytest.mark.skipif(HOST is None, reason="not Linux on x86-64: no CPU extensions to read")


def fake_cpuinfo(tmp_path: Path, without: set[str]) -> Path:
    """A /proc/cpuinfo with this CPU's flags less the Linux flags of ``without`` (LLVM names)."""
    real = cpu_features.CPUINFO.read_text()
    dropped = {EXTENSIONS[name] for name in without}
    lines = []
    for line in real.splitlines():
        key, sep, value = line.partition(":")
        if key.strip() == "flags":
            line = key + sep + " " + " ".join(flag for flag in value.split() if flag not in dropped)
        lines.append(line)
    path = tmp_path / "cpuinfo"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_extensions_read_from_cpuinfo(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nflags\t\t: fpu sse2 pni ssse3 avx avx2 fma avx512f avx512_vnni sha_ni\n")
    assert host_extensions(path) == {"sse3", "ssse3", "avx", "avx2", "fma", "avx512f", "avx512vnni", "sha"}
    assert missing_extensions(["avx2", "avxvnni", "avx512vnni", "not-a-known-one"], host_extensions(path)) == [
        "avxvnni"
    ]
    assert host_extensions(tmp_path / "absent") is None


@pytest.fixture
def generic_artifact(compiled, tmp_path) -> Path:
    """A private copy of a tiny model built for llvm:generic (x86-64-v3), the build other tests share."""
    return Path(shutil.copytree(compiled("llama_gqa", "q4f16_1", "llvm:generic"), tmp_path / "artifact"))


def test_config_records_the_cpu(generic_artifact):
    cpu = json.loads((generic_artifact / "llmc-config.json").read_text())["runs_on"]["cpu"]
    assert cpu["mcpu"] == "x86-64-v3"
    assert {"avx2", "fma", "f16c", "bmi2"} <= set(cpu["extensions"]) and "avx512f" not in cpu["extensions"]


def test_host_without_an_extension_refuses_the_library(generic_artifact, tmp_path, monkeypatch):
    """A CPU faked without AVX2 and FMA: the engine refuses before loading the library."""
    from llmc.runtime.engine import Engine

    monkeypatch.setattr(cpu_features, "CPUINFO", fake_cpuinfo(tmp_path, {"avx2", "fma"}))
    loaded = []
    monkeypatch.setattr("tvm.runtime.load_module", lambda *args: loaded.append(args))
    with pytest.raises(ArtifactError) as err:
        Engine(generic_artifact)
    message = str(err.value)
    assert "x86-64-v3" in message and "avx2, fma" in message and "--target llvm" in message, message
    assert not loaded, "the library must not be loaded"
    monkeypatch.undo()
    Engine(generic_artifact)  # the real CPU runs it


def test_cli_refuses_an_artifact_for_another_cpu(generic_artifact):
    """An artifact whose recorded CPU has an extension this one lacks: one error line, non-zero exit."""
    absent = [name for name in EXTENSIONS if name not in HOST]
    if not absent:
        pytest.skip("this CPU has every extension llmc checks")
    file = generic_artifact / "llmc-config.json"
    config = json.loads(file.read_text())
    config["runs_on"]["cpu"]["extensions"].append(absent[-1])
    file.write_text(json.dumps(config))
    done = subprocess.run(
        [sys.executable, "-m", "llmc", "run", str(generic_artifact), "--prompt", "hi", "--max-tokens", "2"],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmc: error:") and absent[-1] in lines[0], done.stderr
    assert "Traceback" not in done.stderr

    shown = subprocess.run(
        [sys.executable, "-m", "llmc", "inspect", str(generic_artifact)], capture_output=True, text=True
    )
    cpu_line = next(line for line in shown.stdout.splitlines() if line.startswith("cpu:"))
    assert "x86-64-v3" in cpu_line and f"this CPU lacks {absent[-1]}" in cpu_line, cpu_line


def test_malformed_cpu_record_is_refused(generic_artifact):
    from llmc.artifact import read_config

    file = generic_artifact / "llmc-config.json"
    config = json.loads(file.read_text())
    config["runs_on"]["cpu"]["extensions"] = "avx2"
    file.write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="runs_on"):
        read_config(generic_artifact)
